"""The one callback builder: the callbacks of a training run, in the order they must run.

:func:`build_callbacks` makes the list for :func:`mrcnn.engine.run_training`
(``mrcnn train``), :func:`default_callbacks` (a plain ``model.fit``) and every
sample; the ordering rules are written once, beside the code that applies them
(as Detectron2's ``DefaultTrainer.build_hooks``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import keras

from mrcnn.config import Config
from mrcnn.engine.callbacks import (
    CocoEvaluationCallback,
    DataHealthLogger,
    EpochCheckpoint,
    FitStartCheck,
    HistoryLog,
    HoldRunLock,
    InputStallGuard,
    NonFiniteGuard,
    SignalStop,
    StepBackup,
    TimeBudget,
)


@dataclasses.dataclass
class RunCallbacks:
    """What :func:`build_callbacks` made: ``callbacks`` (the list for ``fit``) and handles
    on the ones whose state the caller reads after ``fit`` (None where not built)."""

    callbacks: list[keras.callbacks.Callback]
    guard: NonFiniteGuard
    backup: StepBackup | None
    stopper: SignalStop | None
    budget: TimeBudget | None
    evaluation: CocoEvaluationCallback | None


def build_callbacks(
    out_dir: str | os.PathLike,
    config: Config,
    *,
    steps_per_epoch: int = 0,
    epochs: int = 0,
    initial_step: int = 0,
    restore: bool = True,
    lock: bool = True,
    backup: bool = True,
    checkpoints: bool = True,
    tensorboard: bool = True,
    signals: bool = False,
    val_dataset: Any = None,
    eval_every: int = 0,
    max_minutes: float = 0.0,
    input_timeout: float = 0.0,
    extra_state: dict[str, Any] | None = None,
    rng: Any = None,
    metric_sums: dict[str, list[float]] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunCallbacks:
    """The callbacks of a run into ``out_dir``; see :func:`default_callbacks` for the arguments
    a plain ``fit`` uses. The others: ``initial_step`` (the step a caller that restored the
    backup itself starts at; with ``restore=False``), ``signals`` (SIGTERM/SIGINT finish the
    step, back up and stop: :class:`SignalStop`), ``input_timeout`` (seconds a training step
    may wait before the process exits with status 5: :class:`InputStallGuard`; 0 = never),
    ``extra_state``/``rng``/``metric_sums`` (:class:`StepBackup`).
    """
    out_dir = os.fspath(out_dir)
    logs = os.path.join(out_dir, "logs")
    cbs: list[keras.callbacks.Callback] = []
    # 1. The lock first: no file of the run is read (the restore) or written before it is held.
    if lock:
        cbs.append(HoldRunLock(out_dir))
    # 2. The guard before everything that saves: at a non-finite step it halts in that step's
    #    batch end, and the backup and checkpoint callbacks then see `halted` and write nothing.
    #    It goes back to the newest backup if the bad update was applied (no guard_optimizer).
    guard = NonFiniteGuard(config.SKIP_NONFINITE_STEPS, initial_step=initial_step,
                           restore_dir=os.path.join(out_dir, "backup") if backup else None)
    cbs.append(guard)
    # 3. The backup right after: it restores the newest backup before any later callback's
    #    on_train_begin reads the step, ends a resumed epoch at its planned boundary, and
    #    writes the epoch's backup before evaluation runs (an evaluation that fails or is
    #    killed loses nothing of the training).
    step_backup = None
    if backup:
        step_backup = StepBackup(os.path.join(out_dir, "backup"), config.BACKUP_EVERY_STEPS, steps_per_epoch,
                                 epochs, initial_step=initial_step,
                                 extra_state={"batch_size": int(config.BATCH_SIZE), **(extra_state or {})},
                                 guard=guard, restore=restore, rng=rng, metric_sums=metric_sums)
        cbs.append(step_backup)
    # 4. The start checks after the restore: a resumed run is judged on its restored weights.
    cbs.append(FitStartCheck(config, steps_per_epoch, epochs, initial_step, step_backup))
    # 5. Stops (signal) after the backup: the step finishes, StepBackup saves at train end;
    #    they re-assert the stop at the epoch end, after StepBackup's end of a resumed epoch.
    stopper = SignalStop() if signals else None
    if stopper is not None:
        cbs.append(stopper)
    if input_timeout:
        cbs.append(InputStallGuard(input_timeout, os.path.join(out_dir, "backup") if backup else None))
    # 6. Evaluation after the epoch's backup, before the checkpoint (its monitor reads the
    #    metrics this adds to the logs) and before the loggers (they record them).
    evaluation = None
    if eval_every and val_dataset is not None:
        evaluation = CocoEvaluationCallback(val_dataset, every_n_epochs=eval_every, log_dir=logs,
                                            images=3 if tensorboard else 0)
        cbs.append(evaluation)
    if checkpoints:
        cbs.append(EpochCheckpoint(os.path.join(out_dir, "checkpoints"), keep=config.CHECKPOINTS_TO_KEEP,
                                   monitor=config.CHECKPOINT_MONITOR, mode=config.CHECKPOINT_MODE,
                                   guard=guard, step_source=step_backup))
    # 7. Data health adds data_* keys to the logs: before the loggers.
    cbs.append(DataHealthLogger(logs if tensorboard else None))
    # 8. The loggers after everything that adds to an epoch's logs.
    cbs.append(HistoryLog(os.path.join(logs, "history.jsonl"), step_backup))
    if tensorboard:
        cbs.append(keras.callbacks.TensorBoard(logs, write_graph=False))
    # 9. The time budget last of ours (its stop, like a signal's, comes after the step).
    budget = TimeBudget(max_minutes) if max_minutes else None
    if budget is not None:
        cbs.append(budget)
    # 10. The caller's own after ours: they see the evaluation metrics and data health keys.
    cbs.extend(callbacks)
    return RunCallbacks(cbs, guard, step_backup, stopper, budget, evaluation)


def default_callbacks(
    out_dir: str | os.PathLike,
    checkpoint_every_epoch: bool = True,
    tensorboard: bool = True,
    backup: bool = True,
    config: Config | None = None,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    *,
    val_dataset: Any = None,
    eval_every: int = 0,
    max_minutes: float = 0.0,
    lock: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> list[keras.callbacks.Callback]:
    """The callbacks of a run for a plain ``model.fit`` into ``out_dir`` (:func:`build_callbacks`).

    ``[HoldRunLock, NonFiniteGuard, StepBackup, FitStartCheck, (CocoEvaluationCallback), EpochCheckpoint,
    DataHealthLogger, HistoryLog, TensorBoard, (TimeBudget), *callbacks]``: one run per
    folder, a backup every ``config.BACKUP_EVERY_STEPS`` steps and at every epoch end
    (before evaluation), epoch checkpoints keeping the newest ``config.CHECKPOINTS_TO_KEEP``
    (and the best by ``CHECKPOINT_MONITOR``), a non-finite loss halts ``fit`` with the model
    put back to the last backup.

    Resume at the step: when ``fit`` starts, the newest backup in ``out_dir/backup`` is
    restored (weights, optimizer slots, schedule position, running loss means) and ``fit``
    continues at its global step, mid-epoch included; build the input with
    ``build_dataset(..., seed=S, run_dir=out_dir)`` so that it starts at the same step
    and the run sees the batches the uninterrupted run would have seen. A run whose plan
    is done says so and trains nothing (more ``epochs`` continue it)::

        model.fit(build_dataset(ds, cfg, training=True, seed=0, run_dir=out), epochs=3,
                  steps_per_epoch=40, callbacks=default_callbacks(out, config=cfg))

    Args:
        out_dir: the run's folder (``run.lock``, ``backup/``, ``checkpoints/``, ``logs/``).
        checkpoint_every_epoch: write ``checkpoints/epoch_NNN.weights.h5``.
        tensorboard: Keras' TensorBoard callback and the data-health scalars in ``logs/``.
        backup: step backups and the resume (without them nothing resumes).
        config: BACKUP_EVERY_STEPS, CHECKPOINTS_TO_KEEP, CHECKPOINT_MONITOR/MODE,
            SKIP_NONFINITE_STEPS, BATCH_SIZE (default ``Config()``'s values: pass the
            model's config).
        steps_per_epoch, epochs: the plan (default: fit's ``steps_per_epoch`` and ``epochs``).
        val_dataset, eval_every: COCO-evaluate ``val_dataset`` every N epochs (0 = never).
        max_minutes: stop cleanly after this long (0 = no budget).
        lock: hold ``out_dir/run.lock`` while ``fit`` runs.
        callbacks: more callbacks, after these.
    """
    config = config if config is not None else Config()
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    return build_callbacks(
        out_dir, config, steps_per_epoch=int(steps_per_epoch or 0), epochs=int(epochs or 0), restore=True,
        lock=lock, backup=backup, checkpoints=checkpoint_every_epoch, tensorboard=tensorboard,
        val_dataset=val_dataset, eval_every=eval_every, max_minutes=max_minutes, callbacks=callbacks,
    ).callbacks


__all__ = ["RunCallbacks", "build_callbacks", "default_callbacks"]
