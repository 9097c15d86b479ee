"""Pre-flight check of a Dataset before training: find the bad samples before step 1.

:func:`check_dataset` loads every image (or a seeded random sample of
``sample`` images on large datasets) through the same validation the training
loader applies (:func:`mrcnn.data.loader.load_sample`) and classifies each
failure:

=====================  ==============================================================
kind                   meaning
=====================  ==============================================================
``missing image``      the image file does not exist
``unreadable image``   it exists but does not decode (truncated JPEG, not an image,
                       PIL's decompression-bomb limit, ...) or has an unusable
                       dtype/shape
``mask size``          ``load_mask``'s masks are not the image's height/width
``class id``           a class id is 0 or ``|id| >= NUM_CLASSES``
``bad annotation``     anything else ``load_mask``/``load_keypoints`` get wrong
=====================  ==============================================================

Used by ``mrcnn train`` (``--check sample|all``, see :func:`mrcnn.engine.runner.run_training`)
and ``build_dataset(..., check=True)``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from mrcnn.config import Config
from mrcnn.data.health import DataHealth


@dataclasses.dataclass
class SampleProblem:
    """One bad sample: internal ``image_id``, its ``path`` (or None), ``kind`` and ``detail``."""

    image_id: int
    path: str | None
    kind: str
    detail: str


@dataclasses.dataclass
class CheckReport:
    """Result of :func:`check_dataset`: ``checked`` of ``total`` images, the ``problems`` found."""

    checked: int
    total: int
    problems: list[SampleProblem]

    @property
    def bad_ids(self) -> list[int]:
        return [p.image_id for p in self.problems]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def table(self, max_rows: int = 50) -> str:
        """A plain-text summary: counts by kind, then one row per bad sample."""
        scope = "all" if self.checked == self.total else f"a random sample of {self.checked}"
        lines = [f"[mrcnn] data check: {scope} of {self.total} images, {len(self.problems)} bad"]
        if not self.problems:
            return lines[0]
        for kind, n in sorted(self.counts().items()):
            lines.append(f"  {kind:<18} {n}")
        lines.append(f"  {'image id':>8}  {'kind':<18} {'path':<40} detail")
        for p in self.problems[:max_rows]:
            path = p.path or "-"
            if len(path) > 40:
                path = "..." + path[-37:]
            detail = p.detail if len(p.detail) <= 120 else p.detail[:117] + "..."
            lines.append(f"  {p.image_id:>8}  {p.kind:<18} {path:<40} {detail}")
        if len(self.problems) > max_rows:
            lines.append(f"  ... and {len(self.problems) - max_rows} more")
        return "\n".join(lines)


class DatasetCheckError(ValueError):
    """The pre-flight check found bad samples (``report`` holds them)."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        super().__init__(
            f"{len(report.problems)} bad sample(s) (image ids {report.bad_ids[:20]}):\n{report.table()}\n"
            "Fix or remove them, or set Config.ON_BAD_SAMPLE='skip' to train without them."
        )


class ClassCountError(DatasetCheckError):
    """The dataset has more classes than ``config.NUM_CLASSES``: every image would be bad."""

    def __init__(self, message: str, total: int = 0) -> None:
        self.report = CheckReport(0, total, [])
        ValueError.__init__(self, message)


def check_class_count(dataset: Any, config: Config) -> None:
    """Raise :class:`ClassCountError` when ``dataset`` has more classes than ``config.NUM_CLASSES``.

    One message for the whole dataset (its class count, a few names and the values to
    set) instead of one "class id" problem per image. A dataset with fewer classes is
    accepted (e.g. a subset of the classes a model predicts).
    """
    names = list(getattr(dataset, "class_names", None) or [])
    count = len(names) or int(getattr(dataset, "num_classes", 0) or 0)
    if not count or count <= config.NUM_CLASSES:
        return
    shown = ", ".join(repr(n) for n in names[1:6]) + (", ..." if count > 6 else "")
    name = type(dataset).__name__
    raise ClassCountError(
        f"the dataset ({name}) has {count} classes (BG + {count - 1}: {shown}) but the config has "
        f"NUM_CLASSES={config.NUM_CLASSES}: set NUM_CLASSES = {count} and CLASS_NAMES = the dataset's "
        "class_names in the config, or load only the classes you train "
        "(e.g. CocoDataset(annotations, images, class_ids=[...]))",
        total=len(getattr(dataset, "image_info", []) or []),
    )


def _classify(dataset: Any, image_id: int, config: Config, health: DataHealth) -> tuple[str, str] | None:
    from mrcnn.data import loader

    path = loader._image_path(dataset, image_id)
    try:
        raw = dataset.load_image(image_id)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the sample's problem
        missing = isinstance(exc, FileNotFoundError) or (path is not None and not os.path.exists(path))
        return ("missing image" if missing else "unreadable image"), f"{type(exc).__name__}: {exc}"
    try:
        image = loader.sanitize_image(raw, loader.describe_image(dataset, image_id))
    except ValueError as exc:
        return "unreadable image", str(exc)
    try:
        loaded = dataset.load_mask(image_id)
        masks, class_ids = np.asarray(loaded[0]), np.asarray(loaded[1])
    except Exception as exc:  # noqa: BLE001
        return "bad annotation", f"load_mask: {type(exc).__name__}: {exc}"
    if masks.ndim == 3 and masks.shape[2] > 0 and masks.shape[:2] != image.shape[:2]:
        return "mask size", f"masks {masks.shape[:2]} vs image {image.shape[:2]}"
    ids = class_ids.astype(np.int64, copy=False) if class_ids.size else class_ids
    if class_ids.size and (np.any(ids == 0) or np.any(np.abs(ids) >= config.NUM_CLASSES)):
        bad = sorted({int(i) for i in ids if i == 0 or abs(int(i)) >= config.NUM_CLASSES})
        return "class id", f"class ids {bad} outside 1..{config.NUM_CLASSES - 1} (NUM_CLASSES={config.NUM_CLASSES})"
    try:
        loader.load_sample(dataset, image_id, config, health)
    except Exception as exc:  # noqa: BLE001
        return "bad annotation", f"{type(exc).__name__}: {exc}"
    return None


def check_dataset(dataset: Any, config: Config, sample: int | None = 200, seed: int = 0,
                  image_ids: Any = None) -> CheckReport:
    """Validate the images of ``dataset`` as the training loader would; returns a :class:`CheckReport`.

    Args:
        dataset: a prepared Dataset.
        config: NUM_CLASSES, MAX_GT_INSTANCES, MINI_MASK_SHAPE, NUM_KEYPOINTS.
        sample: check a random subset of this many images (seeded by ``seed``)
            when the dataset is larger; None checks every image.
        image_ids: ids to consider (default all).

    Raises:
        ClassCountError: the dataset has more classes than NUM_CLASSES (checked first).
    """
    from mrcnn.data import loader

    check_class_count(dataset, config)
    ids = np.asarray(dataset.image_ids if image_ids is None else image_ids, dtype=np.int64)
    chosen = ids
    if sample is not None and ids.size > sample:
        chosen = np.sort(np.random.default_rng(seed).choice(ids, size=int(sample), replace=False))
    problems = []
    health = DataHealth()  # the loader's warnings (empty masks, truncation) once per check
    for image_id in chosen.tolist():
        found = _classify(dataset, int(image_id), config, health)
        if found is not None:
            problems.append(SampleProblem(int(image_id), loader._image_path(dataset, int(image_id)), *found))
    return CheckReport(int(chosen.size), int(ids.size), problems)
