"""matterport/Mask_RCNN's training conventions on this project's engine: run folders
``model_dir/<name><YYYYmmddTHHMM>/``, epoch checkpoints ``mask_rcnn_<name>_<epoch>.h5``,
``find_last``, ``layers=`` trainability and ``train(..., epochs=TOTAL)``.

:func:`train` is a call of :func:`mrcnn.engine.runner.run_training`, not a second loop:
the run lock, the step backups and step-exact resume, the non-finite guard and the epoch
checkpoints are the engine's. What this module adds:

- each ``train()`` call is one phase of the matterport run folder, trained in
  ``<run>/engine/<layers>-to-<epochs>/`` (its own backups: two phases train different
  variables, so one phase's optimizer state cannot resume the other). Running the same
  script again after a crash resumes the phase at its last backup, and a finished phase
  only reloads its final weights;
- :class:`MatterportCheckpoint` writes ``mask_rcnn_<name>_<epoch:04d>.h5`` in the run
  folder after every epoch (after the engine's backup), numbered from the first epoch of
  the whole run, as matterport numbers them;
- the learning rate is used as given (``LR_REFERENCE_BATCH = None``), with no warm-up and
  no decay inside a ``train()`` call, as matterport's constant-rate SGD.
"""

from __future__ import annotations

import copy
import datetime
import glob
import json
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import keras

from mrcnn.config import Config
from mrcnn.fileio import atomic_save_weights, fsync_dir, write_json

# matterport's layer presets, as regular expressions over this model's layer paths
# (C2..C5 are ResNet's layer1..layer4 here, "conv1" is the stem).
_HEADS = r"(fpn|rpn|roi_heads)(/.*)?"
LAYER_PRESETS: dict[str, str] = {
    "heads": _HEADS,
    "3+": r"(backbone/layer[234].*)|" + _HEADS,
    "4+": r"(backbone/layer[34].*)|" + _HEADS,
    "5+": r"(backbone/layer4.*)|" + _HEADS,
    "all": r".*",
}

_RUN_DIR = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})$")


def run_dir_name(config: Config, now: datetime.datetime | None = None) -> str:
    """``<name><YYYYmmddTHHMM>`` (matterport's run folder name)."""
    return f"{config.NAME.lower()}{(now or datetime.datetime.now()):%Y%m%dT%H%M}"


def checkpoint_name(config: Config, epoch: int) -> str:
    """``mask_rcnn_<name>_<epoch:04d>.h5`` (``epoch`` counts from 1)."""
    return f"mask_rcnn_{config.NAME.lower()}_{int(epoch):04d}.h5"


def epoch_of(path: str | os.PathLike, config: Config) -> tuple[str, int] | None:
    """(run folder, epoch) when ``path`` is a checkpoint in a matterport-named run folder, else None."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    m = re.fullmatch(rf"mask_rcnn_{re.escape(config.NAME.lower())}_(\d{{4}})\.h5", name)
    if m and _RUN_DIR.search(os.path.basename(folder)):
        return folder, int(m[1])
    return None


def find_last(model_dir: str | os.PathLike, config: Config) -> str:
    """The newest weights file under ``model_dir`` (by modification time).

    Looks at matterport run folders (``<name>*/mask_rcnn_<name>_*.h5``, what
    :func:`train` writes) and at this project's run folders (any sub-folder with
    ``final.weights.h5`` or ``checkpoints/epoch_*.weights.h5``, what ``mrcnn train --out``
    writes). Raises FileNotFoundError saying what was looked for.
    """
    model_dir = os.fspath(model_dir)
    key = config.NAME.lower()
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"Could not find model directory under {model_dir}")
    candidates = glob.glob(os.path.join(model_dir, f"{glob.escape(key)}*", f"mask_rcnn_{glob.escape(key)}_*.h5"))
    for sub in (model_dir, *glob.glob(os.path.join(model_dir, "*", ""))):
        candidates += glob.glob(os.path.join(sub, "final.weights.h5"))
        candidates += glob.glob(os.path.join(sub, "checkpoints", "epoch_*.weights.h5"))
    candidates = [c for c in candidates if os.path.isfile(c)]
    if not candidates:
        raise FileNotFoundError(
            f"Could not find weight files in {model_dir}: no {key}*/mask_rcnn_{key}_*.h5 (model.train) and no "
            "run folder with final.weights.h5 or checkpoints/epoch_*.weights.h5 (mrcnn train)")
    return os.path.abspath(max(candidates, key=lambda p: (os.path.getmtime(p), p)))


def set_trainable(model: keras.Model, layers: str, verbose: int = 0) -> list[str]:
    """Train only the layers ``layers`` selects: a preset of :data:`LAYER_PRESETS` or a
    regular expression matched (``re.fullmatch``) against each weighted layer's path
    (``"roi_heads/box_head/cls_score"``). Returns the paths of the trainable layers.
    Variables that are never trained (frozen batch norm statistics) stay so.
    """
    regex = re.compile(LAYER_PRESETS.get(layers, layers))
    model.trainable = True
    chosen = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not layer._layers and layer.weights:  # leaves that own weights
            train = regex.fullmatch(layer.path) is not None
            layer.trainable = train
            if train:
                chosen.append(layer.path)
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no layer of this model; use one of {sorted(LAYER_PRESETS)} or "
                         "a regular expression over layer paths such as 'roi_heads/.*'")
    if verbose:
        print(f"Training {len(chosen)} layers ({layers}): {', '.join(chosen[:6])}{' ...' if len(chosen) > 6 else ''}")
    return chosen


class MatterportCheckpoint(keras.callbacks.Callback):
    """Write ``mask_rcnn_<name>_<first_epoch + epoch + 1:04d>.h5`` into ``log_dir`` after each epoch.

    Atomic (a temporary ``.weights.h5`` renamed); the file is this project's weights layout.
    Nothing is written after a non-finite step (``guard``: the engine's NonFiniteGuard).
    """

    def __init__(self, log_dir: str, config: Config, first_epoch: int = 0, guard: Any = None) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.config = config
        self.first_epoch = int(first_epoch)
        self.guard = guard
        self.written: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.guard is not None and getattr(self.guard, "halted", False):
            return
        name = checkpoint_name(self.config, self.first_epoch + epoch + 1)
        path = os.path.join(self.log_dir, name)
        # A hidden temporary name: find_last's globs never see a half-renamed file.
        tmp = os.path.join(self.log_dir, f".{name}.weights.h5")
        atomic_save_weights(self.model, tmp)
        os.replace(tmp, path)
        fsync_dir(self.log_dir)
        self.written.append(path)


def learning_rate_note(config: Config, learning_rate: float) -> str | None:
    """A warning when ``train(learning_rate=config.LEARNING_RATE)`` meets a Config whose
    LEARNING_RATE is meant per LR_REFERENCE_BATCH images: matterport's rule (the rate as
    given) and this Config's rule (scaled to the batch) then differ."""
    ref = config.LR_REFERENCE_BATCH
    if ref is None or float(learning_rate) != float(config.LEARNING_RATE) or config.BATCH_SIZE == ref:
        return None
    return (f"mrcnn: model.train(learning_rate={learning_rate:g}) uses the rate as given (matterport's rule) at "
            f"{config.BATCH_SIZE} images per step, but this Config's LEARNING_RATE is meant for {ref} images "
            f"({config.effective_lr():g} at this batch). For matterport's meaning in both APIs set "
            "LR_REFERENCE_BATCH = None and LEARNING_RATE to the rate per step (matterport's default was "
            "0.001) in your Config (docs/matterport.md, 'Learning rate')")


def _phase_config(config: Config, learning_rate: float, total_steps: int, augmentation: Any) -> Config:
    """``config`` with matterport's optimiser rule: the rate as given, no warm-up, no decay."""
    out = copy.copy(config)
    out.LEARNING_RATE = float(learning_rate)
    out.LR_REFERENCE_BATCH = None
    out.LR_SCHEDULE = "step"
    out.WARMUP_STEPS = 0
    out.LR_STEPS = (int(total_steps) + 1,)  # after the end of this call: a constant rate
    if augmentation is not None:
        if type(augmentation).__module__.split(".")[0] == "imgaug":
            raise ValueError("augmentation: imgaug augmenters are not supported (imgaug does not run on NumPy 2); "
                             "pass a function fn(sample, seed) -> sample (Config.AUGMENT, docs/matterport.md)")
        if not callable(augmentation):
            raise ValueError("augmentation must be None or a function fn(sample, seed) -> sample")
        out.AUGMENT = augmentation
    out.validate()
    return out


def train(model: keras.Model, config: Config, log_dir: str, first_epoch: int, train_dataset: Any,
          val_dataset: Any, learning_rate: float, epochs: int, layers: str | None,
          augmentation: Any = None, custom_callbacks: Sequence[keras.callbacks.Callback] | None = None,
          verbose: int = 1) -> int:
    """Train ``model`` from epoch ``first_epoch`` to ``epochs`` (the total, as matterport) in ``log_dir``.

    Returns the epoch reached (``epochs``). See the module docstring for the folders.
    """
    from mrcnn.engine.runner import run_training

    if layers is None:
        raise ValueError("layers is required: 'heads', '3+', '4+', '5+', 'all' or a regular expression")
    slug = re.sub(r"[^A-Za-z0-9+]+", "_", layers).strip("_")[:40] or "custom"
    phase_dir = os.path.join(log_dir, "engine", f"{slug}-to-{int(epochs):04d}")
    state_path = os.path.join(phase_dir, "phase.json")
    if os.path.isfile(state_path):  # the same call again (a resumed script): same start
        with open(state_path, encoding="utf-8") as f:
            first_epoch = int(json.load(f)["first_epoch"])
    n_epochs = int(epochs) - int(first_epoch)
    if n_epochs <= 0:
        if verbose:
            print(f"Epoch {first_epoch} already reached (epochs={epochs}); nothing to train")
        return int(first_epoch)
    write_json(state_path, {"first_epoch": int(first_epoch), "epochs": int(epochs), "layers": layers})
    spe = int(config.STEPS_PER_EPOCH)
    note = learning_rate_note(config, learning_rate)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)
    run_config = _phase_config(config, learning_rate, n_epochs * spe, augmentation)
    if verbose:
        print(f"\nStarting at epoch {first_epoch}. LR={learning_rate}\n")
        print(f"Checkpoint Path: {os.path.join(log_dir, checkpoint_name(config, 0).replace('_0000', '_*epoch*'))}")
    set_trainable(model, layers, verbose=verbose)
    checkpoint = MatterportCheckpoint(log_dir, config, first_epoch)
    result = run_training(model, train_dataset, run_config, phase_dir, epochs=n_epochs, steps_per_epoch=spe,
                          val_dataset=val_dataset, val_steps=int(config.VALIDATION_STEPS) if val_dataset else 0,
                          callbacks=[checkpoint, *(custom_callbacks or [])], verbose=2 if verbose else 0)
    if result.status == "already_complete":
        if result.final_weights is None:
            raise FileNotFoundError(f"{phase_dir} records a completed phase but has no final.weights.h5")
        model.load_weights(result.final_weights)
    return int(first_epoch) + result.step // spe
