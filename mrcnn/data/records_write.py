"""Write any :class:`~mrcnn.data.dataset.Dataset` as TFRecord shards (TF Object Detection API fields).

``mrcnn data convert`` calls :func:`write_records`. One ``tf.train.Example`` per
image, with the field names of the TF Object Detection API's COCO converter
(``create_coco_tf_record.py``), so its readers and ours read either's files:

=================================  ==========  =========================================
field                              type        value
=================================  ==========  =========================================
``image/encoded``                  bytes       the source file's JPEG/PNG bytes when
                                               the reader's TF decoding gives exactly
                                               the pixels ``load_image`` gives, else a PNG
                                               of those pixels (lossless either way)
``image/format``                   bytes       ``jpeg`` or ``png``
``image/height``, ``image/width``  int64       pixels
``image/filename``                 bytes       basename of ``image_info[id]["path"]``
``image/source_id``                bytes       the dataset's own image id (COCO's id)
``image/key/sha256``               bytes       sha256 of ``image/encoded``
``image/object/bbox/ymin`` ...     float       (ymin, xmin, ymax, xmax) / (H, W, H, W)
``image/object/class/label``       int64       internal class id 1..K (always > 0)
``image/object/class/text``        bytes       class name
``image/object/is_crowd``          int64       1 for a crowd region (the loader's
                                               negative class id)
``image/object/area``              float       mask area in pixels
``image/object/mask``              bytes       one PNG per instance, full image size,
                                               8-bit gray, values 0/1
``image/object/keypoint/x``, ``y`` float       K per instance, COCO pixel index / (W, H)
``image/object/keypoint/visibility`` int64     K per instance, 0/1/2
``image/object/keypoint/num``      int64       labelled keypoints per instance
``image/object/keypoint/text``     bytes       keypoint names (when the dataset has them)
``mrcnn/object/bbox``              float       the boxes in pixels, exactly (see below)
=================================  ==========  =========================================

What is written is what :func:`mrcnn.data.loader.load_sample` sees before its
config-dependent steps: sanitised image, validated masks with empty ones
dropped, the dataset's own boxes where valid (else the masks' tight boxes).
Truncation to ``MAX_GT_INSTANCES`` and mini masks depend on the model's Config,
so the reader does them (in TF ops).

Exact round trip: a float32 ``y / H`` times ``H`` does not always give back the
float32 ``y`` (for H = 90 about a third of the values are off by one ulp), and
the mini masks are cut in the boxes, so one field beyond the TF OD API's keeps
the loader's boxes bit for bit: ``mrcnn/object/bbox`` (float, 4 per instance,
y1 x1 y2 x2 in pixels). Other readers ignore it; ours prefers it and falls back
to the normalised boxes (files of the TF OD API's converter).

Images are assigned to shards round-robin (image i -> shard ``i % N``): read
back without shuffling, the interleave of the N shards restores the dataset's
order. Shards are written under temporary names and renamed at the end, with
``records.json`` (class names, counts, keypoint names) last: a folder with
``records.json`` is complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mrcnn import fileio
from mrcnn.data import loader

METADATA = "records.json"
FORMAT = "mrcnn-records/1"


@dataclass
class ConvertSummary:
    """What :func:`write_records` wrote."""

    out_dir: str
    shards: list[str]
    images: int = 0
    instances: int = 0
    crowd: int = 0
    source_bytes_kept: int = 0  # images stored as their original file bytes
    reencoded_png: int = 0      # images stored as a lossless PNG of the decoded pixels
    skipped: list[tuple[int, str]] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"wrote {self.images} images ({self.instances} instances, {self.crowd} crowd) to "
            f"{len(self.shards)} shard(s) in {self.out_dir}: {self.bytes_written / 2**20:.1f} MiB "
            f"in {self.seconds:.1f} s",
            f"images: {self.source_bytes_kept} kept as their source file, {self.reencoded_png} "
            "re-encoded as PNG (the source did not decode to the same pixels in TensorFlow)",
        ]
        if self.skipped:
            shown = ", ".join(f"{i} ({r})" for i, r in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"skipped {len(self.skipped)} bad image(s): {shown}{more}")
        return "\n".join(lines)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode_image(dataset: Any, image_id: int, image: np.ndarray, summary: ConvertSummary) -> tuple[bytes, str]:
    """The source file's bytes if TensorFlow decodes them to ``image`` exactly, else a PNG."""
    import tensorflow as tf

    from mrcnn.data.records import decode_image_bytes

    path = loader._image_path(dataset, image_id)
    if path and os.path.isfile(path) and path.lower().endswith((".jpg", ".jpeg", ".png")):
        with open(path, "rb") as f:
            data = f.read()
        try:
            decoded = decode_image_bytes(tf.constant(data)).numpy()
        except (tf.errors.OpError, ValueError):
            decoded = None
        if decoded is not None and decoded.shape == image.shape and np.array_equal(decoded, image):
            summary.source_bytes_kept += 1
            return data, ("png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg")
    summary.reencoded_png += 1
    return _png(image), "png"


def _feature(value: Any, kind: str) -> Any:
    import tensorflow as tf

    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(value, np.float32).ravel().tolist()))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(value, np.int64).ravel().tolist()))


def encode_example(dataset: Any, image_id: int, summary: ConvertSummary) -> bytes:
    """One image of ``dataset`` as a serialised ``tf.train.Example`` (fields: module docstring).

    Raises ValueError (naming the image) for a sample the loader would reject.
    """
    import tensorflow as tf

    ref = loader.describe_image(dataset, image_id)
    image = loader.sanitize_image(dataset.load_image(image_id), ref)
    height, width = image.shape[:2]
    loaded = dataset.load_mask(image_id)
    if not isinstance(loaded, (tuple, list)) or len(loaded) not in (2, 3):
        raise ValueError(f"{ref}: load_mask must return (masks, class_ids) or (masks, class_ids, boxes)")
    num_classes = int(getattr(dataset, "num_classes", 0) or 0) or (2**31 - 1)
    masks, class_ids = loader.sanitize_masks(loaded[0], loaded[1], (height, width), num_classes, ref)
    n = class_ids.shape[0]
    given = loader.dataset_boxes(dataset, image_id, loaded, n, (height, width), ref)
    num_kp = int(getattr(dataset, "num_keypoints", 0) or 0)
    raw_kp = None
    if num_kp:
        load = getattr(dataset, "load_keypoints", None)
        raw_kp = load(image_id) if callable(load) else None
        loader.sanitize_keypoints(raw_kp, n, num_kp, ref)  # validation only
        raw_kp = np.zeros((n, num_kp, 3), np.float32) if raw_kp is None else np.asarray(raw_kp, np.float32)
    areas = masks.sum(axis=(0, 1))
    keep = areas > 0
    masks, class_ids, areas = masks[:, :, keep], class_ids[keep], areas[keep]
    if given is not None:
        given = given[keep]
    if raw_kp is not None:
        raw_kp = raw_kp[keep]
    boxes = loader.boxes_from_masks(masks)
    if given is not None:
        boxes = np.where(np.isnan(given), boxes, given).astype(np.float32)

    encoded, fmt = _encode_image(dataset, image_id, image, summary)
    names = list(getattr(dataset, "class_names", []) or [])
    labels = np.abs(class_ids).astype(np.int64)
    info = dataset.image_info[image_id] if hasattr(dataset, "image_info") else {}
    source_id = str(info.get("id", image_id))
    path = loader._image_path(dataset, image_id)
    feats = {
        "image/encoded": _feature([encoded], "bytes"),
        "image/format": _feature([fmt.encode()], "bytes"),
        "image/height": _feature([height], "int"),
        "image/width": _feature([width], "int"),
        "image/filename": _feature([os.path.basename(path or f"{image_id}.{fmt}").encode()], "bytes"),
        "image/source_id": _feature([source_id.encode()], "bytes"),
        "image/key/sha256": _feature([hashlib.sha256(encoded).hexdigest().encode()], "bytes"),
        "image/object/bbox/ymin": _feature(boxes[:, 0] / height, "float"),
        "image/object/bbox/xmin": _feature(boxes[:, 1] / width, "float"),
        "image/object/bbox/ymax": _feature(boxes[:, 2] / height, "float"),
        "image/object/bbox/xmax": _feature(boxes[:, 3] / width, "float"),
        "mrcnn/object/bbox": _feature(boxes, "float"),
        "image/object/class/label": _feature(labels, "int"),
        "image/object/class/text": _feature(
            [(names[c] if c < len(names) else str(c)).encode() for c in labels], "bytes"),
        "image/object/is_crowd": _feature((class_ids < 0).astype(np.int64), "int"),
        "image/object/area": _feature(areas.astype(np.float32), "float"),
        "image/object/mask": _feature([_png(masks[:, :, i].astype(np.uint8)) for i in range(masks.shape[2])],
                                      "bytes"),
    }
    if raw_kp is not None:
        vis = raw_kp[..., 2].astype(np.int64)
        labelled = vis > 0
        xs = np.where(labelled, raw_kp[..., 0] / width, 0.0)
        ys = np.where(labelled, raw_kp[..., 1] / height, 0.0)
        feats["image/object/keypoint/x"] = _feature(xs, "float")
        feats["image/object/keypoint/y"] = _feature(ys, "float")
        feats["image/object/keypoint/visibility"] = _feature(vis, "int")
        feats["image/object/keypoint/num"] = _feature(labelled.sum(axis=1), "int")
        kp_names = list(getattr(dataset, "keypoint_names", []) or [])
        if kp_names:
            feats["image/object/keypoint/text"] = _feature([str(s).encode() for s in kp_names] * len(labels),
                                                           "bytes")
    summary.instances += int(labels.size)
    summary.crowd += int((class_ids < 0).sum())
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def shard_names(out_dir: str, num_shards: int, prefix: str = "data") -> list[str]:
    """``OUT/data-00000-of-00004.tfrecord`` ... (the TF OD API's ``-NNNNN-of-NNNNN`` pattern)."""
    return [os.path.join(out_dir, f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]


def write_records(
    dataset: Any,
    out_dir: str | os.PathLike,
    num_shards: int | None = None,
    image_ids: Sequence[int] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Write ``dataset`` as TFRecord shards in ``out_dir`` (fields: module docstring).

    Args:
        dataset: a prepared :class:`~mrcnn.data.dataset.Dataset`.
        out_dir: created if missing; must not already hold ``records.json``.
        num_shards: default one per 256 images (at least 1), so that a few
            hundred workers can each read whole files.
        image_ids: subset/order (default all, in ``dataset.image_ids`` order).
        skip_bad: skip images the loader rejects (listed in the summary) instead
            of failing on the first one.
        progress: tqdm progress bar.

    Returns:
        A :class:`ConvertSummary`.

    Raises:
        FileExistsError: ``out_dir`` already holds records.
        mrcnn.data.loader.BadSampleError: a bad sample (without ``skip_bad``),
            naming its image id and path.
    """
    import tensorflow as tf

    out_dir = os.fspath(out_dir)
    ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    if not ids:
        raise ValueError("the dataset has no images to convert")
    num_shards = max(1, -(-len(ids) // 256)) if num_shards is None else int(num_shards)
    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, METADATA)):
        raise FileExistsError(f"{out_dir} already holds records ({METADATA}); choose another --out or remove it")
    names = shard_names(out_dir, num_shards)
    summary = ConvertSummary(out_dir=out_dir, shards=names)
    start = time.perf_counter()
    tmp = [name + ".partial" for name in names]
    writers = [tf.io.TFRecordWriter(t) for t in tmp]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="convert", unit="img")
    written = 0
    try:
        for image_id in ids:
            try:
                example = encode_example(dataset, image_id, summary)
            except loader._SAMPLE_ERRORS as exc:
                error = loader.BadSampleError(image_id, loader._image_path(dataset, image_id),
                                              f"{type(exc).__name__}: {exc}")
                if not skip_bad:
                    raise error from exc
                summary.skipped.append((image_id, error.reason))
            else:
                # Round-robin over the written images: unshuffled reading restores the order.
                writers[written % num_shards].write(example)
                written += 1
                summary.bytes_written += len(example)
            if bar is not None:
                bar.update(1)
    except BaseException:
        for w in writers:
            w.close()
        for t in tmp:
            if os.path.exists(t):
                os.remove(t)
        raise
    finally:
        if bar is not None:
            bar.close()
    for w in writers:
        w.close()
    for t, name in zip(tmp, names):
        os.replace(t, name)
    summary.images = written
    summary.seconds = time.perf_counter() - start
    meta = {
        "format": FORMAT,
        "num_images": written,
        "shards": [os.path.basename(n) for n in names],
        "class_names": list(getattr(dataset, "class_names", []) or []),
        "num_keypoints": int(getattr(dataset, "num_keypoints", 0) or 0),
        "keypoint_names": list(getattr(dataset, "keypoint_names", []) or []),
        "skipped_image_ids": [i for i, _ in summary.skipped],
    }
    fileio.write_json(os.path.join(out_dir, METADATA), meta)
    return summary
