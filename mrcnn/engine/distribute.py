"""Training under ``tf.distribute``: one device, all GPUs of a machine, many machines.

The distributed engine is TensorFlow's (``tf.distribute.OneDeviceStrategy``,
``MirroredStrategy``, ``MultiWorkerMirroredStrategy``); this module only chooses
the strategy, splits the input per worker, says which worker is the chief,
routes each worker's outputs, and works around two Keras 3 bugs that make
``model.fit`` fail under ``MultiWorkerMirroredStrategy`` (keras-team/keras
#20585, tensorflow/tensorflow #72388; see docs/distributed.md):

1. ``fit`` starts by "symbolically building" the model from its first batch,
   and for that reduces the (nested) per-replica input batch with
   ``strategy.reduce("MEAN", batch, axis=None)``. ``strategy.reduce`` does not
   take nested structures and the collective strategy's cross-worker path
   converts the tuple/dict to a tensor: ``ValueError: Attempt to convert a value
   (PerReplica...)``. :func:`enable_multi_worker_fit` builds from the first
   local replica's batch instead (only shapes matter there).
2. Every train/test step's logs are reduced with
   ``strategy.reduce("MEAN", value, axis=0)`` when the strategy is
   multi-worker, which fails for the scalar losses every model logs
   (``Invalid reduction dimension 0 for input with 0 dimensions``). The
   wrapped steps return each log as a ``[1]`` tensor; the reduction then
   averages over all replicas of all workers and yields the scalar.

Batch and learning rate: ``Config.IMAGES_PER_GPU`` is per replica; the global
batch is ``IMAGES_PER_GPU x num_replicas_in_sync`` and :func:`scale_config`
writes the replica count into ``Config.GPU_COUNT`` so that ``BATCH_SIZE`` is the
global batch and ``Config.effective_lr()`` applies the linear scaling rule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.layers.conv import resolve_training_conv

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")


# ----- strategies --------------------------------------------------------------------------
def read_tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` environment variable (ValueError naming what is wrong)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--strategy multi-worker needs the TF_CONFIG environment variable, e.g. "
                         'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}\' (see docs/distributed.md)')
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG needs cluster.worker (a list of host:port), got cluster={cluster!r}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG needs task.type and task.index, got task={task!r}")
    tasks = cluster.get(task["type"])
    if not isinstance(tasks, list) or not (0 <= int(task["index"]) < len(tasks)):
        raise ValueError(f"TF_CONFIG task {task!r} is not in cluster {cluster!r}")
    return spec


def make_strategy(name: str = "auto", communication_timeout: float | None = None,
                  implementation: str = "auto") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`).

    - ``auto``: ``MirroredStrategy`` over all visible GPUs when there are several,
      else TensorFlow's default strategy (one device, no distribution layer at
      all: exactly what a plain ``model.fit`` does).
    - ``one-device``: ``OneDeviceStrategy`` on the first GPU, or the CPU.
    - ``mirrored``: ``MirroredStrategy`` over all visible GPUs (the CPU if none).
    - ``multi-worker``: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (all
      local GPUs of each worker; NCCL between GPUs, gRPC ring otherwise).
      ``communication_timeout`` (seconds) bounds every collective, so a worker
      whose peer died fails instead of waiting; None = TensorFlow's default (the
      coordination service still notices a dead peer by its missing heartbeat).
      ``implementation``: the all-reduce, "auto", "nccl" (GPUs) or "ring" (gRPC).

    Must be called before TensorFlow has run anything (multi-worker
    configures the runtime's cluster).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multi-worker":
        read_tf_config()
        impl = tf.distribute.experimental.CommunicationImplementation
        choices = {"auto": impl.AUTO, "nccl": impl.NCCL, "ring": impl.RING}
        if implementation not in choices:
            raise ValueError(f"implementation must be one of {', '.join(choices)}, got {implementation!r}")
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=communication_timeout, implementation=choices[implementation])
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy([d.name for d in gpus] or None)
    if name == "auto":
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


# What a collective raises when a peer worker died or stopped answering.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                 tf.errors.CancelledError)


def is_peer_failure(exc: BaseException, strategy: tf.distribute.Strategy) -> bool:
    """Whether ``exc`` says that another worker of ``strategy``'s cluster is gone."""
    return isinstance(exc, PEER_FAILURES) and is_multi_worker(strategy) and worker_info(strategy).num_workers > 1


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where this process sits in the cluster.

    ``task_type`` is "worker"/"chief" (None without a cluster); ``task_index`` its
    index in TF_CONFIG; the chief is the "chief" task, or worker 0 when the
    cluster has no "chief" job (TensorFlow's rule).
    """

    task_type: str | None
    task_index: int
    num_workers: int
    is_chief: bool


def worker_info(strategy: tf.distribute.Strategy | None = None) -> WorkerInfo:
    """:class:`WorkerInfo` of this process under ``strategy`` (the current one by default)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None or not resolver.cluster_spec().as_dict():
        return WorkerInfo(None, 0, 1, True)
    cluster = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return WorkerInfo(task_type, task_id, num_workers, is_chief)


# ----- batch and learning rate -------------------------------------------------------------
def scale_config(config: Config, strategy: tf.distribute.Strategy) -> Config:
    """A copy of ``config`` with ``GPU_COUNT`` = the strategy's replica count.

    ``BATCH_SIZE`` is then the global batch (``IMAGES_PER_GPU`` per replica) and
    ``effective_lr()`` scales the rate linearly with it.
    """
    scaled = copy.copy(config)
    scaled.GPU_COUNT = int(strategy.num_replicas_in_sync)
    scaled.validate()
    return scaled


def describe(config: Config, strategy: tf.distribute.Strategy) -> str:
    """The line printed at the start of training: replicas, global batch, learning rate,
    and how the training step computes its 3x3 convolutions on this host.

    ``config`` is the scaled config (:func:`scale_config`).
    """
    info = worker_info(strategy)
    where = (f"{info.num_workers} workers, this is {info.task_type} {info.task_index}"
             f"{' (chief)' if info.is_chief else ''}; " if is_multi_worker(strategy) else "")
    ref = getattr(config, "LR_REFERENCE_BATCH", None)
    lr = config.effective_lr() if hasattr(config, "effective_lr") else float(config.LEARNING_RATE)
    rule = (f" = LEARNING_RATE {config.LEARNING_RATE:g} x {config.BATCH_SIZE} / {ref}" if ref is not None
            else " (LR_REFERENCE_BATCH None: not scaled)")
    name = "MultiWorkerMirroredStrategy" if is_multi_worker(strategy) else type(strategy).__name__
    conv = (f"; 3x3 convolutions {resolve_training_conv(config.TRAINING_CONV_ALGORITHM, config.MIXED_PRECISION)}"
            f" (TRAINING_CONV_ALGORITHM {config.TRAINING_CONV_ALGORITHM!r})")
    return (f"[mrcnn] {name}: {where}{strategy.num_replicas_in_sync} replica(s) x "
            f"{config.IMAGES_PER_GPU} image(s) = global batch {config.BATCH_SIZE}; effective learning rate "
            f"{lr:g}{rule}{conv}")


# ----- input -------------------------------------------------------------------------------
def shard_image_ids(image_ids: Sequence[int] | np.ndarray, num_shards: int, index: int,
                    seed: int = 0) -> np.ndarray:
    """The ids of shard ``index`` of ``num_shards``: disjoint, together all of them.

    The ids are permuted with ``seed`` (the same on every worker) and dealt round
    robin, so shard sizes differ by at most one and do not follow the dataset's
    order (a dataset sorted by source or size is spread over all workers).
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} outside [0, {num_shards})")
    if ids.size < num_shards:
        raise ValueError(f"{ids.size} images cannot be split over {num_shards} workers")
    return np.random.RandomState(seed).permutation(ids)[index::num_shards]


def distribute_dataset(
    strategy: tf.distribute.Strategy,
    dataset: Any,
    config: Config,
    training: bool,
    seed: int | None = None,
    image_ids: Sequence[int] | None = None,
    repeat: bool | None = None,
    start_step: int = 0,
    build: Callable[..., tf.data.Dataset] | None = None,
    health: Any = None,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """The input of ``model.fit`` under ``strategy``.

    One worker: ``build_dataset`` batched by the global batch (``fit`` splits it
    over the local replicas). Multi-worker: each worker builds its own pipeline
    over its :func:`shard_image_ids` shard (disjoint across workers, shard seed
    ``seed or 0``), batched by ``IMAGES_PER_GPU`` per replica, shuffled and
    flipped with ``seed + worker`` so that workers do not repeat each other's
    order; no element is read and dropped by auto-sharding.

    ``start_step``: a run resumed at global step k skips the k batches each
    pipeline already delivered (``build_dataset(start_element=...)``), so it
    sees the batches the uninterrupted run would have seen.

    ``config`` is the scaled config (:func:`scale_config`); ``build`` defaults to
    :func:`mrcnn.data.pipeline.build_dataset` (same keyword arguments). ``health``:
    the :class:`~mrcnn.data.health.DataHealth` every pipeline built here counts into.
    """
    if build is None:
        from mrcnn.data.pipeline import build_dataset as build
    ids = np.asarray(dataset.image_ids if image_ids is None else image_ids, dtype=np.int64)
    if not is_multi_worker(strategy):
        return build(dataset, config, training=training, image_ids=ids, batch_size=config.BATCH_SIZE,
                     seed=seed, repeat=repeat, start_element=int(start_step) * config.BATCH_SIZE, health=health)

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if hasattr(dataset, "shard") and hasattr(dataset, "decode_fn"):
            # Records (mrcnn.data.RecordDataset): whole files per worker, no id selection.
            part = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
            per_replica = context.get_per_replica_batch_size(config.BATCH_SIZE)
            local_replicas = config.BATCH_SIZE // (per_replica * context.num_input_pipelines)
            return build(part, config, training=training, batch_size=per_replica,
                         seed=None if seed is None else int(seed) + context.input_pipeline_id, repeat=repeat,
                         start_element=int(start_step) * per_replica * local_replicas, health=health)
        shard = shard_image_ids(ids, context.num_input_pipelines, context.input_pipeline_id, seed or 0)
        worker_seed = None if seed is None else int(seed) + context.input_pipeline_id
        per_replica = context.get_per_replica_batch_size(config.BATCH_SIZE)
        # Each local replica pulls its own batches from this worker's pipeline.
        local_replicas = config.BATCH_SIZE // (per_replica * context.num_input_pipelines)
        return build(dataset, config, training=training, image_ids=shard, batch_size=per_replica,
                     seed=worker_seed, repeat=repeat,
                     start_element=int(start_step) * per_replica * local_replicas, health=health)

    return strategy.distribute_datasets_from_function(per_worker)


def broadcast_seed(strategy: tf.distribute.Strategy, seed: int) -> int:
    """The chief's ``seed`` on every worker (a collective: all workers must call it).

    A fresh multi-worker run draws its data seed on the chief; the others take it
    so that the seed stored in every backup is the same.
    """
    if not is_multi_worker(strategy) or worker_info(strategy).num_workers == 1:
        return int(seed)
    local_replicas = len(strategy.extended.worker_devices)
    # The chief's replicas share its seed, the others add 0; float64 holds a 31-bit seed exactly.
    share = float(seed) / local_replicas if worker_info(strategy).is_chief else 0.0

    def contribution():
        return tf.constant(share, tf.float64)

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)
    return int(round(float(total)))


def check_same_start(strategy: tf.distribute.Strategy, start_step: int, backup_dir: str) -> None:
    """Raise ValueError on every worker unless all of them resume at the chief's step.

    A worker that does not see the chief's backup (``--out`` not on a file system
    shared by all machines) would start from step 0 while the others resume, and
    train on silently different weights. Two collectives: all workers must call it.
    """
    if not is_multi_worker(strategy) or worker_info(strategy).num_workers == 1:
        return
    chief_step = broadcast_seed(strategy, int(start_step))
    local_replicas = len(strategy.extended.worker_devices)
    differs = 1.0 / local_replicas if int(start_step) != chief_step else 0.0
    total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                            strategy.run(lambda: tf.constant(differs, tf.float64)), axis=None)
    if float(total) > 0.5:
        info = worker_info(strategy)
        raise ValueError(
            f"workers disagree on where to resume: the chief resumes at step {chief_step}, "
            f"{int(round(float(total)))} worker(s) at another step (this one, {info.task_type} {info.task_index}: "
            f"{start_step}, from {backup_dir}). Every worker must see the chief's backup: put --out on a "
            "file system shared by all machines")


# ----- fit under MultiWorkerMirroredStrategy -----------------------------------------------
def enable_multi_worker_fit(model: keras.Model, strategy: tf.distribute.Strategy | None = None) -> keras.Model:
    """Make ``model.fit``/``evaluate`` work under ``MultiWorkerMirroredStrategy`` (Keras 3.x).

    Works around the two Keras bugs described in the module docstring, on this
    model instance only (nothing global is patched; other strategies are left
    alone). Idempotent; returns ``model``.
    """
    strategy = strategy or model.distribute_strategy
    if not is_multi_worker(strategy) or getattr(model, "_mrcnn_multi_worker_fit", False):
        return model

    def first_local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    # Bug 1: only shapes are needed to build; take them from a local replica's batch.
    if hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build"):
        def symbolic_build(iterator=None, data_batch=None):
            if data_batch is None and iterator is not None:
                for _, _, it in iterator:
                    data_batch = tf.nest.map_structure(first_local, next(it))
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        model._maybe_symbolic_build = symbolic_build

    # Bug 2: logs as [1] tensors; Keras' multi-worker mean over axis 0 then averages replicas.
    def as_vectors(step: Callable[[Any], dict]) -> Callable[[Any], dict]:
        def wrapped(data):
            return {k: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v
                    for k, v in step(data).items()}

        return wrapped

    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)
    model._mrcnn_multi_worker_fit = True
    return model


# ----- outputs and callbacks ---------------------------------------------------------------
def worker_dir(out_dir: str, info: WorkerInfo) -> str:
    """Where a worker writes: ``out_dir`` for the chief, ``out_dir/workers/<task_index>`` otherwise."""
    return out_dir if info.is_chief else os.path.join(out_dir, "workers", str(info.task_index))


def final_weights_path(out_dir: str, info: WorkerInfo) -> str:
    """``OUT/final.weights.h5`` (chief) or ``OUT/workers/<task_index>/final.weights.h5``."""
    return os.path.join(worker_dir(out_dir, info), "final.weights.h5")


class WorkerBackupAndRestore(keras.callbacks.Callback):
    """A non-chief worker's side of the chief's ``BackupAndRestore``.

    Restores from the chief's backup (``reader``: the chief's callback, pointing
    at the shared ``OUT/backup``), so all workers resume from the same epoch
    and weights; writes its own backups to a worker-local temporary folder
    (never read, deleted at the end: the chief's files are not clobbered by
    several writers) through a plain ``BackupAndRestore``, so that every worker
    saves at the same points of the run.
    """

    def __init__(self, reader: keras.callbacks.BackupAndRestore, scratch_dir: str) -> None:
        super().__init__()
        self.reader = reader
        self.writer = keras.callbacks.BackupAndRestore(os.path.join(scratch_dir, "backup"),
                                                       save_freq=reader.save_freq, delete_checkpoint=True)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.reader.set_model(model)
        self.writer.set_model(model)

    def on_train_begin(self, logs=None):
        self.reader.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.writer.on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.writer.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        self.writer.on_train_end(logs)


class _RemoveOnTrainEnd(keras.callbacks.Callback):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        shutil.rmtree(self.path, ignore_errors=True)


def worker_callbacks(callbacks: Sequence[keras.callbacks.Callback], info: WorkerInfo,
                     out_dir: str) -> list[keras.callbacks.Callback]:
    """The chief's callbacks (writing under ``out_dir``) adapted for this worker.

    Unchanged on the chief. On the other workers:

    - a backup callback restores from the chief's backup (so every worker
      resumes at the same step with the same weights) and then writes its own
      backups to a worker-local temporary folder (never read, deleted when
      training ends): Keras' ``BackupAndRestore`` through
      :class:`WorkerBackupAndRestore`, :class:`mrcnn.engine.callbacks.StepBackup` (any
      callback with ``backup_dir`` and ``restore``) by moving its ``backup_dir``
      after the restore;
    - ``TensorBoard`` is dropped (the logs are all-reduced: the same on every
      worker);
    - every other file a callback writes under ``out_dir`` (its ``folder``,
      ``filepath``, ``log_dir`` or ``path``: checkpoints, history, data health)
      goes to the temporary folder, so the workers run the same saves as the
      chief without touching its files.

    Other callbacks are kept as they are: they must decide the same on every
    worker (a decision taken from the logs is, one taken from the wall clock is not).
    """
    if info.is_chief:
        return list(callbacks)
    out_dir = os.path.abspath(out_dir)
    scratch = tempfile.mkdtemp(prefix=f"mrcnn-worker{info.task_index}-")

    def moved(path: Any) -> Any:
        if isinstance(path, (str, os.PathLike)):
            full = os.path.abspath(os.fspath(path))
            if full == out_dir or full.startswith(out_dir + os.sep):
                return os.path.join(scratch, os.path.relpath(full, out_dir))
        return path

    adapted: list[keras.callbacks.Callback] = []
    for cb in callbacks:
        if isinstance(cb, keras.callbacks.TensorBoard):
            continue
        if isinstance(cb, keras.callbacks.BackupAndRestore):
            adapted.append(WorkerBackupAndRestore(cb, os.path.join(scratch, f"backup{len(adapted)}")))
            continue
        if hasattr(cb, "backup_dir") and hasattr(cb, "restore"):
            _restore_then_write_elsewhere(cb, moved(cb.backup_dir))
        for attr in ("folder", "filepath", "log_dir", "path"):
            if hasattr(cb, attr):
                setattr(cb, attr, moved(getattr(cb, attr)))
        adapted.append(cb)
    adapted.append(_RemoveOnTrainEnd(scratch))
    return adapted


def _restore_then_write_elsewhere(cb: keras.callbacks.Callback, write_dir: str) -> None:
    """``cb`` restores from its ``backup_dir`` when training begins, then writes to ``write_dir``."""
    restore = cb.on_train_begin

    def on_train_begin(logs=None):
        restore(logs)
        cb.backup_dir = write_dir

    cb.on_train_begin = on_train_begin
