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
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn.checkpoint.backups import list_backups, restore_backup, save_weights_file
from mrcnn.config import Config
from mrcnn.data.health import DataHealth
from mrcnn.engine.callbacks import NonFiniteLossError, release_process_state
from mrcnn.engine.hooks import RunCallbacks, build_callbacks
from mrcnn.engine.runlock import RunLock
from mrcnn.fileio import remove_stale_temporaries, write_text
from mrcnn.solver.optimizer import FIXED_SCALE_GROWTH_STEPS


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




@dataclasses.dataclass
class RunPlan:
    """Where and how long a run trains: the folders of this process and the plan's length.

    ``out_dir`` is where this process writes (a scratch folder on a non-chief worker);
    ``backup_dir`` the chief's backup, which every worker resumes from; ``final`` where
    this worker's final weights go; ``lock_dir`` the folder this process locks.
    """

    out_dir: str
    backup_dir: str
    final: str
    lock_dir: str
    epochs: int
    steps_per_epoch: int
    batch: int
    worker: Any

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def make(cls, out_dir: str | os.PathLike, config: Config, epochs: int, steps_per_epoch: int | None,
             strategy: tf.distribute.Strategy, max_minutes: float) -> RunPlan:
        from mrcnn.engine import distribute

        out_dir = os.fspath(out_dir)
        worker = distribute.worker_info(strategy)
        if worker.num_workers > 1 and max_minutes:
            raise ValueError("max_minutes with several workers: each would stop at its own step while the others "
                             "wait for it in the next all-reduce; plan the run with epochs instead")
        own = out_dir if worker.is_chief else tempfile.mkdtemp(prefix=f"mrcnn-worker{worker.task_index}-")
        return cls(own, os.path.join(out_dir, "backup"), distribute.final_weights_path(out_dir, worker),
                   distribute.worker_dir(out_dir, worker), int(epochs),
                   int(steps_per_epoch or config.STEPS_PER_EPOCH), int(config.BATCH_SIZE), worker)


def _prepare_folder(plan: RunPlan, resume: str, verbose: int) -> None:
    for folder in (plan.out_dir, os.path.join(plan.out_dir, "backup"), os.path.join(plan.out_dir, "checkpoints")):
        remove_stale_temporaries(folder)
    if resume == "restart":
        moved = _archive_previous(plan.out_dir)
        if moved and verbose:
            print(f"[mrcnn] --restart: the previous run's files are in {moved}", flush=True)


def config_changes(path: str | os.PathLike, config: Config) -> list[str]:
    """``["FIELD: old -> new", ...]`` between a run's saved ``config.json`` and ``config``
    (empty when the file is absent or unreadable)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    new = json.loads(config.to_json())
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _write_config(plan: RunPlan, config: Config, resuming: bool, force: bool, verbose: int) -> None:
    """Write ``config.json``; a resumed run whose config differs from the saved one is refused
    (ResumeError listing the changes) unless ``force``."""
    path = os.path.join(plan.out_dir, "config.json")
    changes = config_changes(path, config) if resuming else []
    if changes and not force:
        raise ResumeError(
            f"{plan.out_dir} holds a run trained with another configuration ({path}): " + "; ".join(changes)
            + ". Resume it with its own config, pass --force (force=True) to go on with the new one, "
            "or --restart / another --out")
    if changes and verbose:
        print("[mrcnn] --force: resuming with a changed configuration: " + "; ".join(changes), flush=True)
    write_text(path, config.to_json())


def _resume_point(plan: RunPlan, resume: str) -> tuple[list[dict[str, Any]], TrainResult | None]:
    """The backups to resume from, or the result of a run that has nothing left to do."""
    # After --restart there is nothing to resume (a non-chief must not read what the chief moves).
    backups = [] if resume == "restart" else list_backups(plan.backup_dir)
    if resume == "require" and not backups:
        raise ResumeError(f"nothing to resume in {plan.out_dir}: no backup in {plan.backup_dir}")
    if not backups:
        return backups, None
    newest, spe = backups[0], plan.steps_per_epoch
    if int(newest["steps_per_epoch"]) != spe or int(newest.get("batch_size", plan.batch)) != plan.batch:
        raise ResumeError(
            f"{plan.out_dir} holds a run with steps_per_epoch={newest['steps_per_epoch']}, "
            f"batch size {newest.get('batch_size')}; this call has {spe} and {plan.batch}. "
            "Use the same values to resume it, or restart (--restart) / another --out"
        )
    if int(newest["step"]) >= plan.total_steps:
        step = int(newest["step"])
        print(f"[mrcnn] the run in {plan.out_dir} already completed {step // spe} epochs "
              f"({step} steps; weights: {plan.final}); nothing to do. Pass --restart to "
              "train again from scratch, or more --epochs to continue it.", flush=True)
        final = plan.final if os.path.exists(plan.final) else None
        return backups, TrainResult("already_complete", step, step, plan.epochs, spe, final)
    return backups, None


def _preflight(train_dataset: Any, config: Config, check: str | None) -> None:
    if not check:
        return
    from mrcnn.data.check import DatasetCheckError, check_dataset

    report = check_dataset(train_dataset, config, sample=None if check == "all" else 200, seed=0)
    print(report.table(), flush=True)
    if report.problems and config.ON_BAD_SAMPLE == "raise":
        raise DatasetCheckError(report)


def _run_seed(newest: dict[str, Any] | None, seed: int | None, strategy: tf.distribute.Strategy) -> int:
    """A resumed run's stored seed, else ``seed``, else one drawn (the chief's, on every worker)."""
    from mrcnn.engine import distribute

    if newest is not None:
        return int(newest["seed"])
    if seed is None:
        seed = distribute.broadcast_seed(strategy, random.SystemRandom().randrange(2**31 - 1))
    return int(seed)


def _compiled_model(model: keras.Model | Callable[[], keras.Model], config: Config, plan: RunPlan,
                    strategy: tf.distribute.Strategy, rng: tf.random.Generator) -> keras.Model:
    from mrcnn.engine import distribute
    from mrcnn.solver.optimizer import make_optimizer

    with strategy.scope():
        if callable(model) and not isinstance(model, keras.Model):
            model = model()
        # RoI/anchor sampling draws from rng, whose state travels in the backups (exact resume);
        # set before compiling, since train_step reads it when traced. It stays the model's
        # after the run (a later fit goes on drawing from it).
        model.sampling_generator = rng
        model.compile(optimizer=guard_optimizer(make_optimizer(config, total_steps=plan.total_steps)))
    distribute.enable_multi_worker_fit(model, strategy)
    return model


def _restore(model: keras.Model, plan: RunPlan, strategy: tf.distribute.Strategy, rng: tf.random.Generator,
             verbose: int) -> tuple[int, dict[str, list[float]] | None]:
    """Load the newest loadable backup: (its step, the running means' sums if mid-epoch)."""
    with strategy.scope():  # the optimizer's slots are created while restoring
        state = restore_backup(model, plan.backup_dir)
    if state is None:
        raise ResumeError(f"no backup in {plan.backup_dir} loads (all torn or corrupt); restart with --restart")
    step, spe = int(state["step"]), plan.steps_per_epoch
    if "rng_state" in state:
        rng.reset(tf.constant(state["rng_state"], tf.int64))
    if verbose:
        print(f"[mrcnn] resuming {plan.out_dir} at global step {step} (epoch {step // spe + 1}, "
              f"step {step % spe} of {spe}) from {state['weights_path']}", flush=True)
    # Mid-epoch: the epoch's running loss means go on from the backup's.
    return step, (state.get("metric_sums") if step % spe else None)


def _fit(model: keras.Model, plan: RunPlan, inputs: Any, validation: Any, val_steps: int, start_step: int,
         run: RunCallbacks, health: DataHealth, verbose: int) -> dict[str, list[float]]:
    """One ``fit`` from ``start_step`` to the end of the plan (StepBackup ends a resumed
    epoch at its boundary); a bad sample is raised as itself, after a backup."""
    from mrcnn.data import loader

    try:
        history = model.fit(inputs, validation_data=validation, validation_steps=val_steps or None,
                            initial_epoch=start_step // plan.steps_per_epoch, epochs=plan.epochs,
                            steps_per_epoch=plan.steps_per_epoch, callbacks=run.callbacks, verbose=verbose,
                            shuffle=False)  # the input pipeline shuffles; Keras warns on True with tf.data
    except (tf.errors.OpError, loader.BadSampleError):  # MaskRCNN.fit unwraps the former to the latter
        bad = health.first_bad_sample
        if bad is None or run.backup is None:
            raise
        run.backup.save()  # everything before the bad sample is kept
        raise bad from None
    finally:  # a fit that raised skipped on_train_end: signal handlers and the stall watcher go back
        release_process_state(run.callbacks)
    return history.history


def _finish(model: keras.Model, plan: RunPlan, result: TrainResult, run: RunCallbacks, verbose: int) -> TrainResult:
    result.step = run.backup.step
    result.skipped_nonfinite = run.guard.skipped
    if run.guard.halted:
        raise NonFiniteLossError(run.guard.message)
    if result.step < plan.total_steps:
        result.status = "stopped"
        result.signum = run.stopper.signum if run.stopper is not None else None
        if verbose:
            why = "signal" if result.signum is not None else "time budget"
            print(f"[mrcnn] stopped by the {why} at global step {result.step} of {plan.total_steps}; "
                  f"the backup is in {plan.backup_dir}: run the same command again to resume", flush=True)
        return result
    save_weights_file(model, plan.final)
    if not plan.worker.is_chief:
        shutil.rmtree(plan.out_dir, ignore_errors=True)
    result.final_weights = plan.final
    if verbose:
        print(f"[mrcnn] run complete: {plan.epochs} epochs x {plan.steps_per_epoch} steps; weights: {plan.final}",
              flush=True)
    return result


def run_training(
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
    input_timeout: float = 0.0,
    seed: int | None = None,
    resume: str = "auto",
    check: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    input_fn: Callable[[int, int], tf.data.Dataset] | None = None,
    tensorboard: bool = True,
    write_config: bool = True,
    verbose: int = 2,
    strategy: tf.distribute.Strategy | None = None,
    force: bool = False,
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
        input_timeout: exit the process with status 5 when a training step waits
            longer than this many seconds (a stalled input; 0 = never); see
            :class:`mrcnn.engine.callbacks.InputStallGuard`.
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
        write_config: write ``out_dir/config.json`` (atomically, under the lock); a
            resumed run whose config differs from the saved one raises ResumeError
            naming each change (``FIELD: old -> new``) unless ``force``.
        verbose: 0 silent, 1 Keras' per-step progress bar (with ETA), 2 one line per epoch.
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
    from mrcnn.engine import distribute

    if resume not in ("auto", "require", "restart"):
        raise ValueError(f"resume must be 'auto', 'require' or 'restart', got {resume!r}")
    strategy = strategy or tf.distribute.get_strategy()
    plan = RunPlan.make(out_dir, config, epochs, steps_per_epoch, strategy, max_minutes)
    with RunLock(plan.lock_dir):
        _prepare_folder(plan, resume, verbose)
        backups, done = _resume_point(plan, resume)
        if done is not None:
            return done
        if write_config:
            _write_config(plan, config, bool(backups), force, verbose)
        _preflight(train_dataset, config, check)
        seed = _run_seed(backups[0] if backups else None, seed, strategy)
        keras.utils.set_random_seed(seed)
        rng = tf.random.Generator.from_seed(seed)
        model = _compiled_model(model, config, plan, strategy, rng)
        start_step, metric_sums = _restore(model, plan, strategy, rng, verbose) if backups else (0, None)
        distribute.check_same_start(strategy, start_step, plan.backup_dir)
        run = build_callbacks(
            plan.out_dir, config, steps_per_epoch=plan.steps_per_epoch, epochs=plan.epochs,
            initial_step=start_step, restore=False, lock=False, tensorboard=tensorboard, signals=True,
            val_dataset=val_dataset if plan.worker.is_chief else None, eval_every=eval_every,
            max_minutes=max_minutes, input_timeout=input_timeout, extra_state={"seed": seed}, rng=rng,
            metric_sums=metric_sums,
            callbacks=callbacks)
        health = DataHealth()  # what the loader meets, logged by DataHealthLogger via model.data_health
        model.data_health = health
        if input_fn is not None:
            inputs = input_fn(seed, start_step * plan.batch)
        else:
            inputs = distribute.distribute_dataset(strategy, train_dataset, config, training=True, seed=seed,
                                                   start_step=start_step, health=health)
        validation = None
        if val_steps and val_dataset is not None:
            validation = distribute.distribute_dataset(strategy, val_dataset, config, training=False, repeat=True)
        result = TrainResult("complete", start_step, start_step, plan.epochs, plan.steps_per_epoch)
        result.history.append(_fit(model, plan, inputs, validation, val_steps, start_step, run, health, verbose))
        return _finish(model, plan, result, run, verbose)


def remove_backups(out_dir: str | os.PathLike) -> None:
    """Delete ``out_dir/backup`` (after a run whose resume state is no longer wanted)."""
    shutil.rmtree(os.path.join(os.fspath(out_dir), "backup"), ignore_errors=True)
