"""Keras callbacks for training Mask R-CNN."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import keras

from mrcnn.evaluate import evaluate_dataset, format_metrics
from mrcnn.solver.optimizer import FIXED_SCALE_GROWTH_STEPS, is_nonfinite_guard  # noqa: F401


class CocoEvaluationCallback(keras.callbacks.Callback):
    """COCO box/mask AP on a validation dataset at the end of every N-th epoch.

    Calls ``evaluate_dataset(self.model.detect, dataset, ...)`` and adds the 12
    COCO metrics per IoU type to the epoch's logs as ``val_bbox_AP``,
    ``val_segm_AP50``, ... (``{prefix}{iou_type}_{metric}``), so that ``History``
    and callbacks listed AFTER this one (``ModelCheckpoint(monitor="val_segm_AP",
    mode="max")``, ``EarlyStopping``) see them. On epochs that are skipped the
    keys are absent.

    Args:
        dataset: a prepared Dataset with ground-truth masks.
        every_n_epochs: evaluate when ``(epoch + 1) % every_n_epochs == 0``.
        image_ids: internal image ids to evaluate (default: all; a subset keeps
            the epoch-end pause short).
        log_dir: if given, the metrics are also written as TensorBoard scalars
            (same names, step = epoch index) to this folder.
        batch_size: images per ``detect`` call; default ``model.config.BATCH_SIZE``
            when the model has a config, else 1.
        iou_types: any of "bbox", "segm", "keypoints"; None (default) picks what the
            model produces (see :func:`mrcnn.evaluate.evaluate_dataset`).
        prefix: prefix of the log keys.
        progress: show a progress bar while detecting.
        print_table: print :func:`format_metrics` after each evaluation.

    ``last_metrics`` holds the full result (per-class table included) of the
    latest evaluation. A dataset with its own COCO annotation file (e.g.
    :class:`mrcnn.data.coco.CocoDataset`) is scored against that file
    (``evaluate_dataset(..., ground_truth="auto")``).
    """

    def __init__(
        self,
        dataset: Any,
        every_n_epochs: int = 1,
        image_ids: Sequence[int] | None = None,
        log_dir: str | os.PathLike | None = None,
        batch_size: int | None = None,
        iou_types: Sequence[str] | None = None,
        prefix: str = "val_",
        progress: bool = False,
        print_table: bool = False,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1")
        self.dataset = dataset
        self.every_n_epochs = int(every_n_epochs)
        self.image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.batch_size = batch_size
        self.iou_types = None if iou_types is None else tuple(iou_types)
        self.prefix = prefix
        self.progress = progress
        self.print_table = print_table
        self.last_metrics: dict[str, Any] | None = None
        self._writer = None

    def _batch_size(self) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        config = getattr(self.model, "config", None)
        return int(getattr(config, "BATCH_SIZE", 1) or 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        detect = getattr(self.model, "detect", None)
        if not callable(detect):
            raise TypeError(
                f"CocoEvaluationCallback needs a model with a detect() method; got {type(self.model).__name__}"
            )
        metrics = evaluate_dataset(
            detect,
            self.dataset,
            image_ids=self.image_ids,
            batch_size=self._batch_size(),
            progress=self.progress,
            iou_types=self.iou_types,
        )
        self.last_metrics = metrics
        scalars = {
            f"{self.prefix}{iou_type}_{name}": value
            for iou_type, values in metrics.items()
            if iou_type != "per_class"
            for name, value in values.items()
        }
        if logs is not None:
            # Keras hands the same dict to every later callback and to History.
            logs.update(scalars)
        if self.print_table:
            print(f"\nEpoch {epoch + 1}: COCO evaluation\n{format_metrics(metrics)}")
        if self.log_dir is not None:
            self._write_scalars(scalars, epoch)

    def _write_scalars(self, scalars: dict[str, float], step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # tf.summary.scalar lives in the tensorboard package, which TensorFlow no
        # longer installs; the record it writes is this one (a float tensor tagged
        # for the "scalars" plugin), which TensorBoard reads the same way.
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writer.as_default():
            for name, value in scalars.items():
                if not math.isnan(value):  # undefined metrics (no GT of that size) are not plotted
                    tf.summary.write(
                        tag=name, tensor=tf.constant(value, tf.float32), step=step, metadata=metadata
                    )
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` cleanly once ``minutes`` of training have passed.

    The check runs after every batch, so the model stops within one step of the
    budget; ``fit`` then finishes normally (checkpoint callbacks still run at
    ``on_train_end``) and ``stopped_early`` tells whether the budget was hit.
    """

    def __init__(self, minutes: float, verbose: bool = True) -> None:
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.verbose = verbose
        self.stopped_early = False
        self._start: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Set once: a run resumed mid-epoch calls fit twice and the budget covers both.
        if self._start is None:
            self._start = time.monotonic()

    def elapsed_minutes(self) -> float:
        return 0.0 if self._start is None else (time.monotonic() - self._start) / 60.0

    def exclude(self, seconds: float) -> None:
        """Do not count ``seconds`` (e.g. a periodic evaluation) against the budget."""
        if self._start is not None:
            self._start += float(seconds)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._start is not None and time.monotonic() - self._start >= self.seconds:
            if not self.stopped_early and self.verbose:
                print(f"\n[mrcnn] time budget of {self.seconds / 60:.1f} min reached; stopping")
            self.stopped_early = True
            self.model.stop_training = True


# ----- reliability: step backups, non-finite guard, checkpoints, data health ----------

BACKUP_KEEP = 2  # the newest backup plus the previous good one
def _write_tb_scalars(writer_holder: dict, log_dir: str, scalars: dict[str, float], step: int) -> None:
    """Write float scalars for TensorBoard's "scalars" plugin (see CocoEvaluationCallback)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    if writer_holder.get("writer") is None:
        writer_holder["writer"] = tf.summary.create_file_writer(log_dir)
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    with writer_holder["writer"].as_default():
        for name, value in scalars.items():
            tf.summary.write(tag=name, tensor=tf.constant(float(value), tf.float32), step=step,
                             metadata=metadata)
    writer_holder["writer"].flush()


def list_backups(backup_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The backups in ``backup_dir``, newest first: their state dicts (see :class:`StepBackup`).

    A backup is ``step_NNNNNNNN.json`` (written last, the commit marker) plus the
    ``.weights.h5`` it names with the byte size it records; an entry whose JSON
    does not parse or whose weights file is missing or of another size is a torn
    write and is skipped with a warning.
    """
    import json
    import warnings

    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return []
    states = []
    for name in sorted(os.listdir(backup_dir), reverse=True):
        if not (name.startswith("step_") and name.endswith(".json")):
            continue
        path = os.path.join(backup_dir, name)
        try:
            with open(path) as f:
                state = json.load(f)
            weights = os.path.join(backup_dir, state["weights"])
            size = os.path.getsize(weights)
            if size != int(state["weights_bytes"]):
                raise ValueError(f"{weights} has {size} bytes, the backup recorded {state['weights_bytes']}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring torn backup {path}: {exc}", UserWarning, stacklevel=2)
            continue
        state["weights_path"] = weights
        state["state_path"] = path
        states.append(state)
    states.sort(key=lambda s: int(s["step"]), reverse=True)
    return states


def restore_backup(model: keras.Model, backup_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Load the newest loadable backup into a compiled ``model``; returns its state or None.

    The optimizer is built first so that its slots and ``iterations`` (the
    schedule position) are restored too. A backup that fails to load (a torn or
    corrupt h5) is skipped with a warning and the previous one is tried.
    """
    import warnings

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


class StepBackup(keras.callbacks.Callback):
    """Back up weights + optimizer state every ``every_steps`` steps, at each epoch end and at the end.

    Unlike ``keras.callbacks.BackupAndRestore`` it records the *global step* (so a
    resumed run continues mid-epoch and its input pipeline can skip the batches
    already consumed), writes atomically (:mod:`mrcnn.fileio`), keeps the
    previous good backup, never deletes the backup when ``fit`` ends (a stopped
    run is resumable; a completed one is marked ``"complete": True``), and does
    not save after :class:`NonFiniteGuard` halted training.

    Files: ``backup_dir/step_{step:08d}.weights.h5`` (model and optimizer
    variables) and ``step_{step:08d}.json`` with ``step``, ``epoch``,
    ``step_in_epoch``, ``steps_per_epoch``, ``planned_epochs``, ``complete``,
    plus ``extra_state`` (e.g. the data seed). Put it FIRST in the callback list,
    before evaluation callbacks, so the epoch's backup exists before they run.

    Args:
        backup_dir: folder of the backups.
        every_steps: save every N global steps (0 = only at epoch ends / the end).
        steps_per_epoch: the planned steps per epoch (to name epoch/step_in_epoch);
            0 = fit's ``steps_per_epoch``.
        planned_epochs: the run's planned number of epochs.
        initial_step: global step this ``fit`` starts at (a resumed run's step).
        extra_state: JSON-serialisable dict stored in every backup.
        guard: a :class:`NonFiniteGuard`; no backup is written once it halted.
        restore: at ``on_train_begin``, restore the newest backup (plain ``fit``).
        rng: a ``tf.random.Generator`` (the RoI/anchor sampling generator, see
            :func:`mrcnn.ops.sampling.set_sampling_generator`) whose state is
            saved as ``rng_state``.
        metric_sums: a mid-epoch backup's ``metric_sums`` (the running loss means'
            totals and counts since the epoch began), put back at the start of the
            first epoch this ``fit`` runs, so that the resumed epoch logs the mean
            over all its steps, as the uninterrupted run does.
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        every_steps: int,
        steps_per_epoch: int,
        planned_epochs: int,
        initial_step: int = 0,
        extra_state: dict[str, Any] | None = None,
        guard: NonFiniteGuard | None = None,
        restore: bool = False,
        rng: Any = None,
        metric_sums: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.restore = restore
        self.rng = rng
        self.metric_sums = metric_sums
        self.backup_dir = os.fspath(backup_dir)
        self.every_steps = int(every_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.planned_epochs = int(planned_epochs)
        self.step = int(initial_step)
        self.extra_state = dict(extra_state or {})
        self.guard = guard
        self.last_saved_step: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.steps_per_epoch <= 0:  # "the fit's": known once fit has started
            self.steps_per_epoch = int((self.params or {}).get("steps") or 0)
            if self.steps_per_epoch <= 0:
                raise ValueError("StepBackup needs steps_per_epoch (fit was called without it)")
        if not self.restore:
            return
        self.restore = False  # once: a second fit of the same run continues in memory
        state = restore_backup(self.model, self.backup_dir)
        if state is not None:
            # Plain fit can only start at an epoch boundary: a mid-epoch backup redoes that epoch.
            epoch = int(state["step"]) // self.steps_per_epoch
            self.model._initial_epoch = epoch
            self.step = epoch * self.steps_per_epoch
            if self.guard is not None:
                self.guard.step = self.step
            print(f"[mrcnn] restored {state['weights_path']}; fit continues at epoch {epoch + 1}", flush=True)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.metric_sums:  # fit has just reset the metrics: continue the interrupted epoch's sums
            _set_metric_sums(self.model, self.metric_sums)
        self.metric_sums = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.save()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.save()

    def save(self) -> str | None:
        """Write the backup for the current step (no-op if already saved or halted)."""
        from mrcnn.fileio import atomic_save_weights, write_json

        if self.last_saved_step == self.step or (self.guard is not None and self.guard.halted):
            return None
        os.makedirs(self.backup_dir, exist_ok=True)
        stem = f"step_{self.step:08d}"
        weights = os.path.join(self.backup_dir, f"{stem}.weights.h5")
        atomic_save_weights(self.model, weights)
        complete = self.step >= self.planned_epochs * self.steps_per_epoch
        state = {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "planned_epochs": self.planned_epochs,
            "complete": bool(complete),
            "weights": os.path.basename(weights),
            "weights_bytes": os.path.getsize(weights),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **self.extra_state,
        }
        if self.rng is not None:
            state["rng_state"] = [int(v) for v in self.rng.state.numpy().reshape(-1)]
        sums = _metric_sums(self.model)
        if sums:
            state["metric_sums"] = sums
        # The JSON is the commit marker: written after its weights file is in place.
        state_path = os.path.join(self.backup_dir, f"{stem}.json")
        write_json(state_path, state)
        self.last_saved_step = self.step
        self._prune()
        return state_path

    def _prune(self) -> None:
        states = [n for n in sorted(os.listdir(self.backup_dir)) if n.startswith("step_") and n.endswith(".json")]
        keep = set(states[-BACKUP_KEEP:])
        for name in states:
            if name in keep:
                continue
            stem = name[: -len(".json")]
            # The marker goes first: a kill in between leaves an orphan weights file, not a torn backup.
            for path in (os.path.join(self.backup_dir, name),
                         os.path.join(self.backup_dir, f"{stem}.weights.h5")):
                try:
                    os.remove(path)
                except OSError:
                    pass
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name.startswith("step_"):
                if f"{name[: -len('.weights.h5')]}.json" not in keep:
                    try:
                        os.remove(os.path.join(self.backup_dir, name))
                    except OSError:
                        pass


def _mean_metrics(model: keras.Model) -> list[keras.metrics.Metric]:
    """The model's running means (``total``/``count`` variables), unless under a multi-worker
    strategy: reading or writing them there would be a cross-worker collective that only
    this worker's callback runs."""
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return []
    return [m for m in model.metrics if hasattr(m, "total") and hasattr(m, "count")]


def _metric_sums(model: keras.Model) -> dict[str, list[float]]:
    """{metric name: [total, count]} of the running means (the loss trackers)."""
    return {m.name: [float(m.total.numpy()), float(m.count.numpy())] for m in _mean_metrics(model)}


def _set_metric_sums(model: keras.Model, sums: dict[str, list[float]]) -> None:
    for m in _mean_metrics(model):
        if m.name in sums:
            total, count = sums[m.name]
            m.total.assign(total)
            m.count.assign(count)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss went non-finite (NaN or Inf)."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stop (or skip) on a non-finite loss, within the step it happens.

    With the model compiled through :func:`mrcnn.engine.runner.guard_optimizer` (a
    ``keras.optimizers.LossScaleOptimizer`` at a fixed scale of 1, which is exact:
    the loss and gradients are multiplied and divided by 1.0), a step whose
    gradients are not all finite is **not applied** to the weights; the guard
    sees that the scale dropped below 1, restores it, removes the step from the
    running loss means, and either counts it as skipped (up to
    ``max_consecutive`` in a row) or halts training. Without that optimizer the
    guard still halts at the first non-finite logged loss, but the update has
    then been applied; :class:`StepBackup` and :class:`EpochCheckpoint` write
    nothing after a halt, so the files on disk hold the last finite weights.

    ``halted`` and ``message`` tell what happened (the message names the global
    step and the loss terms that were non-finite); ``skipped`` counts skipped
    steps.
    """

    def __init__(self, max_consecutive: int = 0, initial_step: int = 0, verbose: bool = True) -> None:
        super().__init__()
        self.max_consecutive = int(max_consecutive)
        self.step = int(initial_step)
        self.verbose = verbose
        self.halted = False
        self.message: str | None = None
        self.skipped = 0
        self.consecutive = 0
        self._snapshot: list[Any] | None = None

    def _tracker_variables(self) -> list[Any]:
        return [v for m in self.model.metrics for v in m.variables]

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._snapshot = [v.numpy() for v in self._tracker_variables()]

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._snapshot = None  # Keras resets the trackers at each epoch start

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        import numpy as np

        self.step += 1
        logs = logs or {}
        values = {}
        for k, v in logs.items():
            try:
                values[k] = float(np.asarray(v))
            except (TypeError, ValueError):
                continue
        bad_terms = [k for k, v in values.items() if not math.isfinite(v)]
        optimizer = getattr(self.model, "optimizer", None)
        scale = getattr(optimizer, "dynamic_scale", None)
        if scale is not None and not is_nonfinite_guard(optimizer):
            # A real loss scaler (float16): its overflow skips are its own business and
            # its scale is not ours to reset; only non-finite logged losses count here.
            scale = None
        skipped_update = scale is not None and float(np.asarray(scale)) < 1.0
        if skipped_update:
            scale.assign(1.0)
            # The running means took this step's non-finite values: undo that.
            if self._snapshot is not None:
                for var, value in zip(self._tracker_variables(), self._snapshot):
                    var.assign(value)
            else:
                for m in self.model.metrics:
                    m.reset_state()
        nonfinite = skipped_update or bool(bad_terms)
        if not nonfinite:
            self.consecutive = 0
            self._snapshot = [v.numpy() for v in self._tracker_variables()]
            return
        terms = ", ".join(t for t in bad_terms if t != "loss") or (
            "loss" if bad_terms else "gradients only (every loss term finite)")
        self.consecutive += 1
        if skipped_update and self.consecutive <= self.max_consecutive:
            self.skipped += 1
            if self.verbose:
                print(f"\n[mrcnn] step {self.step}: non-finite loss ({terms}); update skipped "
                      f"({self.consecutive} in a row, {self.skipped} in all)", flush=True)
            return
        applied = "the update was not applied" if skipped_update else "the update WAS applied in memory"
        self.message = (
            f"non-finite loss at global step {self.step} (step {batch + 1} of the epoch): {terms}; "
            f"{applied}; training stopped, the backups and checkpoints hold the last finite weights"
        )
        if self.consecutive > 1:
            self.message += f" ({self.consecutive} non-finite steps in a row)"
        self.halted = True
        self.model.stop_training = True
        if self.verbose:
            print(f"\n[mrcnn] {self.message}", flush=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Atomic ``epoch_{NNN}.weights.h5`` at the end of each *completed* epoch; keeps the last K.

    An epoch cut short (a time budget, a signal or a non-finite halt) writes no
    epoch file: the resumed run writes it when the epoch really ends, so epoch
    files always mean "the weights after that many full epochs".

    Args:
        folder: where the files go.
        keep: keep the newest ``keep`` epoch files (0 = keep all).
        monitor: a log key (e.g. "val_segm_AP"); when present in an epoch's logs
            the best epoch's file is kept too (and recorded in ``best.json``).
        mode: "max" or "min" for ``monitor``.
        guard: a :class:`NonFiniteGuard`; nothing is written once it halted.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        keep: int = 0,
        monitor: str | None = None,
        mode: str = "max",
        guard: NonFiniteGuard | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.folder = os.fspath(folder)
        self.keep = int(keep)
        self.monitor = monitor
        self.mode = mode
        self.guard = guard
        self._batches = 0

    @staticmethod
    def filename(epoch_number: int) -> str:
        return f"epoch_{epoch_number:03d}.weights.h5"

    def _best(self) -> dict[str, Any] | None:
        import json

        try:
            with open(os.path.join(self.folder, "best.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from mrcnn.fileio import atomic_save_weights, write_json

        planned = (self.params or {}).get("steps")
        if (self.guard is not None and self.guard.halted) or (planned and self._batches < planned):
            return
        path = os.path.join(self.folder, self.filename(epoch + 1))
        atomic_save_weights(self.model, path)
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if value is not None and math.isfinite(float(value)):
            best = self._best()
            better = best is None or (float(value) > best["value"] if self.mode == "max"
                                      else float(value) < best["value"])
            if better:
                write_json(os.path.join(self.folder, "best.json"),
                           {"epoch": epoch + 1, "file": os.path.basename(path), "monitor": self.monitor,
                            "value": float(value), "mode": self.mode})
        self._prune()

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        names = sorted(n for n in os.listdir(self.folder) if n.startswith("epoch_") and n.endswith(".weights.h5"))
        best = self._best()
        protected = set(names[-self.keep:]) | ({best["file"]} if best else set())
        for name in names:
            if name not in protected:
                try:
                    os.remove(os.path.join(self.folder, name))
                except OSError:
                    pass


class SignalStop(keras.callbacks.Callback):
    """Turn SIGTERM/SIGINT into "finish this step, back up, stop" (a checkpoint-then-exit).

    Handlers are installed at ``on_train_begin`` and the previous ones restored
    at ``on_train_end``. The first signal sets ``signum`` and
    ``model.stop_training``; :class:`StepBackup` then saves at ``on_train_end``. A
    second signal gets the previous handler (Ctrl-C twice still interrupts).
    """

    def __init__(self, signals: Sequence[int] | None = None, verbose: bool = True) -> None:
        super().__init__()
        import signal

        self.signals = tuple(signals) if signals is not None else (signal.SIGTERM, signal.SIGINT)
        self.verbose = verbose
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        import signal

        self.signum = signum
        if self.model is not None:
            self.model.stop_training = True
        if self.verbose:
            print(f"\n[mrcnn] {signal.Signals(signum).name}: stopping after this step and backing up",
                  flush=True)
        # The next one gets the old behaviour.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.signum is not None:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        import signal

        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class DataHealthLogger(keras.callbacks.Callback):
    """At each epoch end: the loader's counters as a log line and TensorBoard scalars.

    Reports ``mrcnn.data.loader.counters`` (bad samples skipped under
    ``ON_BAD_SAMPLE = "skip"``, empty masks dropped, instances truncated) and the
    ids of the skipped samples, when any counter is non-zero. The counters are
    per process (cumulative since the run started in this process).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, verbose: bool = True) -> None:
        super().__init__()
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.verbose = verbose
        self._writer: dict = {}
        self.lines: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from mrcnn.data import loader

        counts, ids = loader.counters_snapshot()
        if not any(counts.values()):
            return
        line = f"epoch {epoch + 1}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())
        if ids:
            line += f"; skipped image ids: {ids}"
        self.lines.append(line)
        if self.verbose:
            print(f"\n[mrcnn] {line}", flush=True)
        if logs is not None:
            logs.update({f"data_{k}": float(v) for k, v in counts.items()})
        if self.log_dir is not None:
            _write_tb_scalars(self._writer, self.log_dir, {f"data/{k}": v for k, v in counts.items()}, epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer.get("writer") is not None:
            self._writer["writer"].close()
            self._writer.clear()


class HistoryLog(keras.callbacks.Callback):
    """Append each epoch's logs as one JSON line to ``path`` (``logs/history.jsonl``).

    A resumed run appends to the same file, so the file is the run's whole
    history; a line is ``{"epoch": n, "step": global step, <log key>: value, ...}``
    (``epoch`` counts from 1). Epochs cut short are marked ``"partial": true``.
    """

    def __init__(self, path: str | os.PathLike, step_source: StepBackup | None = None) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.step_source = step_source
        self._batches = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        import json

        import numpy as np

        from mrcnn.fileio import append_line

        record: dict[str, Any] = {"epoch": epoch + 1}
        if self.step_source is not None:
            record["step"] = self.step_source.step
        planned = (self.params or {}).get("steps")
        if planned and self._batches < planned:
            record["partial"] = True
        for k, v in (logs or {}).items():
            try:
                record[k] = float(np.asarray(v))
            except (TypeError, ValueError):
                continue
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        append_line(self.path, json.dumps(record))
