"""The standard callbacks for ``model.fit`` (and, re-exported for the documented path
``mrcnn.training``, the optimizer builders of :mod:`mrcnn.solver`)."""

from __future__ import annotations

import os

import keras

from mrcnn.config import Config
from mrcnn.solver.optimizer import (  # noqa: F401  (re-exported: mrcnn.training's documented names)
    TorchSGD,
    WarmupCosineDecay,
    WarmupStepDecay,
    auto_lr_steps,
    describe_optimizer,
    make_optimizer,
    make_schedule,
    planned_steps,
    with_loss_scaling,
)


def default_callbacks(
    out_dir: str,
    checkpoint_every_epoch: bool = True,
    tensorboard: bool = True,
    backup: bool = True,
    config: Config | None = None,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
) -> list[keras.callbacks.Callback]:
    """The reliability callbacks for a plain ``model.fit`` into ``out_dir``, in the order they must run.

    ``[NonFiniteGuard, StepBackup (restoring), EpochCheckpoint, DataHealthLogger,
    TensorBoard]``: a backup every ``config.BACKUP_EVERY_STEPS`` steps and at every
    epoch end (before any callback the caller appends, e.g. evaluation), atomic
    epoch checkpoints keeping the newest ``config.CHECKPOINTS_TO_KEEP``, a
    non-finite loss halts ``fit`` and nothing is saved after it.

    When ``fit`` starts, the newest backup in ``out_dir/backup`` (if any) is
    restored (weights, optimizer slots, schedule position) and ``fit`` continues
    at its epoch; a backup taken mid-epoch redoes that epoch's steps on fresh
    data. :func:`mrcnn.engine.runner.run_training` (``mrcnn train``) resumes exactly at the
    step, with the input position, and handles stops, locks and completed runs.

    Args:
        out_dir: the run's folder (``backup/``, ``checkpoints/``, ``logs/``).
        config: BACKUP_EVERY_STEPS, CHECKPOINTS_TO_KEEP, CHECKPOINT_MONITOR/MODE,
            SKIP_NONFINITE_STEPS (default ``Config()``'s values).
        steps_per_epoch, epochs: the plan (default: fit's ``steps_per_epoch``; epochs
            only decides the "complete" flag of the backups, default 1).
    """
    from mrcnn.engine.callbacks import DataHealthLogger, EpochCheckpoint, NonFiniteGuard, StepBackup

    config = config if config is not None else Config()
    spe = int(steps_per_epoch or 0)  # 0: StepBackup takes fit's steps_per_epoch
    os.makedirs(out_dir, exist_ok=True)
    guard = NonFiniteGuard(config.SKIP_NONFINITE_STEPS)
    callbacks: list[keras.callbacks.Callback] = [guard]
    if backup:
        callbacks.append(StepBackup(os.path.join(out_dir, "backup"), config.BACKUP_EVERY_STEPS, spe,
                                    int(epochs or 1), guard=guard, restore=True))
    if checkpoint_every_epoch:
        callbacks.append(EpochCheckpoint(os.path.join(out_dir, "checkpoints"), keep=config.CHECKPOINTS_TO_KEEP,
                                         monitor=config.CHECKPOINT_MONITOR, mode=config.CHECKPOINT_MODE,
                                         guard=guard))
    callbacks.append(DataHealthLogger(os.path.join(out_dir, "logs") if tensorboard else None))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), write_graph=False))
    return callbacks
