"""Keras callbacks for training Mask R-CNN: the run lock, step backups and the step-exact
resume, start checks, the non-finite guard, epoch checkpoints, stops (time budget,
signals, a stalled input), data health and history. Evaluation during ``fit`` and the TensorBoard writer
are :mod:`mrcnn.engine.evaluation` (importable from here too)."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import keras

# Saved and listed by mrcnn.checkpoint.backups; importable from here as before.
from mrcnn.checkpoint.backups import BACKUP_KEEP, list_backups, restore_backup
from mrcnn.engine.evaluation import CocoEvaluationCallback, SummaryWriter  # noqa: F401 (documented here)
from mrcnn.solver.optimizer import FIXED_SCALE_GROWTH_STEPS, is_nonfinite_guard  # noqa: F401 (documented here)


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

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_early:  # StepBackup's end of a resumed epoch clears stop_training
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._start is not None and time.monotonic() - self._start >= self.seconds:
            if not self.stopped_early and self.verbose:
                print(f"\n[mrcnn] time budget of {self.seconds / 60:.1f} min reached; stopping")
            self.stopped_early = True
            self.model.stop_training = True


# ----- reliability: run lock, step backups, non-finite guard, checkpoints, data health ----------
# The saving itself (file names, atomic writes, pruning, restoring) is mrcnn.checkpoint.backups;
# these callbacks decide when.

class HoldRunLock(keras.callbacks.Callback):
    """Hold ``folder/run.lock`` (:class:`mrcnn.engine.runlock.RunLock`) while ``fit`` runs.

    One run per output folder for a plain ``fit`` too: a second process fitting into
    the same folder gets :class:`~mrcnn.engine.runlock.RunLockedError` when its ``fit``
    starts, before any file of the run is read or written. A lock left by this very
    process (a ``fit`` that ended by an exception, so ``on_train_end`` never ran) or by
    a dead one is taken over.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__()
        self.folder = os.fspath(folder)
        self._lock: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        from mrcnn.engine.runlock import RunLock

        if self._lock is None:
            self._lock = RunLock(self.folder, take_over_own=True).acquire()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class FitStartCheck(keras.callbacks.Callback):
    """Warn when ``fit`` starts (after a backup was restored) on a plan that cannot learn:

    * the warm-up (``config.WARMUP_STEPS``) is longer than the steps this ``fit`` will
      run: the learning rate never reaches ``LEARNING_RATE``;
    * ``BACKBONE_NORM="frozen_bn"`` while every frozen batch norm still holds its
      initial statistics (mean 0, variance 1, scale 1, shift 0): no weights were
      loaded, and a frozen identity normalisation does not train a backbone from
      scratch (``mrcnn train`` refuses this start; a plain ``fit`` is warned, since
      weights may come from anywhere).

    ``warnings`` lists what was said. ``initial_step``: a resumed run's global step
    (its warm-up is counted from step 0).
    """

    def __init__(self, config: Any, steps_per_epoch: int = 0, epochs: int = 0, initial_step: int = 0,
                 step_source: StepBackup | None = None) -> None:
        super().__init__()
        self.config = config
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.initial_step = int(initial_step)
        self.step_source = step_source
        self.warnings: list[str] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        params = self.params or {}
        spe = self.steps_per_epoch or int(params.get("steps") or 0)
        planned = (self.epochs or int(params.get("epochs") or 0)) * spe
        warmup = int(getattr(self.config, "WARMUP_STEPS", 0) or 0)
        step = self.step_source.step if self.step_source is not None else self.initial_step
        if planned and warmup >= planned and step < planned:
            self._warn(f"the learning-rate warm-up (WARMUP_STEPS={warmup}) is longer than the planned run "
                       f"({planned} steps): the rate never reaches LEARNING_RATE="
                       f"{getattr(self.config, 'LEARNING_RATE', '?')}; set WARMUP_STEPS below {planned} "
                       f"(e.g. {max(1, planned // 10)}) or plan more steps")
        if getattr(self.config, "BACKBONE_NORM", None) == "frozen_bn" and _frozen_norms_untouched(self.model):
            self._warn("BACKBONE_NORM='frozen_bn' but no weights were loaded: every frozen batch norm is the "
                       "identity, and a backbone does not train from scratch that way. Load a pretrained "
                       "start (--init imagenet:FILE, mrcnn.checkpoint.pretrained.initialize) or train from "
                       "scratch with BACKBONE_NORM='gn' (docs/weights.md)")

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, UserWarning, stacklevel=2)


def _frozen_norms_untouched(model: keras.Model) -> bool:
    """True when the model has frozen batch norms and all of them hold their initial values."""
    import numpy as np

    from mrcnn.layers.norm import FrozenBatchNorm

    norms = [layer for layer in model._flatten_layers() if isinstance(layer, FrozenBatchNorm) and layer.built]
    if not norms:
        return False
    for layer in norms:
        for var, value in ((layer.gamma, 1.0), (layer.beta, 0.0), (layer.moving_mean, 0.0),
                           (layer.moving_variance, 1.0)):
            if not np.all(var.numpy() == value):
                return False
    return True


class StepBackup(keras.callbacks.Callback):
    """Back up weights + optimizer state every ``every_steps`` steps, at each epoch end and at the end;
    with ``restore=True``, resume a plain ``fit`` at the exact step of the newest backup.

    Unlike ``keras.callbacks.BackupAndRestore`` it records the *global step*, writes
    atomically, keeps the previous good backup, never deletes the backup when ``fit``
    ends (a stopped run is resumable; a completed one is marked ``"complete": True``),
    and does not save after :class:`NonFiniteGuard` halted training. Files and
    state: :func:`mrcnn.checkpoint.backups.write_backup`.

    **Step-exact resume.** ``fit`` starts at epoch ``step // steps_per_epoch``
    (``initial_step``, or the restored backup's step); when that is mid-epoch, the
    first epoch is ended at its planned boundary (``model.stop_training`` set at the
    boundary step and cleared again at that epoch's end, after the epoch's backup),
    so every later epoch covers the same global steps as in the uninterrupted run.
    Its running loss means go on from the backup's ``metric_sums``. The input must
    start at the same step: ``build_dataset(..., run_dir=out)`` reads the same
    backup (:func:`mrcnn.checkpoint.backups.newest_backup`). A stop that a callback
    *after* this one requests at exactly that boundary step is re-asserted by
    :class:`SignalStop` and :class:`TimeBudget` at the epoch end; other callbacks'
    stops at that one step are lost.

    Args:
        backup_dir: folder of the backups.
        every_steps: save every N global steps (0 = only at epoch ends / the end).
        steps_per_epoch: the planned steps per epoch; 0 = fit's ``steps_per_epoch``.
        planned_epochs: the run's planned number of epochs; 0 = fit's ``epochs``.
        initial_step: global step this ``fit`` starts at (a resumed run's step).
        extra_state: JSON-serialisable dict stored in every backup (e.g. the data seed).
        guard: a :class:`NonFiniteGuard`; no backup is written once it halted.
        restore: at ``on_train_begin``, restore the newest backup (plain ``fit``).
        rng: a ``tf.random.Generator`` whose state is saved as ``rng_state`` (and put
            back by ``restore``).
        metric_sums: a mid-epoch backup's ``metric_sums`` (when the caller restored it).
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        every_steps: int,
        steps_per_epoch: int = 0,
        planned_epochs: int = 0,
        initial_step: int = 0,
        extra_state: dict[str, Any] | None = None,
        guard: NonFiniteGuard | None = None,
        restore: bool = False,
        rng: Any = None,
        metric_sums: dict[str, list[float]] | None = None,
        verbose: bool = True,
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
        self.verbose = verbose
        self.last_saved_step: int | None = None
        self.finished = False  # the restored run had already done the plan
        self._cut_at: int | None = None
        self._cut = False
        self._set_initial_epoch = False

    def epoch_complete(self) -> bool:
        """True when the global step is on an epoch boundary (read at an epoch's end)."""
        return self.steps_per_epoch > 0 and self.step > 0 and self.step % self.steps_per_epoch == 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        params = self.params or {}
        if self.steps_per_epoch <= 0:  # "the fit's": known once fit has started
            self.steps_per_epoch = int(params.get("steps") or 0)
            if self.steps_per_epoch <= 0:
                raise ValueError("StepBackup needs steps_per_epoch (fit was called without it)")
        if self.planned_epochs <= 0:
            self.planned_epochs = int(params.get("epochs") or 1)
        if self.restore:
            self.restore = False  # once: a second fit of the same run continues in memory
            self._restore()
        spe = self.steps_per_epoch
        self._cut_at = (self.step // spe + 1) * spe if self.step % spe else None
        if self.step:
            # Keras' own resume hook (BackupAndRestore sets it too): fit starts at this epoch.
            self.model._initial_epoch = self.step // spe
            self._set_initial_epoch = True

    def _restore(self) -> None:
        from mrcnn.checkpoint.backups import list_backups, restore_backup

        listed = list_backups(self.backup_dir)
        state = restore_backup(self.model, self.backup_dir)
        if state is None:
            return
        self.step = int(state["step"])
        if listed and int(listed[0]["step"]) != self.step:
            warnings.warn(
                f"the newest backup (step {listed[0]['step']}) does not load; resumed from step {self.step}, "
                "but an input pipeline built with build_dataset(run_dir=...) starts at the newest one's "
                "position: delete the broken backup and start again for step-exact data", UserWarning,
                stacklevel=2)
        if self.step % self.steps_per_epoch:
            self.metric_sums = state.get("metric_sums")
        if self.rng is not None and "rng_state" in state:
            import tensorflow as tf

            self.rng.reset(tf.constant(state["rng_state"], tf.int64))
        if self.guard is not None:
            self.guard.step = self.step
        spe, total = self.steps_per_epoch, self.planned_epochs * self.steps_per_epoch
        if self.step >= total:
            self.finished = True
            print(f"[mrcnn] the run in {os.path.dirname(self.backup_dir)} is finished: {self.step // spe} "
                  f"epochs x {spe} steps done (global step {self.step}); fit has nothing to train. To "
                  f"continue it, call fit with more epochs (e.g. epochs={self.step // spe + 1}); to start "
                  f"again, move or delete {self.backup_dir} (mrcnn train: --restart) or use another "
                  "folder.", flush=True)
        elif self.verbose:
            print(f"[mrcnn] restored {state['weights_path']}; fit continues at global step {self.step} "
                  f"(epoch {self.step // spe + 1}, step {self.step % spe} of {spe})", flush=True)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.metric_sums:  # fit has just reset the metrics: continue the interrupted epoch's sums
            from mrcnn.checkpoint.backups import set_metric_sums

            set_metric_sums(self.model, self.metric_sums)
        self.metric_sums = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        if self.every_steps and self.step % self.every_steps == 0:
            self.save()
        if self.step == self._cut_at:
            # End the resumed epoch at its planned boundary (unless a stop is already asked for).
            self._cut = not self.model.stop_training
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.save()
        if self._cut:
            self._cut = False
            if not (self.guard is not None and self.guard.halted):
                self.model.stop_training = False

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.save()
        if self._set_initial_epoch:
            self.model._initial_epoch = None  # a later fit of this model starts where it is asked to
            self._set_initial_epoch = False

    def save(self) -> str | None:
        """Write the backup for the current step (no-op if already saved, halted or finished)."""
        from mrcnn.checkpoint.backups import write_backup

        if (self.finished or self.last_saved_step == self.step
                or (self.guard is not None and self.guard.halted)):
            return None
        extra = dict(self.extra_state)
        if self.rng is not None:
            extra["rng_state"] = [int(v) for v in self.rng.state.numpy().reshape(-1)]
        path = write_backup(self.model, self.backup_dir, self.step, self.steps_per_epoch,
                            self.planned_epochs, extra)
        self.last_saved_step = self.step
        return path


def _epoch_complete(callback: keras.callbacks.Callback, step_source: Any, batches: int) -> bool:
    """Did the epoch that ends now run to its planned end? By the global step when a
    :class:`StepBackup` is there (a resumed epoch runs fewer batches), else by batches."""
    if step_source is not None and getattr(step_source, "steps_per_epoch", 0):
        return batches > 0 and step_source.epoch_complete()
    planned = (callback.params or {}).get("steps")
    return not (planned and batches < planned)


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

    def __init__(self, max_consecutive: int = 0, initial_step: int = 0, verbose: bool = True,
                 restore_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.restore_dir = None if restore_dir is None else os.fspath(restore_dir)
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
        applied = "the update was not applied" if skipped_update else self._put_back_finite_weights()
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

    def _put_back_finite_weights(self) -> str:
        """The update was applied (no guard_optimizer): put the model in memory back to the
        newest backup, so that what the caller evaluates or saves next is not NaN."""
        import numpy as np

        from mrcnn.checkpoint.backups import restore_backup

        state = restore_backup(self.model, self.restore_dir) if self.restore_dir else None
        if state is not None:
            return (f"the model in memory is back at the last finite weights (the backup of global step "
                    f"{state['step']}, {state['weights_path']})")
        finite = all(np.isfinite(v.numpy()).all() for v in self.model.trainable_variables)
        return ("the update WAS applied in memory" + ("" if finite else
                " and the model in memory holds non-finite weights (no backup to go back to)"))


class EpochCheckpoint(keras.callbacks.Callback):
    """Atomic ``epoch_{NNN}.weights.h5`` at the end of each *completed* epoch; keeps the last K.

    An epoch cut short (a time budget, a signal or a non-finite halt) writes no
    epoch file: the resumed run writes it when the epoch really ends, so epoch
    files always mean "the weights after that many full epochs". The files hold the
    model's variables only (no optimizer state: the resume state is in the
    backups), so any of them is a start for another run (``--init coco:FILE``).
    Saving: :func:`mrcnn.checkpoint.backups.save_epoch_checkpoint`.

    Args:
        folder: where the files go.
        keep: keep the newest ``keep`` epoch files (0 = keep all).
        monitor: a log key (e.g. "val_segm_AP"); when present in an epoch's logs
            the best epoch's file is kept too (and recorded in ``best.json``).
        mode: "max" or "min" for ``monitor``.
        guard: a :class:`NonFiniteGuard`; nothing is written once it halted.
        step_source: the run's :class:`StepBackup` (whose global step says whether an
            epoch is complete; without it, fit's own batch count does).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        keep: int = 0,
        monitor: str | None = None,
        mode: str = "max",
        guard: NonFiniteGuard | None = None,
        step_source: StepBackup | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.folder = os.fspath(folder)
        self.keep = int(keep)
        self.monitor = monitor
        self.mode = mode
        self.guard = guard
        self.step_source = step_source
        self._batches = 0

    @staticmethod
    def filename(epoch_number: int) -> str:
        from mrcnn.checkpoint.backups import checkpoint_filename

        return checkpoint_filename(epoch_number)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from mrcnn.checkpoint.backups import save_epoch_checkpoint

        if (self.guard is not None and self.guard.halted) or not _epoch_complete(self, self.step_source,
                                                                                   self._batches):
            return
        value = (logs or {}).get(self.monitor) if self.monitor else None
        save_epoch_checkpoint(self.model, self.folder, epoch + 1, keep=self.keep, monitor=self.monitor,
                              value=None if value is None else float(value), mode=self.mode)


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

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.signum is not None:  # StepBackup's end of a resumed epoch clears stop_training
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.release()

    def release(self) -> None:
        """Put the previous handlers back (idempotent). Keras calls ``on_train_end`` only when
        ``fit`` returns; after a ``fit`` that raised, :func:`release_process_state` calls this,
        or Ctrl-C in this process would go on reaching a finished run's handler."""
        import signal

        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


INPUT_STALL_EXIT_STATUS = 5


class InputStallGuard(keras.callbacks.Callback):
    """End the process when a training step waits more than ``timeout`` seconds.

    A step that never ends is almost always its input: a tf.data service worker that
    died (TensorFlow's client then waits on its task for ever, docs/distributed.md), a
    hung network file system. The main thread is blocked inside TensorFlow where no
    Python exception reaches it, so a watcher thread prints one line to stderr and
    ends the process with :data:`INPUT_STALL_EXIT_STATUS` (5), which a scheduler can
    restart on; the run resumes from its newest backup, losing the steps since that
    backup as a kill does. The clock runs from each ``on_train_batch_begin`` to its
    ``on_train_batch_end`` (input wait plus the step itself), so validation, evaluation
    and the backups between steps are not timed; the first step of each ``fit``
    (tracing, minutes on a CPU) is not timed either. ``exit`` is for tests.
    """

    def __init__(self, timeout: float, backup_dir: str | os.PathLike | None = None,
                 exit: Any = os._exit) -> None:
        super().__init__()
        if not timeout > 0:
            raise ValueError(f"InputStallGuard timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.backup_dir = os.fspath(backup_dir) if backup_dir is not None else None
        self._exit = exit
        self._step_began: float | None = None
        self._steps = 0
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._steps, self._step_began = 0, None
        self._done.clear()
        self._watcher = threading.Thread(target=self._watch, name="mrcnn-input-stall-guard", daemon=True)
        self._watcher.start()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._steps:
            self._step_began = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step_began = None
        self._steps += 1

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.release()

    def release(self) -> None:
        """Stop the watcher (idempotent). After a ``fit`` that raised mid-step, Keras does not
        call ``on_train_end``; without this the watcher would end the process later."""
        self._step_began = None
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout / 4)):
            began = self._step_began
            if began is not None and time.monotonic() - began > self.timeout:
                where = f"; the same command resumes from {self.backup_dir}" if self.backup_dir else ""
                print(f"mrcnn train: error: a training step has waited more than {self.timeout:g} s for its "
                      f"input (a dead tf.data service worker or a hung file system?); exiting with status "
                      f"{INPUT_STALL_EXIT_STATUS}{where}", file=sys.stderr, flush=True)
                self._exit(INPUT_STALL_EXIT_STATUS)
                return


def release_process_state(callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """Give back what callbacks hold in the process (signal handlers, watcher threads) after a
    ``fit`` that raised, which Keras ends without ``on_train_end``."""
    for callback in callbacks:
        if isinstance(callback, (SignalStop, InputStallGuard)):
            callback.release()


class DataHealthLogger(keras.callbacks.Callback):
    """At each epoch end: the input pipeline's :class:`~mrcnn.data.health.DataHealth` as a
    log line and TensorBoard scalars.

    Reports bad samples skipped under ``ON_BAD_SAMPLE = "skip"``, empty masks
    dropped and instances truncated, and the ids of the skipped samples, when any
    counter is non-zero; cumulative since the pipeline was built. ``health`` default:
    the one of the dataset being fitted (``model.data_health``, set by ``MaskRCNN.fit``).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, verbose: bool = True,
                 health: Any = None) -> None:
        super().__init__()
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.verbose = verbose
        self.health = health
        self._writer = None if log_dir is None else SummaryWriter(log_dir)
        self.lines: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        health = self.health if self.health is not None else getattr(self.model, "data_health", None)
        if health is None:
            return
        counts, ids = health.snapshot()
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
        if self._writer is not None:
            self._writer.write({f"data/{k}": v for k, v in counts.items()}, epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()


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
        if not _epoch_complete(self, self.step_source, self._batches):
            record["partial"] = True
        for k, v in (logs or {}).items():
            try:
                record[k] = float(np.asarray(v))
            except (TypeError, ValueError):
                continue
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        append_line(self.path, json.dumps(record))

__all__ = ["BACKUP_KEEP", "CocoEvaluationCallback", "DataHealthLogger", "EpochCheckpoint", "HistoryLog",
           "FitStartCheck", "HoldRunLock", "NonFiniteGuard", "NonFiniteLossError", "SummaryWriter", "SignalStop", "StepBackup",
           "TimeBudget", "is_nonfinite_guard", "list_backups", "restore_backup"]
