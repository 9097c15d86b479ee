"""The Dataset API a user subclasses (matterport-familiar).

A subclass registers its classes and images, then implements two loaders::

    class MyDataset(Dataset):
        def load(self, ...):
            self.add_class("mine", 1, "cat")
            self.add_image("mine", image_id="img0", path="/data/img0.png")

        def load_image(self, image_id) -> np.ndarray:  # uint8 [H, W, 3] RGB
            ...

        def load_mask(self, image_id) -> tuple[np.ndarray, np.ndarray]:
            ...  # bool [H, W, N] instance masks, int32 [N] class ids (>= 1)

        def load_boxes(self, image_id) -> np.ndarray:  # optional; default: the masks' boxes
            ...  # float32 [N, 4] (y1, x1, y2, x2), one row per instance of load_mask

        def load_keypoints(self, image_id) -> np.ndarray:  # optional (Keypoint R-CNN)
            ...  # float32 [N, K, 3] (x, y, v), one row per instance of load_mask

    ds = MyDataset(); ds.load(...); ds.prepare()

``image_id`` everywhere is the dataset's internal integer index (0..num_images-1),
as returned by ``image_ids``; the source's own id is kept in ``image_info``.
Class id 0 is the background. A negative class id marks a crowd region
(``-class_id``): training ignores proposals that fall on it and never uses it as
a positive (see ``docs/design.md``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def read_rgb_file(path: str | os.PathLike, ref: str | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB from an image file with PIL, converted as training does.

    Palette/CMYK/YCbCr images are converted to RGB(A) first; gray + alpha keeps
    the gray; then :func:`mrcnn.data.loader.sanitize_image` (gray replicated,
    alpha dropped, 16-bit scaled). Raises OSError naming ``ref`` and the file
    when it cannot be read.
    """
    from PIL import Image

    from mrcnn.data.loader import sanitize_image

    ref = ref or f"image {os.fspath(path)!r}"
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            array = np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise OSError(f"{ref}: cannot read {os.fspath(path)!r}: {exc}") from exc
    if array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = array[:, :, 0]
    return sanitize_image(array, ref)


class Dataset:
    """Registry of classes and images, plus the loaders a subclass implements."""

    # Keypoint metadata (datasets with keypoints set them; see docs/keypoints.md):
    # names [K], left/right pairs and skeleton edges as 0-based index pairs, and the
    # per-keypoint OKS sigmas used by evaluation (None = COCO's when K == 17).
    keypoint_names: list[str] | None = None
    keypoint_flip_map: list[tuple[int, int]] | None = None
    keypoint_skeleton: list[tuple[int, int]] | None = None
    keypoint_sigmas: list[float] | None = None

    def __init__(self, class_map: dict | None = None) -> None:
        # class_map: accepted for matterport scripts (``utils.Dataset(class_map=None)``), which
        # never used it either.
        self.class_info: list[dict[str, Any]] = [{"source": "", "id": 0, "name": "BG"}]
        self.image_info: list[dict[str, Any]] = []
        self._prepared = False

    # ----- registration -------------------------------------------------------------
    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        if "." in source:
            raise ValueError(f"source name {source!r} cannot contain a dot")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already registered
        self.class_info.append({"source": source, "id": class_id, "name": class_name})
        self._prepared = False

    def add_image(self, source: str, image_id: Any, path: str | None, **kwargs: Any) -> None:
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)
        self._prepared = False

    def prepare(self, class_map: dict | None = None) -> None:
        """Index classes and images; call after the last add_class/add_image.

        ``class_map`` is accepted for matterport scripts and unused (as in matterport).
        """
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [c["name"] for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {
            f"{info['source']}.{info['id']}": idx for idx, info in enumerate(self.class_info)
        }
        self.image_from_source_map = {
            f"{info['source']}.{info['id']}": idx for idx, info in enumerate(self.image_info)
        }
        self.sources = sorted({i["source"] for i in self.class_info if i["source"]})
        # source -> internal class ids of that source, the background included (matterport's).
        self.source_class_ids = {
            source: [i for i, info in enumerate(self.class_info) if i == 0 or info["source"] == source]
            for source in self.sources
        }
        self._prepared = True

    def _require_prepared(self) -> None:
        if not self._prepared:
            raise RuntimeError(f"{type(self).__name__}.prepare() must be called before use")

    @property
    def image_ids(self) -> np.ndarray:
        self._require_prepared()
        return self._image_ids

    def map_source_class_id(self, source_class_id: str) -> int:
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id: int, source: str) -> Any:
        """Internal class id -> the id it has in ``source`` (the inverse of map_source_class_id)."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} ({info['name']!r}) is from source {info['source']!r}, not {source!r}")
        return info["id"]

    def source_image_link(self, image_id: int) -> Any:
        """The image's path (or URL) as registered with add_image."""
        return self.image_info[image_id].get("path")

    def image_reference(self, image_id: int) -> str:
        """A link or a note that helps find the image (for debugging); a subclass overrides it.
        The base returns "" (as matterport's)."""
        return ""

    def __len__(self) -> int:
        return len(self.image_info)

    # ----- loaders a subclass implements ----------------------------------------------
    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB. The default reads ``image_info[image_id]['path']``."""
        from skimage import io

        path = self.image_info[image_id]["path"]
        try:
            image = io.imread(path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise OSError(f"image {image_id}: cannot read {path!r}: {exc}") from exc
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(bool [H, W, N] masks, int32 [N] class ids). The base class has no instances."""
        return np.zeros((0, 0, 0), dtype=bool), np.zeros((0,), dtype=np.int32)

    def load_boxes(self, image_id: int) -> np.ndarray | None:
        """float32 [N, 4] boxes (y1, x1, y2, x2) of load_mask's N instances, or None.

        Pixel-edge convention in the image's pixels (a box covers [y1, y2) x [x1, x2);
        COCO's ``[x, y, w, h]`` is ``(y, x, y + h, x + w)``). None (the default): the
        tight boxes of the masks are used. A row that is not finite or has no area
        falls back to its mask's box. ``load_mask`` may also return the boxes as a
        third element instead.
        """
        return None

    def load_keypoints(self, image_id: int) -> np.ndarray | None:
        """float32 [N, K, 3] keypoints (x, y, v) of load_mask's N instances, in order.

        COCO's convention: (x, y) in the image's pixels with integer x = the centre
        of pixel column x (so x in [-0.5, W - 0.5]); v = 0 not labelled (x = y = 0),
        1 labelled but not visible, 2 visible. None (the default) = no keypoints
        annotated: with a keypoint Config every instance then has v = 0 everywhere.
        """
        return None
