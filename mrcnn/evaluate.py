"""COCO-style evaluation (box and mask AP/AR) with pycocotools.

The usual flow is one call::

    metrics = evaluate_dataset(model.detect, val_dataset, json_out="results.json")
    print(format_metrics(metrics))

which builds the ground truth from ``dataset.load_mask`` (:func:`dataset_to_coco`),
runs the detector, converts its output (:func:`detections_to_coco`) and scores it
(:func:`coco_metrics`). The pieces are public so that other tools can score
detections against any ``pycocotools.coco.COCO`` ground truth.

Conventions:

* Category ids of the ground truth built here are the dataset's internal class
  ids 1..K (what ``model.detect`` returns), named after ``dataset.class_names``.
* COCO image ids are ``dataset.coco_image_id(image_id)`` when the dataset has
  that method (:class:`mrcnn.data.coco.CocoDataset`), else the internal index.
* Keypoints (when the dataset has ``load_keypoints``) are in COCO's pixel-index
  convention on both sides (ground truth and ``detect()`` output), scored with
  OKS (``iouType="keypoints"``) using ``dataset.keypoint_sigmas`` (COCO's
  sigmas when K = 17 and none are given).
* A metric pycocotools cannot define (no ground truth in that area range, e.g.
  ``APl`` on a dataset without large objects; pycocotools reports -1) is NaN
  here, so that it can never be mistaken for a score or averaged in silently.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
# Keypoint (OKS) evaluation: pycocotools' keypoint summary has 10 numbers, at 20
# detections per image, without the small-area range (COCO keypoints are on
# medium and large people only).
KEYPOINT_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
ALL_IOU_TYPES = (*IOU_TYPES, "keypoints")
# pycocotools' per-keypoint OKS sigmas of the 17 COCO person keypoints.
COCO_KEYPOINT_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)

DetectFn = Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]]


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    # pycocotools prints progress ("creating index...", the summary table) to stdout.
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco(annotation_file: str | os.PathLike, verbose: bool = False) -> COCO:
    """``pycocotools.coco.COCO(annotation_file)``, silent unless ``verbose``."""
    with _quiet(verbose):
        return COCO(os.fspath(annotation_file))


def _coco_from_dict(dataset: dict[str, Any], verbose: bool = False) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _coco_image_id(dataset: Any, image_id: int) -> int:
    fn = getattr(dataset, "coco_image_id", None)
    return int(fn(image_id)) if callable(fn) else int(image_id)


def _encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool/uint8 [H, W, N] -> N compressed RLEs with str counts (JSON-serializable)."""
    # pycocotools wants column-major uint8 [H, W, N].
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


# ----- ground truth ----------------------------------------------------------------------
def dataset_to_coco(
    dataset: Any, image_ids: Sequence[int] | None = None, verbose: bool = False
) -> COCO:
    """In-memory COCO ground truth built from ``dataset.load_mask``.

    Args:
        dataset: a prepared :class:`mrcnn.data.Dataset`.
        image_ids: internal image ids to include (default: all).

    Returns:
        A ``COCO`` object whose annotations have: RLE ``segmentation`` of the
        mask, ``bbox`` [x, y, w, h] of the mask (x2/y2 exclusive, so a one-pixel
        mask is 1x1), ``area`` = mask pixel count, ``iscrowd`` = 1 and category
        ``-class_id`` for negative (crowd) class ids. Category ids = internal
        class ids 1..K. When ``dataset.load_keypoints`` returns keypoints, every
        annotation also has ``keypoints`` (3K numbers, COCO convention) and
        ``num_keypoints``, and the categories ``keypoints`` names and a 1-based
        ``skeleton``. Empty masks are left out (they have no box). Images with
        no instances are included (they still count for false positives).
    """
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    names = list(getattr(dataset, "class_names", []))
    num_classes = len(names) if names else int(getattr(dataset, "num_classes", 0))
    images, annotations = [], []
    max_class = 0
    num_keypoints = 0
    for image_id in ids:
        image_id = int(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        masks = np.asarray(masks)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if masks.ndim != 3 or masks.shape[-1] != class_ids.shape[0]:
            raise ValueError(
                f"image {image_id}: load_mask returned masks {masks.shape} and "
                f"{class_ids.shape[0]} class ids; expected [H, W, N] and [N]"
            )
        keypoints = _gt_keypoints(dataset, image_id, class_ids.shape[0])
        if keypoints is not None:
            num_keypoints = keypoints.shape[1]
        if class_ids.size and class_ids.min() == 0:
            raise ValueError(f"image {image_id}: load_mask returned class id 0 (background)")
        height, width = _image_hw(dataset, image_id, masks)
        coco_id = _coco_image_id(dataset, image_id)
        images.append({"id": coco_id, "height": height, "width": width})
        if class_ids.size:
            rles = _encode_masks(masks)
            # Not mask_utils.area: it sizes its output as uint8 and fails for > 255
            # instances under NumPy 2 (a nucleus image has 258).
            areas = masks.reshape(-1, masks.shape[-1]).sum(axis=0)
            boxes = mask_utils.toBbox(rles)
            for i, (rle, area, box, cid) in enumerate(zip(rles, areas, boxes, class_ids)):
                if area == 0:
                    continue
                max_class = max(max_class, abs(int(cid)))
                keypoint_fields = {}
                if keypoints is not None:
                    kp = keypoints[i]
                    keypoint_fields = {
                        "keypoints": [float(v) for v in kp.reshape(-1)],
                        "num_keypoints": int((kp[:, 2] > 0).sum()),
                    }
                annotations.append({
                    # Ids start at 1: COCOeval stores matched GT ids in arrays
                    # initialized with 0, so an id 0 would count as "unmatched".
                    "id": len(annotations) + 1,
                    "image_id": coco_id,
                    "category_id": abs(int(cid)),
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": [float(v) for v in box],
                    "iscrowd": int(cid < 0),
                    **keypoint_fields,
                })
    if len({img["id"] for img in images}) != len(images):
        raise ValueError("image_ids contain duplicates (or coco_image_id is not unique)")
    num_classes = max(num_classes, max_class + 1)
    categories = [
        {"id": c, "name": names[c] if c < len(names) else str(c)} for c in range(1, num_classes)
    ]
    if num_keypoints:
        kp_names = list(getattr(dataset, "keypoint_names", None) or [str(k) for k in range(num_keypoints)])
        skeleton = [[int(i) + 1, int(j) + 1] for i, j in (getattr(dataset, "keypoint_skeleton", None) or [])]
        for cat in categories:
            cat["keypoints"] = kp_names
            cat["skeleton"] = skeleton
    return _coco_from_dict(
        {"images": images, "annotations": annotations, "categories": categories}, verbose
    )


def _gt_keypoints(dataset: Any, image_id: int, n: int) -> np.ndarray | None:
    """``dataset.load_keypoints`` as float64 [N, K, 3] (COCO convention), or None."""
    load = getattr(dataset, "load_keypoints", None)
    keypoints = load(image_id) if callable(load) else None
    if keypoints is None:
        return None
    keypoints = np.asarray(keypoints, np.float64)
    if n == 0 and keypoints.size == 0:
        return None
    if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
        raise ValueError(
            f"image {image_id}: load_keypoints returned shape {keypoints.shape}; expected [N={n}, K, 3]"
        )
    return keypoints


def keypoint_sigmas_for(dataset: Any, num_keypoints: int) -> np.ndarray:
    """OKS sigmas: ``dataset.keypoint_sigmas``, else COCO's when K = 17, else ValueError."""
    sigmas = getattr(dataset, "keypoint_sigmas", None)
    if sigmas is None:
        if num_keypoints != len(COCO_KEYPOINT_SIGMAS):
            raise ValueError(
                f"keypoint evaluation with K={num_keypoints} keypoints needs per-keypoint OKS sigmas "
                "(set dataset.keypoint_sigmas); COCO's 17 person sigmas do not apply"
            )
        sigmas = COCO_KEYPOINT_SIGMAS
    return np.asarray(sigmas, np.float64).reshape(-1)


def _image_hw(dataset: Any, image_id: int, masks: np.ndarray) -> tuple[int, int]:
    if masks.shape[-1] > 0:
        return int(masks.shape[0]), int(masks.shape[1])
    info = dataset.image_info[image_id] if hasattr(dataset, "image_info") else {}
    if info.get("height") and info.get("width"):
        return int(info["height"]), int(info["width"])
    if masks.shape[0] > 0 and masks.shape[1] > 0:
        return int(masks.shape[0]), int(masks.shape[1])
    # An image without instances may come back as a [0, 0, 0] mask: only the image
    # itself knows its size (COCOeval does not need it, but the JSON should be right).
    image = dataset.load_image(image_id)
    return int(image.shape[0]), int(image.shape[1])


# ----- detections ------------------------------------------------------------------------
def detections_to_coco(
    results: Sequence[Mapping[str, np.ndarray]],
    coco_image_ids: Sequence[int],
    category_map: Callable[[int], int] | Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """``model.detect`` output -> COCO results list (``json.dump``-able).

    Args:
        results: one dict per image: "rois" float [N, 4] (y1, x1, y2, x2) in
            original-image pixels, x2/y2 exclusive; "class_ids" int [N] (internal
            ids); "scores" float [N]; optional "masks" bool [H, W, N]; optional
            "keypoints" float [N, K, 3] (x, y, score) in COCO's pixel-index
            convention (written as [x, y, 1] triples, as torchvision does).
        coco_image_ids: the COCO image id of each result (same length).
        category_map: internal class id -> category id written out (a callable
            such as ``CocoDataset.coco_category_id``, or a dict); default identity.

    Returns:
        One dict per detection: image_id, category_id, bbox [x, y, w, h], score,
        segmentation (RLE, str counts) when the result has masks, keypoints
        (3K numbers) when it has keypoints.
    """
    if len(results) != len(coco_image_ids):
        raise ValueError(f"{len(results)} results but {len(coco_image_ids)} image ids")
    if category_map is None:
        def to_cat(c: int) -> int:
            return c
    elif callable(category_map):
        to_cat = category_map
    else:
        to_cat = category_map.__getitem__
    out: list[dict[str, Any]] = []
    for result, coco_id in zip(results, coco_image_ids):
        rois = np.asarray(result["rois"], dtype=np.float64).reshape(-1, 4)
        class_ids = np.asarray(result["class_ids"]).reshape(-1)
        scores = np.asarray(result["scores"], dtype=np.float64).reshape(-1)
        n = rois.shape[0]
        if class_ids.shape[0] != n or scores.shape[0] != n:
            raise ValueError(
                f"image {coco_id}: {n} rois, {class_ids.shape[0]} class_ids, {scores.shape[0]} scores"
            )
        rles = None
        masks = result.get("masks")
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or masks.shape[-1] != n:
                raise ValueError(f"image {coco_id}: masks {masks.shape} for {n} detections")
            rles = _encode_masks(masks) if n else []
        keypoints = result.get("keypoints")
        if keypoints is not None:
            keypoints = np.asarray(keypoints, np.float64)
            if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
                raise ValueError(f"image {coco_id}: keypoints {keypoints.shape} for {n} detections")
        for i in range(n):
            y1, x1, y2, x2 = rois[i]
            det = {
                "image_id": int(coco_id),
                "category_id": int(to_cat(int(class_ids[i]))),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(scores[i]),
            }
            if rles is not None:
                det["segmentation"] = rles[i]
            if keypoints is not None:
                kp = keypoints[i].copy()
                kp[:, 2] = 1.0
                det["keypoints"] = [float(v) for v in kp.reshape(-1)]
            out.append(det)
    return out


# ----- scoring ---------------------------------------------------------------------------
def per_class_ap(
    cocoeval: COCOeval, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """AP@[.5:.95] per category from an evaluated + accumulated ``COCOeval``.

    Area "all", the largest maxDets. Categories without ground truth (every
    precision entry -1) are left out, so the table has no NaN. Keys are category
    names (``class_names[category_id]`` when given, else the GT's names).
    """
    precision = cocoeval.eval["precision"]  # [T iou thresholds, R recalls, K cats, A areas, M maxDets]
    cat_ids = cocoeval.params.catIds
    cats = cocoeval.cocoGt.cats
    table: dict[str, float] = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        valid = p > -1
        if not valid.any():
            continue
        if class_names is not None and 0 <= cat_id < len(class_names):
            name = class_names[cat_id]
        else:
            name = cats.get(cat_id, {}).get("name", str(cat_id))
        if name in table:  # two categories with one name: keep both visible
            name = f"{name} ({cat_id})"
        table[name] = float(np.mean(p[valid]))
    return table


def _stats_dict(stats: np.ndarray, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    return {
        name: (math.nan if float(v) == -1.0 else float(v)) for name, v in zip(names, stats)
    }


def coco_metrics(
    coco_gt: COCO,
    results_list: list[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    class_names: Sequence[str] | None = None,
    per_class: bool = True,
    verbose: bool = False,
    max_detections: int = 100,
    keypoint_sigmas: Sequence[float] | None = None,
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score COCO-format detections against ``coco_gt``.

    Args:
        coco_gt: ground truth (e.g. from :func:`dataset_to_coco` or :func:`load_coco`).
        results_list: COCO results (e.g. from :func:`detections_to_coco`); not modified.
        iou_types: any of "bbox", "segm", "keypoints".
        class_names: names for the per-class table, indexed by category id.
        per_class: also return {"per_class": {iou_type: {name: AP}}}.
        verbose: let pycocotools print its progress and summary.
        max_detections: detections per image scored (COCO: 100). Datasets with
            more instances per image (nuclei) need more; the metric names stay
            "AR100"/"AP" but then mean "at ``max_detections``". Keypoint
            evaluation keeps pycocotools' 20.
        keypoint_sigmas: per-keypoint OKS sigmas (default COCO's 17; required
            for another number of keypoints).
        image_ids, category_ids: COCO ids to evaluate (default: every image /
            category of ``coco_gt``); a subset of an annotation file's images
            (``mrcnn evaluate --limit``) or of its categories (a dataset that
            loads only some classes) is scored on that subset only.

    Returns:
        {iou_type: {metric name: value}} for the 12 :data:`METRIC_NAMES`
        (the 10 :data:`KEYPOINT_METRIC_NAMES` for "keypoints"; NaN where
        undefined), plus "per_class" when asked. Keypoint AP is computed over
        the categories whose ground truth has keypoints.

    Empty ``results_list`` is scored as "nothing detected" (0 wherever ground
    truth exists) instead of crashing pycocotools' ``loadRes``. Only images of
    ``coco_gt`` are evaluated.
    """
    for t in iou_types:
        if t not in ALL_IOU_TYPES:
            raise ValueError(f"iou type {t!r}: choose from {ALL_IOU_TYPES}")
    if "keypoints" in iou_types and any("keypoints" not in r for r in results_list):
        raise ValueError("keypoint evaluation needs 'keypoints' in every result")
    if "segm" in iou_types and any("segmentation" not in r for r in results_list):
        raise ValueError("segm evaluation needs a 'segmentation' in every result (masks missing)")
    gt_image_ids = set(coco_gt.getImgIds()) if image_ids is None else {int(i) for i in image_ids}
    stray = {r["image_id"] for r in results_list} - gt_image_ids
    if stray:
        raise ValueError(f"results for image ids {sorted(stray)[:10]} that are not in the ground truth")

    metrics: dict[str, dict[str, Any]] = {}
    per_class_tables: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        with _quiet(verbose):
            if results_list:
                # loadRes adds ids/areas to the dicts it is given: hand it a copy.
                coco_dt = coco_gt.loadRes(copy.deepcopy(results_list))
            else:
                # loadRes indexes results[0]; an empty result set is a valid input.
                coco_dt = _coco_from_dict(
                    {
                        "images": list(coco_gt.dataset.get("images", [])),
                        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                        "annotations": [],
                    },
                    verbose,
                )
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = sorted(gt_image_ids)
            if category_ids is not None:
                evaluator.params.catIds = sorted(int(c) for c in category_ids)
            if iou_type == "keypoints":
                # OKS with the dataset's sigmas; pycocotools' keypoint maxDets (20).
                _keypoint_params(evaluator, coco_gt, keypoint_sigmas)
            else:
                evaluator.params.maxDets = [1, 10, int(max_detections)]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            if iou_type != "keypoints" and int(max_detections) != 100:
                # pycocotools' summarize() computes stats[0] (AP) at a hard-coded
                # maxDets=100; recompute it at the largest maxDets like the others.
                precision = evaluator.eval["precision"][:, :, :, 0, -1]
                valid = precision[precision > -1]
                evaluator.stats[0] = float(valid.mean()) if valid.size else -1.0
        names = KEYPOINT_METRIC_NAMES if iou_type == "keypoints" else METRIC_NAMES
        metrics[iou_type] = _stats_dict(evaluator.stats, names)
        if per_class:
            per_class_tables[iou_type] = per_class_ap(evaluator, class_names)
    if per_class:
        metrics["per_class"] = per_class_tables
    return metrics


def _keypoint_params(evaluator: COCOeval, coco_gt: COCO, sigmas: Sequence[float] | None) -> None:
    """Restrict to categories with keypoint ground truth and set the OKS sigmas."""
    anns = coco_gt.dataset.get("annotations", [])
    with_kps = [a for a in anns if a.get("keypoints")]
    if not with_kps:
        raise ValueError("keypoint evaluation: the ground truth has no keypoints")
    num_keypoints = len(with_kps[0]["keypoints"]) // 3
    evaluator.params.catIds = sorted({a["category_id"] for a in with_kps})
    if sigmas is None:
        if num_keypoints != len(COCO_KEYPOINT_SIGMAS):
            raise ValueError(
                f"keypoint evaluation with K={num_keypoints} keypoints needs per-keypoint OKS sigmas "
                "(keypoint_sigmas / dataset.keypoint_sigmas); COCO's 17 person sigmas do not apply"
            )
        sigmas = COCO_KEYPOINT_SIGMAS
    sigmas = np.asarray(sigmas, np.float64).reshape(-1)
    if sigmas.shape[0] != num_keypoints or np.any(sigmas <= 0):
        raise ValueError(f"keypoint sigmas {sigmas.tolist()}: need {num_keypoints} positive values")
    evaluator.params.kpt_oks_sigmas = sigmas


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _annotation_file(dataset: Any) -> str | None:
    """The dataset's own COCO annotation file, when it has one and the id maps to use it."""
    path = getattr(dataset, "annotation_file", None)
    if not path or not os.path.isfile(os.fspath(path)):
        return None
    if not (callable(getattr(dataset, "coco_image_id", None)) and callable(getattr(dataset, "coco_category_id", None))):
        return None
    return os.fspath(path)


def evaluate_dataset(
    detect_fn: DetectFn,
    dataset: Any,
    image_ids: Sequence[int] | None = None,
    batch_size: int = 1,
    progress: bool = True,
    json_out: str | os.PathLike | None = None,
    iou_types: Sequence[str] | None = None,
    verbose: bool = False,
    max_detections: int = 100,
    ground_truth: str = "auto",
    resume_key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``detect_fn`` over a dataset and compute COCO metrics, in bounded memory.

    Each image's detections are converted to COCO results (masks RLE-encoded)
    as soon as ``detect_fn`` returns them, and its full-size masks are dropped:
    memory grows with the compact RLEs only (measured by
    ``scripts/bench_eval_memory.py``: 200 images of 1000x1000 with 100
    detections each), not with images x detections x pixels. Ground truth is
    RLE-encoded per image as well (:func:`dataset_to_coco`).

    Args:
        detect_fn: list of uint8 [H, W, 3] images -> list of result dicts (see
            :func:`detections_to_coco`); typically ``model.detect``. It is always
            called with exactly ``batch_size`` images: a short last batch is
            padded with copies of its last image, whose results are discarded
            (a model built for a fixed batch size cannot take fewer).
        dataset: a prepared Dataset (ground truth from ``load_mask``, or its
            annotation file, see ``ground_truth``).
        image_ids: internal image ids to evaluate (default: all).
        batch_size: images per ``detect_fn`` call.
        progress: show a tqdm progress bar.
        json_out: write the detections there as a COCO results JSON. Ids are the
            dataset's source ids when it has ``coco_image_id`` /
            ``coco_category_id`` (so the file scores against the original
            annotation file), else internal ids. While detection runs, each
            image's results are appended to ``json_out + ".partial"`` (a header
            line, then one JSON line per image, fsynced), so a crash loses
            nothing already computed; at the end ``json_out`` is written
            atomically and the partial file removed.
        iou_types: any of "bbox", "segm", "keypoints"; None = what the results
            and the ground truth support: "bbox", "segm" when every result has
            masks, "keypoints" when every result has keypoints and the dataset
            has keypoints (scored with ``dataset.keypoint_sigmas``, see
            :func:`keypoint_sigmas_for`).
        verbose: let pycocotools print.
        max_detections: detections per image scored (see :func:`coco_metrics`).
        ground_truth: "auto" (default): the dataset's own COCO annotation file
            when it has one (``dataset.annotation_file`` with ``coco_image_id`` /
            ``coco_category_id``, as :class:`mrcnn.data.coco.CocoDataset`), so
            boxes are the annotation ``bbox`` and crowd regions the file's,
            restricted to the evaluated images and the dataset's categories;
            else ground truth built from ``load_mask``. "masks": always from
            ``load_mask``. Or a path to a COCO annotation file.
        resume_key: a string naming this evaluation (model weights, config,
            dataset; ``mrcnn evaluate`` derives it from them). When the partial
            file left by a killed run has the same key and image ids, its
            finished images are reused and only the rest are detected (a torn
            last line is dropped and that image detected again). None: a partial
            file is always started afresh.

    Returns:
        {"bbox": {metric: value}, "segm": {...}, "per_class": {"bbox": {name: AP}, "segm": {...}}}
    """
    from mrcnn.fileio import append_line, atomic_write

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    ids = [int(i) for i in (dataset.image_ids if image_ids is None else image_ids)]
    coco_ids = [_coco_image_id(dataset, i) for i in ids]
    gt_file = None
    if ground_truth == "auto":
        gt_file = _annotation_file(dataset)
    elif ground_truth != "masks":
        gt_file = os.fspath(ground_truth)
    to_cat = getattr(dataset, "coco_category_id", None)
    to_cat = to_cat if callable(to_cat) else None
    if gt_file is not None:
        coco_gt = load_coco(gt_file, verbose=verbose)
        missing = sorted(set(coco_ids) - set(coco_gt.getImgIds()))
        if missing:
            raise ValueError(f"{gt_file}: image ids {missing[:10]} of the dataset are not in the file")
        num_classes = len(getattr(dataset, "class_names", []) or [])
        category_ids = [to_cat(c) if to_cat else c for c in range(1, num_classes)] or None
    else:
        coco_gt = dataset_to_coco(dataset, ids, verbose=verbose)
        category_ids = None
    # Scored with the ground truth's category ids; written out with the source ids.
    score_cat = to_cat if gt_file is not None else None

    detections: list[dict[str, Any]] = []
    all_masks = all_keypoints = True
    partial = None if json_out is None else os.fspath(json_out) + ".partial"
    done: dict[int, dict[str, Any]] = {}
    if partial is not None:
        done = _resume_partial(partial, resume_key, coco_ids)
        if done and progress:
            print(f"[mrcnn] evaluate: reusing {len(done)} of {len(ids)} images from {partial}", flush=True)
    todo = [(i, cid) for i, cid in zip(ids, coco_ids) if cid not in done]
    for cid in coco_ids:
        if cid in done:
            detections.extend(done[cid]["results"])
            all_masks &= done[cid]["masks"]
            all_keypoints &= done[cid]["keypoints"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="evaluate", unit="img")
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            images = [dataset.load_image(i) for i, _ in batch]
            padded = images + [images[-1]] * (batch_size - len(images))
            results = list(detect_fn(padded))
            if len(results) != len(padded):
                raise ValueError(f"detect_fn returned {len(results)} results for {len(padded)} images")
            del images, padded
            for (_, cid), result in zip(batch, results[: len(batch)]):
                all_masks &= "masks" in result
                all_keypoints &= "keypoints" in result
                # The full-size masks die here; only their RLEs are kept.
                dets = detections_to_coco([result], [cid], score_cat)
                detections.extend(dets)
                if partial is not None:
                    append_line(partial, json.dumps({"image_id": cid, "results": dets, "masks": "masks" in result,
                                                     "keypoints": "keypoints" in result}))
            del results
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    has_kp_gt = any("keypoints" in a for a in coco_gt.dataset.get("annotations", []))
    if iou_types is None:
        iou_types = ["bbox"]
        if all_masks:
            iou_types.append("segm")
        if has_kp_gt and all_keypoints:
            iou_types.append("keypoints")
    iou_types = tuple(iou_types)
    if "segm" not in iou_types or "keypoints" not in iou_types:
        drop = {k for k, t in (("segmentation", "segm"), ("keypoints", "keypoints")) if t not in iou_types}
        scored = [{k: v for k, v in d.items() if k not in drop} for d in detections]
    else:
        scored = detections
    sigmas = None
    if "keypoints" in iou_types and has_kp_gt:
        kp = next(len(a["keypoints"]) // 3 for a in coco_gt.dataset["annotations"] if "keypoints" in a)
        sigmas = keypoint_sigmas_for(dataset, kp)
    metrics = coco_metrics(
        coco_gt, scored, iou_types,
        class_names=None if gt_file is not None else getattr(dataset, "class_names", None),
        verbose=verbose, max_detections=max_detections, keypoint_sigmas=sigmas,
        image_ids=coco_ids if gt_file is not None else None, category_ids=category_ids,
    )
    if json_out is not None:
        exported = scored
        if to_cat is not None and score_cat is None:
            exported = [{**d, "category_id": int(to_cat(int(d["category_id"])))} for d in scored]
        with atomic_write(json_out, "w") as f:
            json.dump(exported, f)
        if partial is not None and os.path.exists(partial):
            os.remove(partial)
    return metrics


def _resume_partial(path: str, key: str | None, coco_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The finished images of ``path`` (``json_out.partial``) when it belongs to this evaluation.

    Line 1 is a header with ``key`` and the image ids; then one line per finished image
    (``image_id``, its ``results`` as scored, whether it had masks/keypoints), appended and
    fsynced as each image finishes. A partial file of another evaluation (other key or image
    ids, or no key given) is started afresh; a torn last line (a kill while it was written)
    is cut off and that image detected again. Returns {image id: its line}.
    """
    header = json.dumps({"mrcnn_evaluate_partial": 1, "key": key, "image_ids": coco_ids})
    done: dict[int, dict[str, Any]] = {}
    good_bytes = 0
    if key is not None and os.path.exists(path):
        with open(path, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        if lines[0].decode("utf-8", "replace") == header and len(lines) > 1:
            good_bytes = len(lines[0]) + 1
            wanted = set(coco_ids)
            for line in lines[1:-1]:  # the last piece has no newline: empty, or a torn line
                try:
                    entry = json.loads(line)
                    cid = int(entry["image_id"])
                    entry["results"], entry["masks"], entry["keypoints"]  # noqa: B018 - all present
                except (ValueError, KeyError, TypeError):
                    break
                if cid not in wanted:
                    break
                done[cid] = entry
                good_bytes += len(line) + 1
    if good_bytes:
        with open(path, "r+b") as f:  # drop a torn tail so that appends start on a line of their own
            f.truncate(good_bytes)
    else:
        from mrcnn.fileio import write_text

        write_text(path, header + "\n")
    return done


def format_metrics(metrics: Mapping[str, Any], per_class: bool = True) -> str:
    """Readable table of :func:`coco_metrics` / :func:`evaluate_dataset` output."""
    types = [t for t in ALL_IOU_TYPES if t in metrics]
    lines = []
    if types:
        header = f"{'metric':<8}" + "".join(f"{t:>10}" for t in types)
        lines += [header, "-" * len(header)]
        rows = list(METRIC_NAMES)
        if "keypoints" in types:
            rows += [n for n in KEYPOINT_METRIC_NAMES if n not in rows]
        for name in rows:
            row = f"{name:<8}"
            for t in types:
                v = metrics[t].get(name, math.nan)
                row += f"{'n/a':>10}" if math.isnan(v) else f"{v:>10.4f}"
            lines.append(row)
    table = metrics.get("per_class") or {}
    ptypes = [t for t in ALL_IOU_TYPES if t in table]
    if per_class and ptypes:
        names = sorted({n for t in ptypes for n in table[t]})
        width = max([len("class")] + [len(n) for n in names])
        header = f"{'class':<{width}}" + "".join(f"{t + ' AP':>10}" for t in ptypes)
        lines += ["", header, "-" * len(header)]
        for n in names:
            row = f"{n:<{width}}"
            for t in ptypes:
                v = table[t].get(n)
                row += f"{'n/a':>10}" if v is None else f"{v:>10.4f}"
            lines.append(row)
    return "\n".join(lines)


# ----- one image at one IoU threshold (matterport's compute_ap and friends, mrcnn.utils) ----------
def box_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU [N1, N2] of boxes [N1, 4] and [N2, 4] (y1, x1, y2, x2), pixel-edge convention."""
    b1 = np.asarray(boxes1, np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, np.float64).reshape(-1, 4)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    hi = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    lo = np.maximum(b1[:, None, :2], b2[None, :, :2])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def mask_overlaps(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """IoU [N1, N2] of instance masks [H, W, N1] and [H, W, N2] (values > 0.5 are inside)."""
    n1, n2 = np.shape(masks1)[-1], np.shape(masks2)[-1]
    if n1 == 0 or n2 == 0:
        return np.zeros((n1, n2))
    m1 = (np.asarray(masks1) > 0.5).reshape(-1, n1).astype(np.float32)
    m2 = (np.asarray(masks2) > 0.5).reshape(-1, n2).astype(np.float32)
    inter = m1.T @ m2
    union = m1.sum(0)[:, None] + m2.sum(0)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_instances(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold: float = 0.5, score_threshold: float = 0.0):
    """Greedy matching by mask IoU, predictions in descending score order.

    All-zero rows of the boxes (padding) are dropped first. Each prediction takes the
    unmatched ground truth of its class with the highest IoU >= ``iou_threshold``
    (ground truths with IoU below ``score_threshold`` are not considered); each ground
    truth is matched at most once. Returns (gt_match [G] index of the matched prediction
    in score order or -1, pred_match [P] index of the matched ground truth or -1,
    overlaps [P, G] mask IoU in score order).
    """
    gt_keep = ~np.all(np.asarray(gt_boxes).reshape(-1, 4) == 0, axis=1)
    pred_keep = ~np.all(np.asarray(pred_boxes).reshape(-1, 4) == 0, axis=1)
    gt_class_ids = np.asarray(gt_class_ids)[: len(gt_keep)][gt_keep]
    gt_masks = np.asarray(gt_masks)[..., : len(gt_keep)][..., gt_keep]
    order = np.argsort(-np.asarray(pred_scores)[: len(pred_keep)][pred_keep], kind="stable")
    pred_class_ids = np.asarray(pred_class_ids)[: len(pred_keep)][pred_keep][order]
    pred_masks = np.asarray(pred_masks)[..., : len(pred_keep)][..., pred_keep][..., order]
    overlaps = mask_overlaps(pred_masks, gt_masks)
    gt_match = -np.ones(len(gt_class_ids))
    pred_match = -np.ones(len(pred_class_ids))
    for i in range(len(pred_class_ids)):
        for j in np.argsort(-overlaps[i], kind="stable"):
            if overlaps[i, j] < max(iou_threshold, score_threshold):
                break
            if gt_match[j] < 0 and pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j], pred_match[i] = i, j
                break
    return gt_match, pred_match, overlaps


def average_precision(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
                      iou_threshold: float = 0.5):
    """Mask AP of one image at ``iou_threshold`` (VOC all-point interpolation).

    Returns (AP, precisions, recalls, overlaps): the precision/recall curve padded with
    (0, 0) in front and (0, 1) at the end, as matterport's ``compute_ap``.
    """
    gt_match, pred_match, overlaps = match_instances(gt_boxes, gt_class_ids, gt_masks, pred_boxes,
                                                     pred_class_ids, pred_scores, pred_masks, iou_threshold)
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    recalls = hits.astype(np.float32) / max(len(gt_match), 1)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]  # the envelope: non-increasing
    steps = np.where(recalls[:-1] != recalls[1:])[0] + 1
    ap = float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))
    return ap, precisions, recalls, overlaps


def box_recall(pred_boxes, gt_boxes, iou: float):
    """(Fraction of ground-truth boxes that some prediction overlaps by >= ``iou``, indices of
    those predictions): each prediction counts for its best-overlapping ground truth."""
    overlaps = box_overlaps(pred_boxes, gt_boxes)
    if overlaps.size == 0:
        return 0.0, np.zeros((0,), np.int64)
    best = overlaps.max(axis=1)
    positive = np.where(best >= iou)[0]
    return len(set(overlaps.argmax(axis=1)[positive])) / overlaps.shape[1], positive
