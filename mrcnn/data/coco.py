"""A :class:`~mrcnn.data.dataset.Dataset` over any COCO-format instances JSON.

::

    ds = CocoDataset("annotations/instances_val2017.json", "val2017")
    image = ds.load_image(0)            # uint8 [H, W, 3] RGB
    masks, class_ids = ds.load_mask(0)  # bool [H, W, N], int32 [N]

Id conventions (three id spaces meet here):

* ``image_id`` (the argument of every loader) is the dataset's internal index
  0..num_images-1; ``coco_image_id(image_id)`` gives the JSON's ``images[].id``.
* Internal class ids are contiguous: 0 is "BG", 1..K are the kept COCO
  categories in increasing COCO category id order (COCO's own ids have gaps:
  1..90 for 80 categories). ``coco_category_id`` / ``class_id_from_coco_category``
  convert between the two.
* Crowd annotations (``iscrowd=1``) come out of ``load_mask`` with the NEGATIVE
  internal class id, the project-wide crowd convention.

Keypoints (``person_keypoints_*.json``): categories that list ``keypoints``
give the dataset's ``num_keypoints``, ``keypoint_names``, ``keypoint_skeleton``
(0-based pairs from COCO's 1-based ``skeleton``) and ``keypoint_flip_map``
(``left_*`` <-> ``right_*``). ``load_keypoints`` returns the annotations'
``keypoints`` exactly as stored (COCO's pixel-index convention), one row per
instance of ``load_mask``; annotations without keypoints (other categories,
crowd regions) are all zero. Every keypoint list is checked at construction:
its length must be 3·K and its visibility flags 0, 1 or 2, else ValueError
naming the file and annotation id.

Segmentations are decoded with pycocotools exactly as ``COCO.annToRLE`` does
(polygons, compressed RLE, uncompressed RLE), with extra checks so that bad input
is reported, naming the file and annotation id, instead of yielding a wrong mask.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from mrcnn.config import flip_map_from_names
from mrcnn.data.dataset import Dataset

SOURCE = "coco"


class CocoDataset(Dataset):
    """Images, classes and instance masks of one COCO-format annotation file.

    Args:
        annotation_file: path of a COCO instances JSON (``images``, ``annotations``,
            ``categories``).
        image_dir: folder the images' ``file_name`` entries are relative to.
        class_ids: COCO category ids to keep (None = all categories of the JSON).
            Annotations of other categories are dropped; every image is kept,
            including those left without instances (they are valid negatives).
        image_ids: optional COCO image ids to keep (e.g. a split), in the JSON's
            order; None keeps all images.

    ``prepare()`` is called by the constructor.

    Raises:
        ValueError: duplicate image ids, an annotation with an unknown category,
            or an unknown id in ``class_ids`` / ``image_ids``.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        class_ids: Iterable[int] | None = None,
        *,
        image_ids: Iterable[int] | None = None,
    ) -> None:
        super().__init__()
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        with open(self.annotation_file, encoding="utf-8") as f:
            data = json.load(f)
        for key in ("images", "categories"):
            if key not in data:
                raise ValueError(f"{self.annotation_file}: no {key!r} list; not a COCO instances file")
        annotations = data.get("annotations") or []

        categories = sorted(data["categories"], key=lambda c: c["id"])
        known_cats = {c["id"] for c in categories}
        if class_ids is not None:
            keep_cats = {int(c) for c in class_ids}
            unknown = keep_cats - known_cats
            if unknown:
                raise ValueError(f"{self.annotation_file}: class_ids {sorted(unknown)} are not categories of this file")
        else:
            keep_cats = known_cats
        for cat in categories:
            if cat["id"] in keep_cats:
                self.add_class(SOURCE, cat["id"], cat["name"])
        self._init_keypoints([c for c in categories if c["id"] in keep_cats])

        images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            if img["id"] in images:
                raise ValueError(f"{self.annotation_file}: image id {img['id']} appears twice in 'images'")
            images[img["id"]] = img

        anns_per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        orphans = []
        for ann in annotations:
            if ann.get("category_id") not in known_cats:
                ids = sorted(known_cats)
                listed = f"{ids}" if len(ids) <= 10 else f"[{ids[0]}, ..., {ids[-1]}] ({len(ids)} ids)"
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} (image id {ann.get('image_id')}) "
                    f"has category_id {ann.get('category_id')}, which is not in 'categories' {listed}; "
                    "add that category to 'categories' or correct the annotation's category_id"
                )
            if ann["image_id"] not in images:
                orphans.append(ann)
                continue
            if ann["category_id"] in keep_cats:
                self._check_keypoints(ann)
                anns_per_image[ann["image_id"]].append(ann)
        if orphans:
            # Not fatal: the annotation cannot belong to any image we load, so no mask
            # is wrong because of it; but it usually means a truncated/merged file.
            ids = [a.get("id") for a in orphans[:10]]
            more = f" (and {len(orphans) - 10} more)" if len(orphans) > 10 else ""
            warnings.warn(
                f"{self.annotation_file}: annotation ids {ids}{more} refer to image ids "
                f"{sorted({a['image_id'] for a in orphans[:10]})} that are not in 'images'; "
                "they are ignored",
                stacklevel=2,
            )

        if image_ids is not None:
            wanted = [int(i) for i in image_ids]
            unknown = [i for i in wanted if i not in images]
            if unknown:
                raise ValueError(f"{self.annotation_file}: image_ids {unknown[:10]} are not in 'images'")
            wanted_set = set(wanted)
            order = [i for i in images if i in wanted_set]
        else:
            order = list(images)
        for coco_id in order:
            img = images[coco_id]
            self.add_image(
                SOURCE,
                image_id=coco_id,
                path=os.path.join(self.image_dir, img["file_name"]),
                width=img.get("width"),
                height=img.get("height"),
                annotations=anns_per_image[coco_id],
            )
        self.prepare()
        # Indices into image_info[i]["annotations"] of the instances load_mask
        # returns (filled by load_mask; load_keypoints aligns with it).
        self._kept_annotations: dict[int, list[int]] = {}
        self._class_from_coco = {
            info["id"]: idx for idx, info in enumerate(self.class_info) if idx > 0
        }

    # ----- keypoints ----------------------------------------------------------------
    def _init_keypoints(self, categories: list[dict[str, Any]]) -> None:
        with_kps = [c for c in categories if c.get("keypoints")]
        self.num_keypoints = 0
        if not with_kps:
            return
        names = list(with_kps[0]["keypoints"])
        for c in with_kps[1:]:
            if list(c["keypoints"]) != names:
                raise ValueError(
                    f"{self.annotation_file}: categories {with_kps[0]['id']} and {c['id']} list different "
                    "keypoints; one model predicts one set"
                )
        self.num_keypoints = len(names)
        self.keypoint_names = names
        self.keypoint_skeleton = [
            (int(i) - 1, int(j) - 1) for i, j in (with_kps[0].get("skeleton") or [])
        ]
        self.keypoint_flip_map = list(flip_map_from_names(names))

    def _check_keypoints(self, ann: dict[str, Any]) -> None:
        keypoints = ann.get("keypoints")
        if keypoints is None:
            return
        where = f"{self.annotation_file}: annotation {ann.get('id')} (image {ann.get('image_id')})"
        if not self.num_keypoints:
            raise ValueError(f"{where}: has keypoints but no category of the file lists keypoint names")
        k = self.num_keypoints
        if not isinstance(keypoints, (list, tuple)) or len(keypoints) != 3 * k:
            n = len(keypoints) if isinstance(keypoints, (list, tuple)) else type(keypoints).__name__
            raise ValueError(f"{where}: keypoints has {n} numbers, expected 3*K = {3 * k} (x, y, v per keypoint)")
        values = np.asarray(keypoints, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: keypoints contain NaN or inf")
        flags = values[2::3]
        bad = ~np.isin(flags, (0, 1, 2))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}: keypoint {i} ({self.keypoint_names[i]}) has visibility flag {flags[i]:g}; "
                "COCO flags are 0 (not labelled), 1 (labelled, not visible), 2 (visible)"
            )

    def load_keypoints(self, image_id: int) -> np.ndarray | None:
        """float32 [N, K, 3] (x, y, v) of load_mask's instances, as stored in the JSON.

        COCO's convention: integer pixel indices, v in {0, 1, 2}. Instances without
        keypoints are all zero. None when the file has no keypoint categories.
        """
        if not self.num_keypoints:
            return None
        kept = self._kept_annotations.get(image_id)
        if kept is None:
            self.load_mask(image_id)
            kept = self._kept_annotations[image_id]
        anns = self.image_info[image_id]["annotations"]
        out = np.zeros((len(kept), self.num_keypoints, 3), np.float32)
        for row, index in enumerate(kept):
            keypoints = anns[index].get("keypoints")
            if keypoints is not None:
                out[row] = np.asarray(keypoints, np.float32).reshape(self.num_keypoints, 3)
        return out

    # ----- id conversions -----------------------------------------------------------
    def coco_image_id(self, image_id: int) -> int:
        """Internal image index -> the JSON's ``images[].id``."""
        return self.image_info[image_id]["id"]

    def coco_category_id(self, class_id: int) -> int:
        """Internal class id (1..K; a negative crowd id is accepted) -> COCO category id."""
        class_id = abs(int(class_id))
        if class_id == 0:
            raise ValueError("class id 0 is the background; it has no COCO category")
        return self.class_info[class_id]["id"]

    def class_id_from_coco_category(self, category_id: int) -> int:
        """COCO category id -> internal class id (KeyError if not kept)."""
        try:
            return self._class_from_coco[int(category_id)]
        except KeyError:
            raise KeyError(f"COCO category {category_id} is not a class of this dataset") from None

    # ----- loaders ------------------------------------------------------------------
    def image_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) the annotations refer to: the JSON's, else the file's."""
        info = self.image_info[image_id]
        if info.get("height") and info.get("width"):
            return int(info["height"]), int(info["width"])
        # The JSON may omit the size (it is optional in some exporters); the decoded
        # image is then the only reference. Cache it: load_mask needs it each time.
        height, width = self.load_image(image_id).shape[:2]
        info["height"], info["width"] = height, width
        return height, width

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB, EXIF orientation applied.

        Grayscale is repeated to 3 channels, alpha is dropped, 16-bit (and 32-bit
        integer) images are mapped linearly from 0..65535 to 0..255 (a fixed
        scale, not a per-image stretch, so intensities stay comparable between
        images), float images in [0, 1] are scaled by 255.

        Raises:
            FileNotFoundError / OSError: naming the file and the image ids.
            ValueError: the image's size matches neither the JSON's height/width
                nor, for an EXIF-rotated file, its raw pixel grid.
        """
        info = self.image_info[image_id]
        path = info["path"]
        where = f"image {image_id} (COCO id {info['id']}) {path!r}"
        if not os.path.exists(path):
            raise FileNotFoundError(f"{where}: file not found")
        try:
            with Image.open(path) as raw:
                raw.load()
                upright = ImageOps.exif_transpose(raw)
                image = _to_rgb_uint8(upright)
                raw_shape = raw.size[::-1]
        except OSError as exc:
            raise OSError(f"{where}: cannot read image: {exc}") from exc

        want = (info.get("height"), info.get("width"))
        if want[0] and want[1] and image.shape[:2] != tuple(want):
            if tuple(raw_shape) == tuple(want):
                # The annotations were drawn on the stored pixel grid, ignoring the
                # EXIF orientation tag: the un-rotated image is the one they fit.
                warnings.warn(
                    f"{where}: EXIF orientation would make it {image.shape[1]}x{image.shape[0]} "
                    f"but the JSON says {want[1]}x{want[0]}; using the stored orientation",
                    stacklevel=2,
                )
                with Image.open(path) as raw:
                    image = _to_rgb_uint8(raw)
            else:
                raise ValueError(
                    f"{where}: image is {image.shape[1]}x{image.shape[0]} (WxH) but the JSON "
                    f"says {want[1]}x{want[0]}; its masks would not line up"
                )
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of one image.

        Returns:
            masks: bool [H, W, N] (H, W = the image size of the JSON).
            class_ids: int32 [N]; internal ids, NEGATIVE for crowd annotations.

        Annotations that cannot give a mask (polygon parts with fewer than 3
        points, no segmentation, an empty mask) are skipped with a warning naming
        the annotation id.

        Raises:
            ValueError: an RLE whose size differs from the image size.
        """
        info = self.image_info[image_id]
        height, width = self.image_size(image_id)
        masks, class_ids, kept = [], [], []
        for index, ann in enumerate(info["annotations"]):
            rle = self._annotation_rle(ann, info, height, width)
            if rle is None:
                continue
            m = mask_utils.decode(rle).astype(bool)
            if not m.any():
                # A polygon thinner than a pixel rasterizes to nothing; an empty mask
                # has no box and would be a meaningless target.
                warnings.warn(
                    f"{self._where(info, ann)}: the segmentation decodes to an empty mask; skipped",
                    stacklevel=2,
                )
                continue
            class_id = self._class_from_coco[ann["category_id"]]
            masks.append(m)
            class_ids.append(-class_id if ann.get("iscrowd", 0) else class_id)
            kept.append(index)
        self._kept_annotations[image_id] = kept
        if not masks:
            return np.zeros((height, width, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        return np.stack(masks, axis=-1), np.asarray(class_ids, dtype=np.int32)

    def load_boxes(self, image_id: int) -> np.ndarray:
        """float32 [N, 4] (y1, x1, y2, x2): the annotations' ``bbox`` of load_mask's instances.

        COCO's ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates (the
        frame of the polygons), so the box is ``(y, x, y + h, x + w)``. An
        annotation without a valid ``bbox`` gives a NaN row (the loader then
        uses its mask's box). The rows follow the last ``load_mask(image_id)``.
        """
        kept = self._kept_annotations.get(image_id)
        if kept is None:
            self.load_mask(image_id)
            kept = self._kept_annotations[image_id]
        anns = self.image_info[image_id]["annotations"]
        boxes = np.full((len(kept), 4), np.nan, np.float32)
        for row, index in enumerate(kept):
            bbox = anns[index].get("bbox")
            if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
                try:
                    x, y, w, h = (float(v) for v in bbox)
                except (TypeError, ValueError):
                    continue
                boxes[row] = (y, x, y + h, x + w)
        return boxes

    # ----- helpers ------------------------------------------------------------------
    def _where(self, info: dict[str, Any], ann: dict[str, Any]) -> str:
        return (
            f"{self.annotation_file}: annotation {ann.get('id')} of image {info['id']} "
            f"({info['path']!r})"
        )

    def _annotation_rle(
        self, ann: dict[str, Any], info: dict[str, Any], height: int, width: int
    ) -> dict[str, Any] | None:
        """One compressed RLE for the annotation, or None (warned) if it has no usable shape."""
        segm = ann.get("segmentation")
        where = self._where(info, ann)
        if isinstance(segm, list):
            polygons = []
            for part in segm:
                # pycocotools reads a 4-number "polygon" as a box and needs >= 3
                # points to rasterize, so anything shorter must not reach it.
                if not isinstance(part, (list, tuple)) or len(part) < 6 or len(part) % 2:
                    n = len(part) if isinstance(part, (list, tuple)) else part
                    warnings.warn(
                        f"{where}: polygon with {n} coordinates (need an even number >= 6, "
                        "i.e. >= 3 points); that polygon is dropped",
                        stacklevel=3,
                    )
                    continue
                polygons.append([float(v) for v in part])
            if not polygons:
                warnings.warn(f"{where}: no usable polygon; instance skipped", stacklevel=3)
                return None
            return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        if isinstance(segm, dict) and "counts" in segm and "size" in segm:
            size = [int(s) for s in segm["size"]]
            if size != [height, width]:
                raise ValueError(
                    f"{where}: RLE size {size[1]}x{size[0]} (WxH) differs from the image size "
                    f"{width}x{height}"
                )
            counts = segm["counts"]
            # pycocotools' decoder does not check that the runs cover the image: a
            # short RLE leaves uninitialized memory in the mask, a long one overruns.
            total = int(sum(counts)) if isinstance(counts, list) else _rle_string_total(counts)
            if total != height * width:
                raise ValueError(
                    f"{where}: RLE runs cover {total} pixels, not height*width={height * width}"
                )
            if isinstance(counts, list):  # uncompressed RLE
                return mask_utils.frPyObjects(segm, height, width)
            return {"size": size, "counts": counts}
        warnings.warn(f"{where}: no segmentation (polygon or RLE); instance skipped", stacklevel=3)
        return None


def _rle_string_total(counts: str | bytes) -> int:
    """Sum of the run lengths of a compressed COCO RLE string.

    The string format (pycocotools ``rleFrString``): each run is a little-endian
    sequence of 5-bit groups stored as ``chr(48 + group)``, bit 0x20 meaning "more
    groups follow" and bit 0x10 of the last group the sign; from the third run on,
    the value is a difference to the run two places back.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return sum(runs)


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> uint8 [H, W, 3] RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image)
        if arr.dtype.kind == "f":
            arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
            arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        else:
            # 16-bit data (PIL opens 16-bit PNGs as "I;16" or "I"): keep the high byte.
            arr = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if image.mode != "RGB":
        # P, L, LA, RGBA, CMYK, 1 ...: PIL's conversion; alpha is dropped, not blended.
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()

