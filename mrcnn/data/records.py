"""Read TFRecord shards (ours or the TF Object Detection API's) with TF ops only.

:class:`RecordDataset` names the files; :func:`mrcnn.data.pipeline.build_dataset`
turns it into the model's input with no Python in the per-image path: parsing,
JPEG/PNG decoding, masks, truncation, mini masks, flip, resize and augmentation
are all TF ops inside one parallel ``tf.data`` map, so the pipeline uses every
core (the Python path is held to one by the GIL).

Stream (training): files shuffled per epoch (seeded) -> repeated -> interleaved
(``cycle_length`` files read at once, one record from each in turn) -> a seeded
shuffle buffer of serialised records -> enumerate -> skip ``start_element``
records (resume: raw records are skipped, nothing is decoded) -> decode + the
shared element transform -> batch. Every step is deterministic given the seed,
so a resumed run sees the batches of the uninterrupted one, as the Python path.
Without shuffling the shards are interleaved round-robin over all of them,
which restores the writer's order (image i is in shard ``i % N``).

Per record, in the loader's order (:func:`mrcnn.data.loader.load_sample`):
masks decoded (PNG, value > 0), empty ones dropped; boxes = normalised * (H, W)
in float64 (or our writer's exact ``mrcnn/object/bbox``); crowd (``is_crowd``) gets the negative class id; more than
``MAX_GT_INSTANCES`` instances keeps the largest by mask area in their order;
mini masks are cut area-accurately (:func:`minimize_masks`, the loader's rule in
float64 TF ops, so the result is the loader's bit for bit).

Files of the TF OD API's ``create_coco_tf_record.py`` read as they are; their
``image/object/class/label`` is COCO's category id (1..90), so pass
``label_map={category_id: class_id}`` unless the model uses COCO's 91-slot ids.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mrcnn.data.records_write import METADATA

# Coverage exactly 0.5 counts as set (the loader's rule and tolerance).
_HALF = 0.5 - 1e-9


def _files(pattern: str | Sequence[str]) -> list[str]:
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files: list[str] = []
    for p in patterns:
        p = os.fspath(p)
        if os.path.isdir(p):
            p = os.path.join(p, "*.tfrecord*")
        found = sorted(f for f in glob.glob(p) if not f.endswith(".partial"))
        if not found:
            raise FileNotFoundError(f"no TFRecord files match {p!r} (write them with `mrcnn data convert`)")
        files.extend(found)
    return files


class RecordDataset:
    """TFRecord shards with TF Object Detection API fields, for :func:`~mrcnn.data.pipeline.build_dataset`.

    Args:
        pattern: a folder written by ``mrcnn data convert`` (its ``*.tfrecord*``
            files), a glob (``"/data/coco/train-*"``) or a list of either.
        label_map: stored ``image/object/class/label`` -> model class id (e.g.
            COCO category ids -> contiguous ids); labels not in it are dropped.
            None keeps labels as they are.
        shuffle_buffer: records held by the training shuffle buffer (serialised,
            about 100-200 KB each for COCO photos).
        cycle_length: files read at once when training (unshuffled reading uses
            all files, so that the order is the writer's).

    Attributes:
        files: the shard paths (sorted), ``metadata``: ``records.json`` when
        present (class names, counts), ``class_names``, ``num_keypoints``.

    Raises:
        FileNotFoundError: nothing matches ``pattern``.
        ValueError: the first record is not a TF OD API example with PNG instance
            masks (``image/object/mask``), naming the file and the fix.
    """

    def __init__(
        self,
        pattern: str | os.PathLike | Sequence[str],
        label_map: Mapping[int, int] | None = None,
        shuffle_buffer: int = 512,
        cycle_length: int = 8,
        *,
        _files_list: list[str] | None = None,
    ) -> None:
        self.pattern = pattern
        self.files = list(_files_list) if _files_list is not None else _files(pattern)
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.shuffle_buffer = int(shuffle_buffer)
        self.cycle_length = int(cycle_length)
        self.metadata: dict[str, Any] = {}
        folder = os.path.dirname(self.files[0])
        meta_path = os.path.join(folder, METADATA)
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                self.metadata = json.load(f)
        self.class_names = list(self.metadata.get("class_names", []))
        self.num_keypoints = int(self.metadata.get("num_keypoints", 0))
        self._count: int | None = None
        if _files_list is None:
            self._check_first_record()

    def __repr__(self) -> str:
        return f"RecordDataset({self.pattern!r}, {len(self.files)} file(s))"

    def _check_first_record(self) -> None:
        for path in self.files:
            for raw in tf.data.TFRecordDataset(path).take(1):
                example = tf.train.Example.FromString(raw.numpy())
                feats = example.features.feature
                for key in ("image/encoded", "image/height", "image/width", "image/object/bbox/ymin",
                            "image/object/class/label"):
                    if key not in feats:
                        raise ValueError(f"{path}: the first record has no {key!r}; not a TF Object Detection "
                                         "API example (write records with `mrcnn data convert`)")
                labels = feats["image/object/class/label"].int64_list.value
                masks = feats["image/object/mask"] if "image/object/mask" in feats else None
                if labels and (masks is None or not masks.bytes_list.value):
                    raise ValueError(f"{path}: the first record has objects but no PNG masks in "
                                     "'image/object/mask' (the TF OD API writes them with --include_masks)")
                return

    @property
    def num_images(self) -> int:
        """Records in all files (from ``records.json`` when it covers these files, else counted)."""
        if self._count is None:
            shards = self.metadata.get("shards")
            if shards and sorted(shards) == sorted(os.path.basename(f) for f in self.files):
                self._count = int(self.metadata["num_images"])
            else:
                self._count = int(sum(1 for _ in tf.data.TFRecordDataset(self.files)))
        return self._count

    @property
    def image_ids(self) -> np.ndarray:
        """``0 .. num_images - 1`` (record positions in the unshuffled order)."""
        return np.arange(self.num_images, dtype=np.int64)

    def shard(self, num_shards: int, index: int) -> RecordDataset:
        """The files of worker ``index`` of ``num_shards`` (``files[index::num_shards]``).

        Raises ValueError when there are fewer files than workers (write more
        shards: ``mrcnn data convert --shards N``).
        """
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} outside [0, {num_shards})")
        if len(self.files) < num_shards:
            raise ValueError(f"{len(self.files)} record file(s) cannot be split over {num_shards} workers; "
                             f"write at least {num_shards} shards (mrcnn data convert --shards N)")
        part = RecordDataset(self.pattern, self.label_map, self.shuffle_buffer, self.cycle_length,
                             _files_list=self.files[index::num_shards])
        part.metadata = {k: v for k, v in self.metadata.items() if k not in ("shards", "num_images")}
        part.class_names, part.num_keypoints = self.class_names, self.num_keypoints
        return part

    def records(self, shuffle: bool, repeat: bool, seed: int) -> tf.data.Dataset:
        """Serialised examples in reading order (see the module docstring)."""
        files = tf.data.Dataset.from_tensor_slices(self.files)
        n = len(self.files)
        if shuffle:
            files = files.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            files = files.repeat()
        cycle = min(n, self.cycle_length) if shuffle else n
        parallel = {"num_parallel_calls": min(cycle, 8), "deterministic": True} if cycle > 1 else {}
        ds = files.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                              cycle_length=cycle, block_length=1, **parallel)
        if shuffle:
            ds = ds.shuffle(self.shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
        return ds

    def decode_fn(self, config: Any) -> Any:
        """``fn(serialized) -> (image, boxes, class_ids, masks, keypoints)`` as the loader's record.

        image uint8 ``[H, W, 3]``; boxes float32 ``[N, 4]`` pixel-edge original
        pixels; class_ids int32 ``[N]`` (crowd negative); masks uint8 ``[N, mh, mw]``
        mini masks (or ``[N, H, W]`` with MINI_MASK_SHAPE None); keypoints float32
        ``[N, K, 3]`` continuous frame (K = NUM_KEYPOINTS, maybe 0).
        """
        return _make_decoder(config, self.label_map)


def _make_decoder(config: Any, label_map: Mapping[int, int] | None) -> Any:
    num_kp = int(config.NUM_KEYPOINTS)
    max_gt = int(config.MAX_GT_INSTANCES)
    mini = None if config.MINI_MASK_SHAPE is None else (int(config.MINI_MASK_SHAPE[0]), int(config.MINI_MASK_SHAPE[1]))
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/object/mask": tf.io.VarLenFeature(tf.string),
        "mrcnn/object/bbox": tf.io.VarLenFeature(tf.float32),
    }
    if num_kp:
        spec["image/object/keypoint/x"] = tf.io.VarLenFeature(tf.float32)
        spec["image/object/keypoint/y"] = tf.io.VarLenFeature(tf.float32)
        spec["image/object/keypoint/visibility"] = tf.io.VarLenFeature(tf.int64)
    table = None
    if label_map is not None:
        keys = tf.constant(sorted(label_map), tf.int64)
        values = tf.constant([label_map[k] for k in sorted(label_map)], tf.int64)
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)

    def dense(x: tf.sparse.SparseTensor) -> tf.Tensor:
        return tf.sparse.to_dense(x)

    def decode(serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
        ex = tf.io.parse_single_example(serialized, spec)
        image = decode_image_bytes(ex["image/encoded"])
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
        labels = dense(ex["image/object/class/label"])
        n = tf.shape(labels)[0]
        crowd = dense(ex["image/object/is_crowd"])
        crowd = tf.cond(tf.shape(crowd)[0] == n, lambda: crowd, lambda: tf.zeros([n], tf.int64))

        def coord(key: str, side: tf.Tensor) -> tf.Tensor:
            # float64 product, as the writer's exact normalisation assumes.
            return tf.cast(tf.cast(dense(ex[key]), tf.float64) * side, tf.float32)

        pixel_boxes = dense(ex["mrcnn/object/bbox"])
        boxes = tf.cond(
            tf.shape(pixel_boxes)[0] == 4 * n,
            # Our writer's exact pixel boxes (a float32 y / H times H may miss y by an ulp).
            lambda: tf.reshape(pixel_boxes, [n, 4]),
            lambda: tf.stack([coord("image/object/bbox/ymin", h64), coord("image/object/bbox/xmin", w64),
                              coord("image/object/bbox/ymax", h64), coord("image/object/bbox/xmax", w64)],
                             axis=1),
        )
        strings = dense(ex["image/object/mask"])

        def decode_masks() -> tf.Tensor:
            return tf.map_fn(lambda s: tf.io.decode_png(s, channels=1)[:, :, 0], strings,
                             fn_output_signature=tf.TensorSpec([None, None], tf.uint8))

        masks = tf.cond(tf.shape(strings)[0] > 0, decode_masks, lambda: tf.zeros([0, height, width], tf.uint8))
        masks = tf.cast(masks > 0, tf.uint8)
        masks = tf.ensure_shape(masks, [None, None, None])
        if num_kp:
            kx = tf.reshape(tf.cast(dense(ex["image/object/keypoint/x"]), tf.float64) * w64, [n, num_kp])
            ky = tf.reshape(tf.cast(dense(ex["image/object/keypoint/y"]), tf.float64) * h64, [n, num_kp])
            kv = tf.cast(tf.reshape(dense(ex["image/object/keypoint/visibility"]), [n, num_kp]), tf.float32)
            labelled = kv > 0
            # COCO pixel index -> continuous frame (+0.5), as sanitize_keypoints.
            kx = tf.cast(tf.cast(tf.cast(kx, tf.float32), tf.float64) + 0.5, tf.float32)
            ky = tf.cast(tf.cast(tf.cast(ky, tf.float32), tf.float64) + 0.5, tf.float32)
            zero = tf.zeros_like(kv)
            keypoints = tf.stack([tf.where(labelled, kx, zero), tf.where(labelled, ky, zero), kv], axis=-1)
        else:
            keypoints = tf.zeros([n, 0, 3], tf.float32)

        class_ids = labels if table is None else table.lookup(labels)
        areas = tf.reduce_sum(tf.cast(masks, tf.int64), axis=[1, 2])
        keep = (areas > 0) & (class_ids > 0)
        class_ids = tf.where(crowd > 0, -class_ids, class_ids)
        boxes, class_ids, masks, keypoints, areas = (
            tf.boolean_mask(t, keep) for t in (boxes, class_ids, masks, keypoints, areas))
        # MAX_GT_INSTANCES largest by area (stable: ties keep the earlier), original order.
        order = tf.argsort(-areas, stable=True)[:max_gt]
        kept = tf.sort(order)
        boxes, class_ids, masks, keypoints = (tf.gather(t, kept) for t in (boxes, class_ids, masks, keypoints))
        if mini is not None:
            masks = minimize_masks(masks, boxes, mini)
        return image, boxes, tf.cast(class_ids, tf.int32), masks, keypoints

    return decode


def decode_image_bytes(data: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 ``[H, W, 3]`` RGB.

    JPEG with the accurate integer DCT (Pillow's and libjpeg's default; TF's own
    default is the fast one, which differs by up to 16 levels), so that records
    give the Python path's pixels bit for bit.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def _overlap(dst: tf.Tensor, src: tf.Tensor) -> tf.Tensor:
    """[len(dst)-1, len(src)-1] fraction of each dst interval covered by each src interval."""
    lo = tf.maximum(dst[:-1, None], src[None, :-1])
    hi = tf.minimum(dst[1:, None], src[None, 1:])
    return tf.maximum(hi - lo, 0.0) / (dst[1:] - dst[:-1])[:, None]


def _edges(lo: tf.Tensor, hi: tf.Tensor, cells: int) -> tf.Tensor:
    # numpy.linspace's arithmetic (i * step + start, last = stop), so edges match the loader's.
    step = (hi - lo) / cells
    inner = tf.range(cells, dtype=tf.float64) * step + lo
    return tf.concat([inner, hi[None]], axis=0)


def minimize_masks(masks: tf.Tensor, boxes: tf.Tensor, mini_shape: tuple[int, int]) -> tf.Tensor:
    """TF twin of :func:`mrcnn.data.loader.minimize_masks` (area-accurate mini masks).

    Args:
        masks: uint8 ``[N, H, W]`` 0/1 full-image masks.
        boxes: float32 ``[N, 4]`` (y1, x1, y2, x2) pixel-edge boxes (may be fractional).
        mini_shape: (mh, mw).

    Returns:
        uint8 ``[N, mh, mw]``: cell (i, j) is 1 iff at least half its area (in
        original pixels) is inside the mask; computed in float64 on the box's crop.
    """
    mh, mw = int(mini_shape[0]), int(mini_shape[1])

    def one(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        mask, box = args
        box = tf.cast(box, tf.float64)
        y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
        height, width = tf.shape(mask)[0], tf.shape(mask)[1]
        r0 = tf.maximum(tf.cast(tf.floor(y1), tf.int32), 0)
        r1 = tf.minimum(tf.cast(tf.math.ceil(y2), tf.int32), height)
        c0 = tf.maximum(tf.cast(tf.floor(x1), tf.int32), 0)
        c1 = tf.minimum(tf.cast(tf.math.ceil(x2), tf.int32), width)
        valid = (y2 > y1) & (x2 > x1) & (r1 > r0) & (c1 > c0)
        r1, c1 = tf.maximum(r1, r0 + 1), tf.maximum(c1, c0 + 1)  # non-empty slices; result masked below
        crop = tf.cast(mask[r0:r1, c0:c1], tf.float64)
        crop = tf.pad(crop, [[0, r1 - r0 - tf.shape(crop)[0]], [0, c1 - c0 - tf.shape(crop)[1]]])
        wy = _overlap(_edges(y1, y2, mh), tf.cast(tf.range(r0, r1 + 1), tf.float64))
        wx = _overlap(_edges(x1, x2, mw), tf.cast(tf.range(c0, c1 + 1), tf.float64))
        cover = tf.matmul(tf.matmul(wy, crop), wx, transpose_b=True)
        out = tf.cast(cover >= _HALF, tf.uint8)
        return tf.where(valid, out, tf.zeros_like(out))

    masks = tf.convert_to_tensor(masks)
    return tf.cond(
        tf.shape(masks)[0] > 0,
        lambda: tf.map_fn(one, (masks, tf.cast(boxes, tf.float32)),
                          fn_output_signature=tf.TensorSpec([mh, mw], tf.uint8)),
        lambda: tf.zeros([0, mh, mw], tf.uint8),
    )
