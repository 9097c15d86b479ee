"""A resumable training run in one output folder: what ``mrcnn train`` calls.

:func:`run_training` wraps ``model.fit`` with the guarantees of
docs/reliability.md:

* one run per folder (:class:`mrcnn.engine.runlock.RunLock`);
* a backup every ``Config.BACKUP_EVERY_STEPS`` steps and at every epoch end,
  *before* evaluation callbacks (:class:`mrcnn.engine.callbacks.StepBackup`), with the
  weights, the optimizer slots, the schedule position, the global step and the
  data seed; the same call started again resumes from it, mid-epoch included,
  and its input pipeline skips exactly the elements already consumed
  (``build_dataset(..., seed=seed, start_element=step * batch)``), so it sees the
  batches the uninterrupted run would have seen;
* stops keep state: a time budget or SIGTERM/SIGINT finishes the step, backs up
  and returns ``status="stopped"``; a completed run says so and is only started
  again with ``resume="restart"``;
* non-finite losses are never applied (:func:`guard_optimizer`) and stop the run
  (or are skipped, ``Config.SKIP_NONFINITE_STEPS``) with a message naming the
  step and the loss terms (:class:`mrcnn.engine.callbacks.NonFiniteGuard`);
* bad samples: a pre-flight check (``check="sample"|"all"``) and
  ``Config.ON_BAD_SAMPLE`` during training, reported as
  :class:`mrcnn.data.loader.BadSampleError` instead of a TF traceback;
* every file is written atomically (:mod:`mrcnn.fileio`).

Layout of ``out_dir``: ``run.lock``, ``backup/step_NNNNNNNN.{weights.h5,json}``
(the newest two), ``checkpoints/epoch_NNN.weights.h5`` (the newest
``CHECKPOINTS_TO_KEEP`` plus the best), ``final.weights.h5``, ``logs/``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.engine.callbacks import (
    FIXED_SCALE_GROWTH_STEPS,
    CocoEvaluationCallback,
    DataHealthLogger,
    EpochCheckpoint,
    HistoryLog,
    NonFiniteGuard,
    NonFiniteLossError,
    SignalStop,
    StepBackup,
    TimeBudget,
    list_backups,
    restore_backup,
)
from mrcnn.engine.runlock import RunLock
from mrcnn.fileio import atomic_save_weights, remove_stale_temporaries, write_text
from mrcnn.ops import sampling


class ResumeError(RuntimeError):
    """The output folder's state does not allow the requested start (message says why)."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`run_training` did.

    status: "complete" (the planned epochs are done, ``final.weights.h5`` written),
        "stopped" (time budget or signal; resumable), "already_complete"
        (nothing to do).
    step: global step reached; start_step: the step this call started at.
    history: one ``History.history`` dict per ``fit`` call of this run.
    signum: the signal that stopped the run, if any.
    """

    status: str
    step: int
    start_step: int
    epochs: int
    steps_per_epoch: int
    final_weights: str | None = None
    history: list[dict[str, list[float]]] = dataclasses.field(default_factory=list)
    signum: int | None = None
    skipped_nonfinite: int = 0


def guard_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Wrap ``optimizer`` so that a step with non-finite gradients is not applied.

    ``keras.optimizers.LossScaleOptimizer`` at scale 1.0 and a growth interval
    that is never reached: multiplying the loss and dividing the gradients by
    1.0 is exact, so a finite step is bit-identical to the bare optimizer's; a
    non-finite one leaves weights and slots untouched and halves the scale,
    which :class:`~mrcnn.engine.callbacks.NonFiniteGuard` detects and resets to 1.
    ``iterations`` (the schedule position) is the inner optimizer's and does not
    advance on a skipped step.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer  # float16's dynamic scaler skips non-finite steps already
    return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1.0,
                                               dynamic_growth_steps=FIXED_SCALE_GROWTH_STEPS)


def _archive_previous(out_dir: str) -> str | None:
    """Move the previous run's backup, checkpoints and final weights aside (``--restart``)."""
    names = [n for n in ("backup", "checkpoints", "final.weights.h5") if os.path.exists(os.path.join(out_dir, n))]
    if not names:
        return None
    dest = os.path.join(out_dir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(dest, exist_ok=True)
    for n in names:
        os.replace(os.path.join(out_dir, n), os.path.join(dest, n))
    return dest




def _run_training(
    model: keras.Model | Callable[[], keras.Model],
    train_dataset: Any,
    config: Config,
    out_dir: str | os.PathLike,
    epochs: int,
    steps_per_epoch: int | None = None,
    *,
    val_dataset: Any = None,
    val_steps: int = 0,
    eval_every: int = 0,
    max_minutes: float = 0.0,
    seed: int | None = None,
    resume: str = "auto",
    check: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    input_fn: Callable[[int, int], tf.data.Dataset] | None = None,
    tensorboard: bool = True,
    write_config: bool = True,
    verbose: int = 2,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Train ``epochs`` x ``steps_per_epoch`` steps into ``out_dir``, resuming what is there.

    Args:
        model: a MaskRCNN (built; initial weights already loaded if wanted), or a
            zero-argument callable building one; the callable is called after
            ``keras.utils.set_random_seed(seed)``, so a fresh run with a given
            seed starts from the same initial weights.
        train_dataset: a prepared Dataset (fed through ``build_dataset``).
        config: the model's Config (BACKUP_EVERY_STEPS, CHECKPOINTS_TO_KEEP,
            CHECKPOINT_MONITOR/MODE, SKIP_NONFINITE_STEPS, ON_BAD_SAMPLE).
        out_dir: the run's folder (locked while this runs).
        epochs, steps_per_epoch: the plan (default ``config.STEPS_PER_EPOCH``).
        val_dataset, val_steps: validation-loss steps per epoch (0 = none).
        eval_every: COCO-evaluate ``val_dataset`` every N epochs (0 = never);
            runs after the epoch's backup.
        max_minutes: stop cleanly after this long (0 = no budget).
        seed: data/initialisation seed of a fresh run (None = drawn); a resumed
            run uses the seed stored in its backup.
        resume: "auto" (resume a backup if there is one, else start), "require"
            (ResumeError when there is nothing to resume), "restart" (move the
            previous run's files to ``previous-<time>/`` and start fresh).
        check: pre-flight data check, "sample" or "all" (None = none); with
            ``ON_BAD_SAMPLE = "raise"`` problems stop the run before training.
        callbacks: more Keras callbacks (after the built-in ones).
        input_fn: ``(seed, start_element) -> tf.data.Dataset`` instead of
            ``build_dataset(train_dataset, config, training=True, ...)``.
        write_config: write ``out_dir/config.json`` (atomically, under the lock).
        strategy: a ``tf.distribute`` strategy (default: the current one); the
            model is built and compiled in its scope, ``config`` must be scaled
            to it (:func:`mrcnn.engine.distribute.scale_config`). Multi-worker: every
            worker resumes from the chief's ``out_dir/backup``; only the chief
            writes ``out_dir``, the others write their final weights to
            ``out_dir/workers/<task_index>/`` and everything else to a
            temporary folder (see docs/distributed.md).

    Returns:
        A :class:`TrainResult`.

    Raises:
        RunLockedError, ResumeError, NonFiniteLossError, BadSampleError,
        mrcnn.data.check.DatasetCheckError.
    """
    from mrcnn.data import loader
    from mrcnn.engine import distribute
    from mrcnn.solver.optimizer import make_optimizer

    out_dir = os.fspath(out_dir)
    strategy = strategy or tf.distribute.get_strategy()
    worker = distribute.worker_info(strategy)
    if worker.num_workers > 1 and max_minutes:
        raise ValueError("max_minutes with several workers: each would stop at its own step while the others "
                         "wait for it in the next all-reduce; plan the run with epochs instead")
    # Every worker resumes from the chief's backup; the others write theirs to a scratch folder.
    shared_backup_dir = os.path.join(out_dir, "backup")
    final = distribute.final_weights_path(out_dir, worker)
    lock_dir = distribute.worker_dir(out_dir, worker)
    if not worker.is_chief:
        out_dir = tempfile.mkdtemp(prefix=f"mrcnn-worker{worker.task_index}-")
    if resume not in ("auto", "require", "restart"):
        raise ValueError(f"resume must be 'auto', 'require' or 'restart', got {resume!r}")
    spe = int(steps_per_epoch or config.STEPS_PER_EPOCH)
    epochs = int(epochs)
    batch = int(config.BATCH_SIZE)
    backup_dir = os.path.join(out_dir, "backup")
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    with RunLock(lock_dir):
        for folder in (out_dir, backup_dir, ckpt_dir):
            remove_stale_temporaries(folder)
        if resume == "restart":
            moved = _archive_previous(out_dir)
            if moved and verbose:
                print(f"[mrcnn] --restart: the previous run's files are in {moved}", flush=True)
        if write_config:
            write_text(os.path.join(out_dir, "config.json"), config.to_json())
        # After --restart there is nothing to resume (a non-chief must not read what the chief moves).
        backups = [] if resume == "restart" else list_backups(shared_backup_dir)
        if resume == "require" and not backups:
            raise ResumeError(f"nothing to resume in {out_dir}: no backup in {backup_dir}")
        newest = backups[0] if backups else None
        if newest is not None:
            if int(newest["steps_per_epoch"]) != spe or int(newest.get("batch_size", batch)) != batch:
                raise ResumeError(
                    f"{out_dir} holds a run with steps_per_epoch={newest['steps_per_epoch']}, "
                    f"batch size {newest.get('batch_size')}; this call has {spe} and {batch}. "
                    "Use the same values to resume it, or restart (--restart) / another --out"
                )
            if int(newest["step"]) >= epochs * spe:
                print(f"[mrcnn] the run in {out_dir} already completed {int(newest['step']) // spe} epochs "
                      f"({newest['step']} steps; weights: {final}); nothing to do. Pass --restart to "
                      "train again from scratch, or more --epochs to continue it.", flush=True)
                return TrainResult("already_complete", int(newest["step"]), int(newest["step"]), epochs, spe,
                                   final if os.path.exists(final) else None)

        if check:
            from mrcnn.data.check import DatasetCheckError, check_dataset

            report = check_dataset(train_dataset, config, sample=None if check == "all" else 200,
                                   seed=0)
            print(report.table(), flush=True)
            if report.problems and config.ON_BAD_SAMPLE == "raise":
                raise DatasetCheckError(report)

        if newest is not None:
            seed = int(newest["seed"])
        elif seed is None:
            seed = distribute.broadcast_seed(strategy, random.SystemRandom().randrange(2**31 - 1))
        keras.utils.set_random_seed(int(seed))
        # RoI/anchor sampling draws from a generator whose state travels in the backup (exact resume).
        rng = tf.random.Generator.from_seed(int(seed))
        sampling.set_sampling_generator(rng)
        with strategy.scope():
            if callable(model) and not isinstance(model, keras.Model):
                model = model()
            model.compile(optimizer=guard_optimizer(make_optimizer(config, total_steps=epochs * spe)))
        distribute.enable_multi_worker_fit(model, strategy)

        start_step, metric_sums = 0, None
        if backups:
            with strategy.scope():  # the optimizer's slots are created while restoring
                state = restore_backup(model, shared_backup_dir)
            if state is None:
                raise ResumeError(
                    f"no backup in {backup_dir} loads (all torn or corrupt); restart with --restart")
            start_step = int(state["step"])
            if start_step % spe:  # mid-epoch: the epoch's running loss means go on from the backup's
                metric_sums = state.get("metric_sums")
            if "rng_state" in state:
                rng.reset(tf.constant(state["rng_state"], tf.int64))
            if verbose:
                print(f"[mrcnn] resuming {out_dir} at global step {start_step} (epoch {start_step // spe + 1}, "
                      f"step {start_step % spe} of {spe}) from {state['weights_path']}", flush=True)

        distribute.check_same_start(strategy, start_step, shared_backup_dir)
        guard = NonFiniteGuard(config.SKIP_NONFINITE_STEPS, initial_step=start_step)
        backup = StepBackup(backup_dir, config.BACKUP_EVERY_STEPS, spe, epochs, initial_step=start_step,
                            extra_state={"seed": int(seed), "batch_size": batch}, guard=guard, rng=rng,
                            metric_sums=metric_sums)
        stopper = SignalStop()
        budget = TimeBudget(max_minutes) if max_minutes else None
        cbs: list[keras.callbacks.Callback] = [guard, backup, stopper]
        if eval_every and val_dataset is not None and worker.is_chief:
            cbs.append(CocoEvaluationCallback(val_dataset, every_n_epochs=eval_every,
                                              log_dir=os.path.join(out_dir, "logs")))
        cbs.append(EpochCheckpoint(ckpt_dir, keep=config.CHECKPOINTS_TO_KEEP, monitor=config.CHECKPOINT_MONITOR,
                                   mode=config.CHECKPOINT_MODE, guard=guard))
        cbs.append(DataHealthLogger(os.path.join(out_dir, "logs")))
        cbs.append(HistoryLog(os.path.join(out_dir, "logs", "history.jsonl"), backup))
        if tensorboard:
            cbs.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), write_graph=False))
        if budget is not None:
            cbs.append(budget)
        cbs.extend(callbacks)

        def make_input(start: int) -> tf.data.Dataset:
            if input_fn is not None:
                return input_fn(int(seed), start * batch)
            return distribute.distribute_dataset(strategy, train_dataset, config, training=True, seed=int(seed),
                                                 start_step=start)

        # A resume mid-epoch runs the rest of that epoch as its own fit call.
        first_epoch, in_epoch = divmod(start_step, spe)
        phases = []
        if in_epoch:
            phases.append((first_epoch, first_epoch + 1, spe - in_epoch, start_step))
            first_epoch += 1
        if first_epoch < epochs:
            phases.append((first_epoch, epochs, spe, first_epoch * spe))
        result = TrainResult("complete", start_step, start_step, epochs, spe)
        loader.last_bad_sample = None
        for initial_epoch, end_epoch, steps, global_start in phases:
            validation = None
            if val_steps and val_dataset is not None:
                validation = distribute.distribute_dataset(strategy, val_dataset, config, training=False,
                                                           repeat=True)
            try:
                history = model.fit(
                    make_input(global_start),
                    validation_data=validation,
                    validation_steps=val_steps or None,
                    initial_epoch=initial_epoch,
                    epochs=end_epoch,
                    steps_per_epoch=steps,
                    callbacks=cbs,
                    verbose=verbose,
                    shuffle=False,  # the input pipeline shuffles; Keras warns on True with tf.data
                )
            except tf.errors.OpError as exc:
                bad = loader.last_bad_sample
                if bad is not None:
                    backup.save()  # everything before the bad sample is kept
                    raise bad from None
                raise exc
            result.history.append(history.history)
            if guard.halted or stopper.signum is not None or (budget is not None and budget.stopped_early):
                break
        result.step = backup.step
        result.skipped_nonfinite = guard.skipped
        if guard.halted:
            raise NonFiniteLossError(guard.message)
        if result.step < epochs * spe:
            result.status = "stopped"
            result.signum = stopper.signum
            if verbose:
                why = "signal" if stopper.signum is not None else "time budget"
                print(f"[mrcnn] stopped by the {why} at global step {result.step} of {epochs * spe}; "
                      f"the backup is in {backup_dir}: run the same command again to resume", flush=True)
            return result
        atomic_save_weights(model, final)
        if not worker.is_chief:
            shutil.rmtree(out_dir, ignore_errors=True)
        result.final_weights = final
        if verbose:
            print(f"[mrcnn] run complete: {epochs} epochs x {spe} steps; weights: {final}", flush=True)
        return result


def remove_backups(out_dir: str | os.PathLike) -> None:
    """Delete ``out_dir/backup`` (after a run whose resume state is no longer wanted)."""
    shutil.rmtree(os.path.join(os.fspath(out_dir), "backup"), ignore_errors=True)


@functools.wraps(_run_training)
def run_training(*args: Any, **kwargs: Any) -> TrainResult:
    # The sampling goes back to tf.random.uniform when the run ends, so later fit calls
    # in the same process are not tied to this run's generator.
    try:
        return _run_training(*args, **kwargs)
    finally:
        sampling.set_sampling_generator(None)
