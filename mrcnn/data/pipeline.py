"""tf.data input pipeline (training / evaluation) and inference-time batching.

:func:`build_dataset` yields the model's input contract, a dict of

======================  ===================  ==========================================
key                     dtype / shape        meaning
======================  ===================  ==========================================
``"images"``            float32 [B,Hp,Wp,3]  raw RGB 0-255, resized + zero-padded
                                             (the model normalises)
``"image_sizes"``       int32 [B, 2]         (new_h, new_w) valid top-left region
``"gt_boxes"``          float32 [B, G, 4]    (y1, x1, y2, x2) pixel-edge, in padded-input
                                             pixels; zeros for padding rows
``"gt_class_ids"``      int32 [B, G]         0 = padding, > 0 class, < 0 crowd region
``"gt_masks"``          uint8 [B, G, mh, mw] 0/1 mini masks in their box frame
                        or [B, G, Hp, Wp]    (MINI_MASK_SHAPE None) full masks
``"gt_keypoints"``      float32 [B, G, K, 3] only when NUM_KEYPOINTS = K > 0: (x, y, v)
                                             in padded-input pixels, continuous
                                             pixel-edge frame (as boxes; column c's
                                             centre is c + 0.5); zeros when v = 0
======================  ===================  ==========================================

with ``G = config.MAX_GT_INSTANCES``. Padding: evaluation (``training=False``)
follows ``IMAGE_RESIZE_MODE``, training follows ``TRAIN_PADDING``. In "square"
mode every shape is static (with ``drop_remainder=True``, the training default,
B too); otherwise ("pad32", or ``TRAIN_PADDING="batch"``, the training default)
batches are padded (zeros) to their largest image, a multiple of 32, and in
training landscape and portrait images are batched apart
(``ASPECT_RATIO_GROUPING``). A training crop (``TRAIN_CROP_SIZE``) makes the
canvas static again (the crop side rounded up to 32).

Per element: ``load_instance`` (numpy, via ``tf.numpy_function``) -> random
horizontal flip (training only, probability ``TRAIN_FLIP_PROB``; applied in
original pixels to image, boxes and masks; a mini mask is flipped left-right in
its box frame; keypoints: x -> W - x and left/right swapped by
``config.keypoint_flip_permutation()``) -> ``resize_and_pad`` -> boxes times ``scale`` (exact for the
half-pixel-centre resize in the pixel-edge box convention) -> full masks resized
(bilinear, >= 0.5) and padded; keypoints times ``scale`` -> GT padded to G.

Training augmentation (:mod:`mrcnn.data.augment`): the user hook
(``Config.AUGMENT`` / ``augment=``) runs first on the loaded sample, then the
flip; when ``IMAGE_MIN_DIM`` is a tuple, ``TRAIN_SCALE_JITTER`` or
``TRAIN_CROP_SIZE`` is set, :func:`~mrcnn.data.augment.augment_sample` replaces
``resize_and_pad``'s resize (drawn short side, jittered scale, random crop, the
same geometry for image, masks, boxes and keypoints) and the result is padded to
the crop canvas (``TRAIN_CROP_SIZE`` rounded up to 32, static) or by the resize
mode. Evaluation (``training=False``) always uses the plain resize rule.

Randomness: each element's flip is drawn with a *stateless* RNG keyed by
``(seed, element position)``, so given a ``seed`` the stream is reproducible even
though the map runs in parallel. The augmentation draws use seeds folded from the same
pair. Without a seed one is drawn from the OS.
``deterministic`` ordering of the parallel map is on when a seed is given or
when not training (evaluation must keep the order of ``image_ids``), and off
otherwise (throughput).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import augment as augment_lib
from mrcnn.data import transforms
from mrcnn.data.health import DataHealth
from mrcnn.data.loader import load_instance
from mrcnn.ops.keypoints import flip_keypoints, scale_keypoints


class _ExitGuard:
    """Lets the interpreter exit while a Python-path iterator is still alive.

    At exit the iterator is destroyed during finalisation, with the GIL held, and
    the destructor waits for the parallel map's in-flight ``load_instance`` calls,
    which wait for the GIL: a deadlock (seen with two cores, where several calls
    are in flight). An ``atexit`` hook runs before that: it makes new calls fail at
    once and waits (bounded) until none is in flight, so the destructor has nothing
    to wait for. Process-lifetime state by nature, hence module level.
    """

    def __init__(self) -> None:
        self.exiting = threading.Event()
        self.in_flight = 0
        self.lock = threading.Lock()
        atexit.register(self.drain)

    def __enter__(self) -> None:
        if self.exiting.is_set():
            raise RuntimeError("the interpreter is exiting")
        with self.lock:
            self.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.in_flight -= 1

    def drain(self, limit_s: float = 30.0) -> None:
        self.exiting.set()
        deadline = time.monotonic() + limit_s
        quiet_since = None
        while time.monotonic() < deadline:
            with self.lock:
                busy = self.in_flight > 0
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.5:  # the map's threads have stopped asking
                return
            time.sleep(0.02)


_exit_guard = _ExitGuard()


def _mini_shape(config: Config) -> tuple[int, int] | None:
    if config.MINI_MASK_SHAPE is None:
        return None
    return int(config.MINI_MASK_SHAPE[0]), int(config.MINI_MASK_SHAPE[1])


def _run_position(run_dir: str | os.PathLike, training: bool, seed: int | None, batch_size: int,
                  start_element: int) -> int:
    """``start_element`` of a training stream resuming the run in ``run_dir`` (see build_dataset)."""
    # The run folder is the hand-over between the input and the callbacks of a plain fit: its
    # newest intact step backup (OUT/backup/step_*.json, mrcnn.checkpoint.backups) is the one
    # StepBackup restores, and its step is where this stream starts.
    from mrcnn.fileio import read_commits

    if not training or seed is None or start_element:
        raise ValueError("build_dataset(run_dir=...) is for a training stream with a fixed seed and no "
                         "start_element: pass training=True, seed=<int> (the same on every start)")
    states = read_commits(os.path.join(os.fspath(run_dir), "backup"), "step_")
    if not states:
        return 0
    state = max(states, key=lambda s: int(s["step"]))
    if int(state.get("batch_size", batch_size)) != batch_size:
        raise ValueError(f"{run_dir}: the run was trained with batch size {state['batch_size']}, this "
                         f"pipeline has {batch_size}; use the same to resume it, or another run folder")
    return int(state["step"]) * batch_size


@dataclasses.dataclass(frozen=True)
class _SampleSpec:
    """What turns a loaded sample into a model input element, fixed when the pipeline is built."""

    config: Config
    mode: str  # padding: "square", "pad32", ... (TRAIN_PADDING in training, else IMAGE_RESIZE_MODE)
    canvas: int | None  # the fixed training canvas of geometric augmentation, if any
    mini: tuple[int, int] | None  # mini mask shape
    num_kp: int
    max_gt: int
    rng_seed: int
    user_augment: Any
    flip_prob: float
    flip_perm: Any
    geometric: bool
    group: bool  # aspect-ratio grouping of the batches

    @classmethod
    def make(cls, config: Config, training: bool, augment: Any, rng_seed: int) -> _SampleSpec:
        num_kp = int(config.NUM_KEYPOINTS)
        user_augment = augment_lib.resolve_augment(augment if augment is not None else config.AUGMENT)
        geometric = bool(training) and augment_lib.is_active(config)
        canvas = augment_lib.training_canvas(config) if geometric else None
        # Training pads by TRAIN_PADDING (default: each batch to its largest image, grouped by
        # aspect ratio, as torchvision/Detectron2); evaluation by IMAGE_RESIZE_MODE.
        mode = augment_lib.training_pad_mode(config) if training else config.IMAGE_RESIZE_MODE
        return cls(
            config=config, mode=mode, canvas=canvas, mini=_mini_shape(config), num_kp=num_kp,
            max_gt=int(config.MAX_GT_INSTANCES), rng_seed=rng_seed,
            user_augment=user_augment if training else None,
            flip_prob=float(config.TRAIN_FLIP_PROB) if training else 0.0,
            flip_perm=config.keypoint_flip_permutation() if num_kp else (), geometric=geometric,
            group=bool(training) and mode == "pad32" and canvas is None and bool(config.ASPECT_RATIO_GROUPING),
        )


def _model_input(spec: _SampleSpec, index: tf.Tensor, image: tf.Tensor, boxes: tf.Tensor, class_ids: tf.Tensor,
                 masks: tf.Tensor, keypoints: tf.Tensor) -> dict[str, tf.Tensor]:
    """A loaded sample (the loader's record, in TF tensors) -> the model's input element:
    user augmentation, flip, geometric augmentation or resize, padding (see the module)."""
    config, mode, canvas, mini, num_kp, max_gt = spec.config, spec.mode, spec.canvas, spec.mini, spec.num_kp, spec.max_gt
    rng_seed, user_augment, flip_prob, flip_perm, geometric = (
        spec.rng_seed, spec.user_augment, spec.flip_prob, spec.flip_perm, spec.geometric)
    image.set_shape([None, None, 3])
    boxes.set_shape([None, 4])
    class_ids.set_shape([None])
    masks.set_shape([None, *mini] if mini else [None, None, None])
    keypoints.set_shape([None, num_kp, 3])

    # Stateless, keyed by element position: reproducible under parallel map.
    seed_pair = tf.stack([tf.constant(rng_seed, tf.int64), tf.cast(index, tf.int64)])
    if user_augment is not None:
        sample = augment_lib.apply_user_augment(
            user_augment,
            {"image": image, "boxes": boxes, "class_ids": class_ids, "masks": masks,
             "keypoints": keypoints},
            seed_pair,
        )
        image, boxes, class_ids, masks, keypoints = (
            sample[k] for k in ("image", "boxes", "class_ids", "masks", "keypoints"))
        image.set_shape([None, None, 3])
        masks.set_shape([None, *mini] if mini else [None, None, None])
        keypoints.set_shape([None, num_kp, 3])

    if flip_prob > 0:
        do_flip = tf.random.stateless_uniform([], seed=seed_pair) < flip_prob
        width = tf.shape(image)[1]
        image, boxes, masks, keypoints = tf.cond(
            do_flip,
            lambda: (
                transforms.flip_image(image),
                transforms.flip_boxes(boxes, width),
                transforms.flip_masks(masks),
                flip_keypoints(keypoints, width, flip_perm) if num_kp else keypoints,
            ),
            lambda: (image, boxes, masks, keypoints),
        )

    if geometric:
        sample, image_size = augment_lib.augment_sample(
            {"image": image, "boxes": boxes, "class_ids": class_ids, "masks": masks,
             "keypoints": keypoints},
            config, seed_pair,
        )
        if canvas is not None:
            pad_h = pad_w = tf.constant(canvas, tf.int32)
        else:
            pad_h, pad_w = transforms.padded_size(image_size[0], image_size[1], config, mode)
        images = tf.pad(sample["image"], [[0, pad_h - image_size[0]], [0, pad_w - image_size[1]], [0, 0]])
        static = canvas or transforms._static_padded_shape(config, mode)[0]
        images = tf.ensure_shape(images, [static, static, 3])
        boxes, class_ids, keypoints = sample["boxes"], sample["class_ids"], sample["keypoints"]
        masks = sample["masks"]
        if mini is None:
            masks = tf.ensure_shape(transforms.pad_masks(masks, pad_h, pad_w), [None, static, static])
    else:
        images, image_size, scale = transforms.resize_and_pad(image, config, mode)
        boxes = transforms.scale_boxes(boxes, scale)
        if mini is None:
            masks = transforms.resize_and_pad_masks(masks, config, mode)
        if num_kp:
            keypoints = scale_keypoints(keypoints, scale)
    out = {
        "images": images,
        "image_sizes": image_size,
        "gt_boxes": transforms.pad_to_count(boxes, max_gt),
        "gt_class_ids": transforms.pad_to_count(class_ids, max_gt),
        "gt_masks": transforms.pad_to_count(masks, max_gt),
    }
    if num_kp:
        out["gt_keypoints"] = transforms.pad_to_count(keypoints, max_gt)
    return out


def _batch(ds: tf.data.Dataset, spec: _SampleSpec, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Batch model input elements: stacked on a fixed canvas, else padded to the batch's largest
    image (grouped by aspect ratio when ``spec.group``)."""
    mini, num_kp, max_gt = spec.mini, spec.num_kp, spec.max_gt
    if spec.mode == "square" or spec.canvas is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        mask_hw = list(mini) if mini else [None, None]
        padded_shapes = {
            "images": [None, None, 3],
            "image_sizes": [2],
            "gt_boxes": [max_gt, 4],
            "gt_class_ids": [max_gt],
            "gt_masks": [max_gt, *mask_hw],
        }
        if num_kp:
            padded_shapes["gt_keypoints"] = [max_gt, num_kp, 3]
        if spec.group:
            # Detectron2's AspectRatioGroupedDataset: landscape (w > h) and portrait/square
            # images are batched apart, so a batch pads to a similar shape. Deterministic
            # given the element order.
            def key(e):
                return tf.cast(e["image_sizes"][1] > e["image_sizes"][0], tf.int64)

            ds = ds.group_by_window(
                key, lambda _, w: w.padded_batch(batch_size, padded_shapes=padded_shapes,
                                                 drop_remainder=drop_remainder),
                window_size=batch_size,
            )
        else:
            ds = ds.padded_batch(batch_size, padded_shapes=padded_shapes, drop_remainder=drop_remainder)
    return ds


def build_dataset(
    dataset: Any,
    config: Config,
    training: bool,
    image_ids: Sequence[int] | np.ndarray | None = None,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    seed: int | None = None,
    start_element: int = 0,
    augment: augment_lib.AugmentFn | str | None = None,
    check: bool | str = False,
    run_dir: str | os.PathLike | None = None,
    data_service: str | None = None,
    data_service_job: str | None = None,
    health: DataHealth | None = None,
) -> tf.data.Dataset:
    """Build the batched input pipeline over ``dataset``.

    Args:
        dataset: a prepared :class:`~mrcnn.data.dataset.Dataset`.
        config: the model's Config.
        training: enables flips, shuffling, repetition and drop_remainder.
        image_ids: subset/order of internal ids; default all of ``dataset.image_ids``.
        batch_size: default ``config.BATCH_SIZE``.
        shuffle: default ``training`` (reshuffled every epoch).
        repeat: default ``training`` (infinite).
        seed: makes shuffling, flips and element order reproducible.
        start_element: skip the first N elements of the (seeded) stream before
            loading them: a run resumed at global step k passes k x batch size
            and sees exactly the batches the uninterrupted run would have seen
            (element positions, hence flips, are those of the full stream). Only
            image ids are skipped, so it costs microseconds per element. With
            aspect-ratio grouping (training, ``TRAIN_PADDING="batch"``) and images
            of both orientations, batches are not the first N elements in order,
            so the resumed stream differs from the uninterrupted one by the few
            elements (at most ``batch_size - 1`` per group) waiting in a
            half-filled group at the stop: some are skipped, some seen twice.
        augment: user augmentation hook ``fn(sample, seed) -> sample`` for
            training (see :mod:`mrcnn.data.augment`); default ``config.AUGMENT``.
        check: pre-flight check of the samples (:func:`mrcnn.data.check.check_dataset`):
            True / "sample" checks a random 200 of them, "all" every one;
            bad samples raise :class:`mrcnn.data.check.DatasetCheckError` listing
            them by image id. Not for a :class:`~mrcnn.data.records.RecordDataset`
            (``mrcnn data convert`` validated every sample when it wrote them).
        run_dir: the folder of a training run whose callbacks come from
            :func:`mrcnn.engine.default_callbacks` (training only, with ``seed``):
            the stream starts where the run's newest backup left it
            (``start_element`` = its global step x batch size), the same backup
            the callbacks restore, so a plain ``fit`` run again after any
            interruption sees the batches the uninterrupted run would have seen.
            A fresh folder starts at element 0.
        data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher: the
            whole pipeline (decode, augment, batch) runs on its workers
            (:func:`distribute_to_service`). Needs a ``RecordDataset`` (the
            Python path's ``numpy_function`` cannot run on another process).
            ``start_element`` is ignored there: dynamic sharding has no global
            order to resume in.
        data_service_job: shared job name (consumers with the same name split
            one stream); default an anonymous job per consumer.
        health: the :class:`~mrcnn.data.health.DataHealth` the loader counts into
            (skipped bad samples, dropped empty masks, truncated instances);
            default a new one.

    Returns:
        A ``tf.data.Dataset`` of dicts as described in the module docstring, with
        the pipeline's ``DataHealth`` as its ``data_health`` attribute (what
        ``MaskRCNN.fit`` and ``DataHealthLogger`` read; a further ``.map``/``.take``
        makes a new dataset without it: pass ``model.fit(..., data_health=...)``).
    """
    from mrcnn.data.records import RecordDataset

    records = isinstance(dataset, RecordDataset)
    health = DataHealth() if health is None else health
    if data_service and not records:
        raise ValueError("data_service needs a RecordDataset (records written by `mrcnn data convert`): the "
                         "Python path's load_instance runs in this process and cannot be sent to data workers")
    ids = np.asarray(dataset.image_ids if image_ids is None else image_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"image_ids must be a non-empty 1-D list, got shape {ids.shape}")
    if records:
        if image_ids is not None and not np.array_equal(np.sort(ids), dataset.image_ids):
            raise ValueError("a RecordDataset reads whole files: select images with RecordDataset.shard() or "
                             "by writing another set of records, not with image_ids")
        check = False
    if check:
        from mrcnn.data.check import DatasetCheckError, check_dataset

        report = check_dataset(dataset, config, sample=None if check == "all" else 200, image_ids=ids)
        if report.problems:
            raise DatasetCheckError(report)
    batch_size = config.BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    shuffle = training if shuffle is None else bool(shuffle)
    repeat = training if repeat is None else bool(repeat)
    drop_remainder = bool(training)
    if drop_remainder and not repeat and ids.size < batch_size:
        raise ValueError(
            f"{ids.size} images < batch_size={batch_size} with drop_remainder: the dataset would be empty"
        )
    if run_dir is not None:
        start_element = _run_position(run_dir, training, seed, batch_size, start_element)
    deterministic = seed is not None or not training
    rng_seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31 - 1)

    spec = _SampleSpec.make(config, training, augment, rng_seed)
    num_kp = spec.num_kp

    def load_py(image_id: np.ndarray) -> tuple[np.ndarray, ...]:
        with _exit_guard:
            record = load_instance(dataset, int(image_id), config, health)
        out = (record["image"], record["boxes"], record["class_ids"], record["masks"])
        return (*out, record["keypoints"]) if num_kp else out

    def element(index: tf.Tensor, image_id: tf.Tensor) -> dict[str, tf.Tensor]:
        types = [tf.uint8, tf.float32, tf.int32, tf.uint8] + ([tf.float32] if num_kp else [])
        loaded = tf.numpy_function(load_py, [image_id], types, name="load_instance")
        image, boxes, class_ids, masks = loaded[:4]
        keypoints = loaded[4] if num_kp else tf.zeros([tf.shape(boxes)[0], 0, 3])
        return _model_input(spec, index, image, boxes, class_ids, masks, keypoints)

    if records:
        decode = dataset.decode_fn(config)

        def record_element(index: tf.Tensor, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            return _model_input(spec, index, *decode(serialized))

        ds = dataset.records(shuffle=shuffle, repeat=repeat, seed=rng_seed)
        map_fn = record_element
    else:
        ds = tf.data.Dataset.from_tensor_slices(ids)
        if shuffle:
            # Whole-list buffer: ids are cheap, and a full buffer is a true permutation.
            ds = ds.shuffle(ids.size, seed=rng_seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        map_fn = element
    ds = ds.enumerate()
    if start_element and not data_service:
        # Skip ids (or raw records), not loaded images (mrcnn.engine.runner resumes with this;
        # see docs/reliability.md). Under the data service there is no global order to skip in.
        ds = ds.skip(int(start_element))
    ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

    ds = _batch(ds, spec, batch_size, drop_remainder)
    if data_service:
        ds = distribute_to_service(ds, data_service, job_name=data_service_job)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.data_health = health
    return ds


def distribute_to_service(ds: tf.data.Dataset, address: str, job_name: str | None = None) -> tf.data.Dataset:
    """Run ``ds`` on the tf.data service at ``address`` (``grpc://HOST:PORT``), dynamically sharded.

    ``processing_mode="distributed_epoch"`` (``ShardingPolicy.DYNAMIC``): the
    dispatcher hands the source's splits (record files; for a records pipeline
    one split = one shard file) to whichever worker asks next, so in one epoch every element is
    produced exactly once while all workers live. A worker that dies loses the
    splits it was processing (at most once: elements lost, never repeated), and
    TensorFlow's client then waits on the dead worker's task, often for ever
    (docs/distributed.md has the measured runs). Consumers that pass the same
    ``job_name`` share one job (and so split one epoch between them).
    """
    if "://" not in address:
        raise ValueError(f"data service address must be PROTOCOL://HOST:PORT (e.g. grpc://10.0.0.5:5050), "
                         f"got {address!r}")
    protocol, target = address.split("://", 1)
    return ds.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=(protocol, target), job_name=job_name))
