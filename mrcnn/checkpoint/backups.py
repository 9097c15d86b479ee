"""The project's own weight files: step backups (the resume state) and epoch checkpoints.

The engine decides *when* to save (:class:`mrcnn.engine.callbacks.StepBackup`,
:class:`~mrcnn.engine.callbacks.EpochCheckpoint`); this module does the saving, the
listing, the restoring and the pruning. Every file is written atomically
(:mod:`mrcnn.fileio`).

Run folder layout::

    backup/step_NNNNNNNN.weights.h5   model + optimizer variables (slots, iterations)
    backup/step_NNNNNNNN.json         the state; written last, it commits the backup
    checkpoints/epoch_NNN.weights.h5  model variables only (a start for --init)
    checkpoints/best.json             the best epoch by CHECKPOINT_MONITOR
    final.weights.h5                  model variables only

Backups keep the optimizer because they are how a run resumes; checkpoints and final
weights do not (docs/weights.md): they are starts for another run, half the size.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

import keras

from mrcnn.fileio import atomic_save_weights, read_commits, write_json

BACKUP_KEEP = 2  # the newest backup plus the previous good one
BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"


# ----- step backups -------------------------------------------------------------------

def list_backups(backup_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The backups in ``backup_dir``, newest first: their state dicts (see :func:`write_backup`).

    A backup is ``step_NNNNNNNN.json`` (written last, the commit marker) plus the
    ``.weights.h5`` it names with the byte size it records; an entry whose JSON
    does not parse or whose weights file is missing or of another size is a torn
    write and is skipped with a warning (:func:`mrcnn.fileio.read_commits`).
    """
    states = read_commits(backup_dir, "step_")
    states.sort(key=lambda s: int(s["step"]), reverse=True)
    return states


def newest_backup(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The state of the newest intact backup of the run in ``run_dir`` (None: a fresh run).

    The hand-over between the input pipeline and the callbacks of a plain ``fit``:
    ``build_dataset(..., run_dir=out)`` starts its stream at this backup's step and
    :class:`~mrcnn.engine.callbacks.StepBackup` restores the weights of the same backup.
    """
    states = list_backups(os.path.join(os.fspath(run_dir), BACKUP_DIR))
    return states[0] if states else None


def restore_backup(model: keras.Model, backup_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Load the newest loadable backup into a compiled ``model``; returns its state or None.

    The optimizer is built first so that its slots and ``iterations`` (the
    schedule position) are restored too. A backup that fails to load (a torn or
    corrupt h5) is skipped with a warning and the previous one is tried.
    """
    for state in list_backups(backup_dir):
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        try:
            model.load_weights(state["weights_path"])
        except Exception as exc:  # h5py raises OSError/KeyError/ValueError for torn files
            warnings.warn(
                f"backup {state['weights_path']} does not load ({type(exc).__name__}: {exc}); "
                "falling back to the previous backup",
                UserWarning,
                stacklevel=2,
            )
            continue
        return state
    return None


def write_backup(model: keras.Model, backup_dir: str | os.PathLike, step: int, steps_per_epoch: int,
                 planned_epochs: int, extra_state: dict[str, Any] | None = None,
                 keep: int = BACKUP_KEEP) -> str:
    """Back up ``model`` (weights and optimizer) at global ``step``; returns the state file's path.

    Files: ``step_{step:08d}.weights.h5`` then ``step_{step:08d}.json`` with ``step``,
    ``epoch``, ``step_in_epoch``, ``steps_per_epoch``, ``planned_epochs``,
    ``complete``, ``weights``, ``weights_bytes``, ``time``, the running loss means'
    ``metric_sums`` and ``extra_state``. The JSON is the commit marker, written after
    its weights file is in place; then all but the newest ``keep`` backups are removed.
    """
    backup_dir = os.fspath(backup_dir)
    os.makedirs(backup_dir, exist_ok=True)
    stem = f"step_{int(step):08d}"
    weights = os.path.join(backup_dir, f"{stem}.weights.h5")
    atomic_save_weights(model, weights)
    state = {
        "step": int(step),
        "epoch": int(step) // steps_per_epoch,
        "step_in_epoch": int(step) % steps_per_epoch,
        "steps_per_epoch": int(steps_per_epoch),
        "planned_epochs": int(planned_epochs),
        "complete": int(step) >= planned_epochs * steps_per_epoch,
        "weights": os.path.basename(weights),
        "weights_bytes": os.path.getsize(weights),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra_state or {}),
    }
    sums = metric_sums(model)
    if sums:
        state["metric_sums"] = sums
    state_path = os.path.join(backup_dir, f"{stem}.json")
    write_json(state_path, state)
    prune_backups(backup_dir, keep)
    return state_path


def prune_backups(backup_dir: str | os.PathLike, keep: int = BACKUP_KEEP) -> None:
    """Remove all but the newest ``keep`` backups (and orphan weights files)."""
    backup_dir = os.fspath(backup_dir)
    states = [n for n in sorted(os.listdir(backup_dir)) if n.startswith("step_") and n.endswith(".json")]
    kept = set(states[-keep:])
    for name in states:
        if name in kept:
            continue
        # The marker goes first: a kill in between leaves an orphan weights file, not a torn backup.
        _remove(os.path.join(backup_dir, name))
        _remove(os.path.join(backup_dir, f"{name[: -len('.json')]}.weights.h5"))
    for name in os.listdir(backup_dir):
        if name.startswith("step_") and name.endswith(".weights.h5"):
            if f"{name[: -len('.weights.h5')]}.json" not in kept:
                _remove(os.path.join(backup_dir, name))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ----- the running loss means of a mid-epoch backup --------------------------------------

def _mean_metrics(model: keras.Model) -> list[keras.metrics.Metric]:
    """The model's running means (``total``/``count`` variables), unless under a multi-worker
    strategy: reading or writing them there would be a cross-worker collective that only
    this worker's callback runs."""
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return []
    return [m for m in model.metrics if hasattr(m, "total") and hasattr(m, "count")]


def metric_sums(model: keras.Model) -> dict[str, list[float]]:
    """{metric name: [total, count]} of the running means (the loss trackers)."""
    return {m.name: [float(m.total.numpy()), float(m.count.numpy())] for m in _mean_metrics(model)}


def set_metric_sums(model: keras.Model, sums: dict[str, list[float]]) -> None:
    """Put back :func:`metric_sums` (a resumed epoch then logs the mean over all its steps)."""
    for m in _mean_metrics(model):
        if m.name in sums:
            total, count = sums[m.name]
            m.total.assign(total)
            m.count.assign(count)


# ----- epoch checkpoints and final weights -----------------------------------------------

def checkpoint_filename(epoch_number: int) -> str:
    """``epoch_{NNN}.weights.h5`` (epochs count from 1)."""
    return f"epoch_{int(epoch_number):03d}.weights.h5"


def save_weights_file(model: keras.Model, path: str | os.PathLike) -> None:
    """The model's variables without optimizer state, atomically: a final weights file or
    an epoch checkpoint, loadable with ``load_weights`` and as ``--init coco:FILE``."""
    atomic_save_weights(model, path, include_optimizer=False)


def read_best(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``best.json`` of a checkpoint folder (None when absent or unreadable)."""
    try:
        with open(os.path.join(os.fspath(folder), "best.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_epoch_checkpoint(model: keras.Model, folder: str | os.PathLike, epoch_number: int,
                          keep: int = 0, monitor: str | None = None, value: float | None = None,
                          mode: str = "max") -> str:
    """Write ``folder/epoch_{NNN}.weights.h5``; track the best by ``monitor``; keep the newest ``keep``.

    ``value`` is the epoch's ``monitor`` value (None or non-finite: not a candidate for
    best); the best epoch's file is recorded in ``best.json`` and never pruned.
    """
    import math

    folder = os.fspath(folder)
    path = os.path.join(folder, checkpoint_filename(epoch_number))
    save_weights_file(model, path)
    if monitor and value is not None and math.isfinite(float(value)):
        best = read_best(folder)
        better = best is None or (float(value) > best["value"] if mode == "max" else float(value) < best["value"])
        if better:
            write_json(os.path.join(folder, "best.json"),
                       {"epoch": int(epoch_number), "file": os.path.basename(path), "monitor": monitor,
                        "value": float(value), "mode": mode})
    prune_checkpoints(folder, keep)
    return path


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Remove all but the newest ``keep`` epoch files and the best one (``keep`` 0: keep all)."""
    if keep <= 0:
        return
    folder = os.fspath(folder)
    names = sorted(n for n in os.listdir(folder) if n.startswith("epoch_") and n.endswith(".weights.h5"))
    best = read_best(folder)
    protected = set(names[-keep:]) | ({best["file"]} if best else set())
    for name in names:
        if name not in protected:
            _remove(os.path.join(folder, name))


__all__ = ["BACKUP_KEEP", "checkpoint_filename", "list_backups", "metric_sums", "newest_backup",
           "prune_backups", "prune_checkpoints", "read_best", "restore_backup", "save_epoch_checkpoint",
           "save_weights_file", "set_metric_sums", "write_backup"]
