"""COCO evaluation: ground truth fed back scores 1.0, perturbations match pycocotools."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.data.dataset import Dataset
from mrcnn.evaluate import (
    METRIC_NAMES,
    coco_metrics,
    dataset_to_coco,
    detections_to_coco,
    evaluate_dataset,
    format_metrics,
    load_coco,
    per_class_ap,
)

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tiny_coco"
needs_tiny_coco = pytest.mark.skipif(
    not TINY_COCO.is_dir(), reason=f"real data not found at {TINY_COCO} (../shared/datasets)"
)


def _rect(h: int, w: int, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def _disk(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class HandDrawnDataset(Dataset):
    """5 images of 128x160 with rectangles/disks of all three COCO area ranges.

    Class 1 "square", class 2 "disk", class 3 "never" (no instance anywhere).
    Image 1 has a crowd region of class 1; image 3 has no instances; the top-left
    pixel of each image holds its id so that a fake detector can recognize it.
    """

    H, W = 128, 160

    def __init__(self) -> None:
        super().__init__()
        for cid, name in ((1, "square"), (2, "disk"), (3, "never")):
            self.add_class("hand", cid, name)
        h, w = self.H, self.W
        layouts = [
            # small (< 32^2 px), medium, large (> 96^2 px)
            [(_rect(h, w, 5, 5, 15, 20), 1), (_disk(h, w, 60, 60, 20), 2), (_rect(h, w, 20, 80, 125, 158), 1)],
            [(_rect(h, w, 10, 10, 50, 50), 1), (_disk(h, w, 90, 100, 4), 2), (-1, _rect(h, w, 60, 0, 128, 60))],
            [(_disk(h, w, 64, 80, 60), 2), (_rect(h, w, 2, 2, 8, 8), 1), (_disk(h, w, 20, 140, 10), 2)],
            [],
            [(_rect(h, w, 30, 30, 90, 100), 1), (_disk(h, w, 100, 130, 15), 2), (_rect(h, w, 0, 120, 12, 160), 2)],
        ]
        for i, layout in enumerate(layouts):
            masks, ids = [], []
            for a, b in layout:
                mask, cid = (b, a) if isinstance(a, int) else (a, b)
                masks.append(mask)
                ids.append(cid)
            self.add_image("hand", image_id=f"img{i}", path=None, masks=masks, ids=ids)
        self.prepare()

    def load_image(self, image_id: int) -> np.ndarray:
        image = np.full((self.H, self.W, 3), 100, dtype=np.uint8)
        image[0, 0, 0] = image_id
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        if not info["masks"]:
            return np.zeros((0, 0, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        return np.stack(info["masks"], -1), np.asarray(info["ids"], dtype=np.int32)


def gt_as_detections(dataset: Dataset, image_id: int) -> dict[str, np.ndarray]:
    """Non-crowd GT of one image in ``model.detect`` format, score 1."""
    masks, class_ids = dataset.load_mask(image_id)
    keep = class_ids > 0
    masks, class_ids = masks[..., keep], class_ids[keep]
    rois = []
    for k in range(masks.shape[-1]):
        ys, xs = np.nonzero(masks[..., k])
        rois.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])  # exclusive y2/x2
    return {
        "rois": np.asarray(rois, dtype=np.float32).reshape(-1, 4),
        "class_ids": class_ids.astype(np.int32),
        "scores": np.ones(len(class_ids), dtype=np.float32),
        "masks": masks if masks.shape[-1] else np.zeros((1, 1, 0), dtype=bool),
    }


def direct_pycocotools(gt_file: Path, res_file: Path, iou_type: str) -> np.ndarray:
    """The 12 stats straight from pycocotools on JSON files, -1 mapped to NaN."""
    gt = COCO(str(gt_file))
    dt = gt.loadRes(str(res_file))
    ev = COCOeval(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.where(ev.stats == -1, np.nan, ev.stats)


def assert_stats_equal(ours: dict[str, float], stats: np.ndarray) -> None:
    got = np.array([ours[n] for n in METRIC_NAMES])
    np.testing.assert_array_equal(got, stats)


@pytest.fixture(scope="module")
def hand() -> HandDrawnDataset:
    return HandDrawnDataset()


def test_dataset_to_coco_fields(hand: HandDrawnDataset) -> None:
    gt = dataset_to_coco(hand)
    assert [c["name"] for c in gt.dataset["categories"]] == ["square", "disk", "never"]
    assert [c["id"] for c in gt.dataset["categories"]] == [1, 2, 3]
    assert len(gt.dataset["images"]) == 5
    # The image without instances is present with its real size (from load_image).
    img3 = gt.imgs[3]
    assert (img3["height"], img3["width"]) == (128, 160)
    assert gt.getAnnIds(imgIds=[3]) == []
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[0]))
    assert anns[0]["bbox"] == [5.0, 5.0, 15.0, 10.0]  # [x, y, w, h] of rows 5..14, cols 5..19
    assert anns[0]["area"] == 150.0
    crowd = [a for a in gt.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == 1 and crowd[0]["image_id"] == 1
    assert min(a["id"] for a in gt.dataset["annotations"]) == 1
    json.dumps(gt.dataset)  # RLE counts are str


def test_detections_to_coco_conventions() -> None:
    mask = _rect(40, 60, 10, 20, 30, 50)
    result = {
        "rois": np.array([[10, 20, 30, 50]], np.float32),
        "class_ids": np.array([2], np.int32),
        "scores": np.array([0.75], np.float32),
        "masks": mask[..., None],
    }
    (det,) = detections_to_coco([result], [42], category_map={2: 18})
    assert det["image_id"] == 42 and det["category_id"] == 18
    assert det["bbox"] == [20.0, 10.0, 30.0, 20.0]
    assert det["score"] == 0.75
    assert isinstance(det["segmentation"]["counts"], str)
    assert det["segmentation"]["size"] == [40, 60]
    json.dumps(det)
    empty = {"rois": np.zeros((0, 4)), "class_ids": np.zeros((0,), np.int32),
             "scores": np.zeros((0,)), "masks": np.zeros((40, 60, 0), bool)}
    assert detections_to_coco([empty], [1]) == []


def test_gt_as_detections_scores_one(hand: HandDrawnDataset) -> None:
    gt = dataset_to_coco(hand)
    results = [gt_as_detections(hand, i) for i in hand.image_ids]
    dets = detections_to_coco(results, list(hand.image_ids))
    metrics = coco_metrics(gt, dets, class_names=hand.class_names)
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            if name in ("AR1",):  # images hold up to 3 objects: 1 detection cannot recall all
                continue
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name)
        # "never" has no GT: left out of the per-class table instead of NaN/-1.
        assert metrics["per_class"][iou_type] == {"square": 1.0, "disk": 1.0}


def _perturbed(dataset: Dataset) -> list[dict[str, np.ndarray]]:
    """Drop every other detection, shift boxes and masks of the rest by 3 px, vary scores."""
    out = []
    rng = np.random.default_rng(0)
    for i in dataset.image_ids:
        r = gt_as_detections(dataset, i)
        keep = np.arange(len(r["class_ids"])) % 2 == 0
        masks = np.roll(r["masks"][..., keep], 3, axis=1)
        out.append({
            "rois": r["rois"][keep] + np.array([0, 3, 0, 3], np.float32),
            "class_ids": r["class_ids"][keep],
            "scores": rng.uniform(0.1, 1.0, keep.sum()).astype(np.float32),
            "masks": masks,
        })
    return out


def test_perturbation_matches_pycocotools(hand: HandDrawnDataset, tmp_path: Path) -> None:
    gt = dataset_to_coco(hand)
    dets = detections_to_coco(_perturbed(hand), list(hand.image_ids))
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(gt.dataset))
    res_file.write_text(json.dumps(dets))
    before = json.dumps(dets)
    metrics = coco_metrics(gt, dets)
    assert json.dumps(dets) == before  # the caller's list is not modified
    for iou_type in ("bbox", "segm"):
        assert_stats_equal(metrics[iou_type], direct_pycocotools(gt_file, res_file, iou_type))
        assert 0.1 < metrics[iou_type]["AP"] < 0.9


def test_drop_half_hand_computed_ap(hand: HandDrawnDataset) -> None:
    # One class, 4 GT, keep 2 exact detections: precision 1 up to recall 0.5, then
    # nothing. COCO interpolates at recall 0, .01, ..., 1: 51 of 101 points are 1.
    gt = dataset_to_coco(hand, image_ids=[0, 1])  # squares: 2 in img0, 1 in img1 (+crowd)
    results = [gt_as_detections(hand, i) for i in (0, 1)]
    # keep only squares, then drop the large one of image 0 -> 2 of 3 squares found
    keep0 = results[0]["class_ids"] == 1
    keep0[2] = False
    r0 = {k: (v[..., keep0] if k == "masks" else v[keep0]) for k, v in results[0].items()}
    keep1 = results[1]["class_ids"] == 1
    r1 = {k: (v[..., keep1] if k == "masks" else v[keep1]) for k, v in results[1].items()}
    dets = detections_to_coco([r0, r1], [0, 1])
    metrics = coco_metrics(gt, dets, iou_types=("bbox",))
    # square: 2/3 recall -> 67 of 101 recall points at precision 1; disk: nothing -> 0.
    assert metrics["per_class"]["bbox"]["square"] == pytest.approx(67 / 101)
    assert metrics["per_class"]["bbox"]["disk"] == 0.0
    assert metrics["bbox"]["AP"] == pytest.approx((67 / 101 + 0.0) / 2)


def test_empty_results_are_zeros(hand: HandDrawnDataset) -> None:
    gt = dataset_to_coco(hand)
    metrics = coco_metrics(gt, [])
    for iou_type in ("bbox", "segm"):
        assert all(v == 0.0 for v in metrics[iou_type].values()), metrics[iou_type]
        assert metrics["per_class"][iou_type] == {"square": 0.0, "disk": 0.0}


def test_undefined_area_range_is_nan() -> None:
    class OneSmall(HandDrawnDataset):
        def load_mask(self, image_id):  # only the small square of image 0
            m = _rect(self.H, self.W, 5, 5, 15, 20)[..., None]
            return m, np.array([1], np.int32)

    ds = OneSmall()
    gt = dataset_to_coco(ds, image_ids=[0])
    metrics = coco_metrics(gt, detections_to_coco([gt_as_detections(ds, 0)], [0]))
    assert metrics["bbox"]["APs"] == pytest.approx(1.0)
    assert math.isnan(metrics["bbox"]["APm"]) and math.isnan(metrics["bbox"]["APl"])


def test_evaluate_dataset_batches_and_json(hand: HandDrawnDataset, tmp_path: Path) -> None:
    calls = []

    def detect(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        calls.append(len(images))
        return [gt_as_detections(hand, int(im[0, 0, 0])) for im in images]

    out = tmp_path / "dets.json"
    metrics = evaluate_dataset(detect, hand, batch_size=2, progress=False, json_out=out)
    assert calls == [2, 2, 2]  # 5 images, the last batch padded to the model's batch size
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert set(metrics["per_class"]) == {"bbox", "segm"}
    dets = json.loads(out.read_text())
    assert len(dets) == 11  # 12 instances minus 1 crowd; padding copies dropped
    text = format_metrics(metrics)
    assert "AP50" in text and "square" in text and "segm" in text


def test_per_class_ap_matches_precision_array(hand: HandDrawnDataset) -> None:
    gt = dataset_to_coco(hand)
    dets = detections_to_coco(_perturbed(hand), list(hand.image_ids))
    dt = gt.loadRes(json.loads(json.dumps(dets)))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    table = per_class_ap(ev)
    p = ev.eval["precision"][:, :, :, 0, -1]
    assert table["square"] == pytest.approx(p[:, :, 0].mean())
    assert table["disk"] == pytest.approx(p[:, :, 1].mean())
    assert "never" not in table


def test_callback_adds_logs_and_tensorboard(hand: HandDrawnDataset, tmp_path: Path) -> None:
    from mrcnn.engine.callbacks import CocoEvaluationCallback

    class FakeModel:
        def detect(self, images):
            return [gt_as_detections(hand, int(im[0, 0, 0])) for im in images]

    cb = CocoEvaluationCallback(hand, every_n_epochs=2, image_ids=[0, 1, 2], log_dir=tmp_path / "tb")
    cb.set_model(FakeModel())
    logs: dict = {"loss": 1.0}
    cb.on_epoch_end(0, logs)
    assert set(logs) == {"loss"}  # epoch 1 of every 2: skipped
    cb.on_epoch_end(1, logs)
    assert logs["val_bbox_AP"] == pytest.approx(1.0)
    assert logs["val_segm_AP50"] == pytest.approx(1.0)
    assert len([k for k in logs if k.startswith("val_")]) == 24
    cb.on_train_end()
    import tensorflow as tf

    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(str(events)):
        for v in event.summary.value:
            assert v.metadata.plugin_data.plugin_name == "scalars"
            scalars[v.tag] = (event.step, float(tf.make_ndarray(v.tensor)))
    assert scalars["val_bbox_AP"] == (1, pytest.approx(1.0))
    assert scalars["val_segm_AP75"] == (1, pytest.approx(1.0))


# ----- real data ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from mrcnn.data.coco import CocoDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-mask warnings are tested in test_coco.py
        yield CocoDataset(TINY_COCO / "annotations" / "instances_train2017.json", TINY_COCO / "train2017")


@needs_tiny_coco
def test_tiny_coco_gt_scores_one_and_json_matches_original(tiny, tmp_path: Path) -> None:
    order = iter(tiny.image_ids)

    def detect(images):  # evaluate_dataset walks the ids in order, batch_size=1
        return [gt_as_detections(tiny, next(order)) for _ in images]

    out = tmp_path / "dets.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate_dataset(detect, tiny, progress=False, json_out=out, ground_truth="masks")
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert all(v == pytest.approx(1.0) for v in metrics["per_class"][iou_type].values())
    # The written file uses the JSON's own image and category ids: scored against the
    # ORIGINAL annotation file its masks are exact (boxes are not: COCO's are float).
    original = load_coco(TINY_COCO / "annotations" / "instances_train2017.json")
    dets = json.loads(out.read_text())
    assert {d["category_id"] for d in dets} <= set(original.getCatIds())
    direct = coco_metrics(original, dets, iou_types=("segm",))
    assert direct["segm"]["AP"] == pytest.approx(1.0)


@needs_tiny_coco
def test_tiny_coco_scores_against_its_own_annotation_file(tiny, tmp_path: Path) -> None:
    """ground_truth="auto": a CocoDataset is scored against its annotation file (its float
    bboxes and crowd regions), the same numbers as scoring the written JSON with pycocotools."""
    ids = list(tiny.image_ids)[:20]
    order = iter(ids)

    def detect(images):
        return [gt_as_detections(tiny, next(order)) for _ in images]

    out = tmp_path / "dets.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate_dataset(detect, tiny, image_ids=ids, progress=False, json_out=out)
    original = load_coco(TINY_COCO / "annotations" / "instances_train2017.json")
    dets = json.loads(out.read_text())
    direct = coco_metrics(original, dets, image_ids=[tiny.coco_image_id(i) for i in ids],
                          category_ids=[tiny.coco_category_id(c) for c in range(1, len(tiny.class_names))])
    for iou_type in ("bbox", "segm"):
        for name, value in metrics[iou_type].items():
            assert value == pytest.approx(direct[iou_type][name], nan_ok=True), (iou_type, name)
    # Mask-derived boxes are not COCO's annotation boxes: box AP is below 1, mask AP is 1.
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert 0.5 < metrics["bbox"]["AP"] < 0.999
    assert not os.path.exists(str(out) + ".partial")


@needs_tiny_coco
def test_tiny_coco_drop_half_matches_pycocotools(tiny, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gt = dataset_to_coco(tiny)
        results = _perturbed(tiny)
    coco_ids = [tiny.coco_image_id(i) for i in tiny.image_ids]
    dets = detections_to_coco(results, coco_ids)
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(gt.dataset))
    res_file.write_text(json.dumps(dets))
    metrics = coco_metrics(gt, dets)
    for iou_type in ("bbox", "segm"):
        assert_stats_equal(metrics[iou_type], direct_pycocotools(gt_file, res_file, iou_type))
        assert metrics[iou_type]["AP"] < 0.6


def test_many_instances_per_image_and_max_detections():
    """More than 255 instances (pycocotools' uint8 area bug) and a maxDets above 100."""
    from mrcnn.data.dataset import Dataset
    from mrcnn.evaluate import coco_metrics, dataset_to_coco, detections_to_coco

    class Dots(Dataset):
        def load_mask(self, image_id):
            masks = np.zeros((170, 170, 289), bool)
            for k in range(289):
                r, c = divmod(k, 17)
                masks[r * 10 : r * 10 + 6, c * 10 : c * 10 + 6, k] = True
            return masks, np.ones(289, np.int32)

        def load_image(self, image_id):
            return np.zeros((170, 170, 3), np.uint8)

    ds = Dots()
    ds.add_class("dots", 1, "dot")
    ds.add_image("dots", image_id=0, path=None)
    ds.prepare()
    gt = dataset_to_coco(ds)
    assert len(gt.getAnnIds()) == 289
    masks, class_ids = ds.load_mask(0)
    boxes = np.array([[r * 10, c * 10, r * 10 + 6, c * 10 + 6] for r, c in (divmod(k, 17) for k in range(289))],
                     np.float32)
    result = {"rois": boxes, "class_ids": class_ids, "scores": np.linspace(1, 0.5, 289).astype(np.float32),
              "masks": masks}
    dets = detections_to_coco([result], [0])
    capped = coco_metrics(gt, dets, per_class=False)
    full = coco_metrics(gt, dets, per_class=False, max_detections=300)
    assert full["segm"]["AP"] == pytest.approx(1.0) and full["bbox"]["AP"] == pytest.approx(1.0)
    assert capped["segm"]["AR100"] == pytest.approx(100 / 289, abs=1e-3)


# ----- bounded memory ------------------------------------------------------------------------
def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval_memory.py"
    spec = importlib.util.spec_from_file_location("bench_eval_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def test_streaming_evaluation_equals_keeping_every_result(tmp_path: Path) -> None:
    bench, _ = _bench()
    dataset = bench.BoxesDataset(6, 160)
    results = []
    detect = bench.make_detector(dataset, 12)
    for i in dataset.image_ids:
        results.extend(detect([dataset.load_image(i)]))
    want = coco_metrics(dataset_to_coco(dataset), detections_to_coco(results, list(dataset.image_ids)))
    out = tmp_path / "dets.json"
    got = evaluate_dataset(bench.make_detector(dataset, 12), dataset, progress=False, json_out=out, batch_size=4)
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            assert got[iou_type][name] == pytest.approx(want[iou_type][name], nan_ok=True, abs=0), name
    assert got["segm"]["AP"] > 0.3
    assert len(json.loads(out.read_text())) == 6 * 12


def _dropping_detector(hand: HandDrawnDataset, seen: list[int], crash_at: int | None = None):
    """GT of each image (recognised by its top-left pixel) minus its last instance, so that AP < 1
    and a reused image with the wrong results would change the metrics; raises at call ``crash_at``."""
    def detect(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if crash_at is not None and len(seen) >= crash_at:
            raise RuntimeError("detector crashed")
        out = []
        for im in images:
            seen.append(int(im[0, 0, 0]))
            d = gt_as_detections(hand, seen[-1])
            keep = max(len(d["scores"]) - 1, 0)
            out.append({k: (v[..., :keep] if k == "masks" else v[:keep]) for k, v in d.items()})
        return out
    return detect


def test_a_rerun_reuses_the_partial_results_and_redoes_a_torn_last_line(hand: HandDrawnDataset, tmp_path: Path) -> None:
    """A crash after 3 images leaves 3 image lines in ``.partial``; the last is torn (cut inside, as
    a kill during its write would leave it). The rerun with the same ``resume_key`` detects only
    images 2-4 and its metrics and results file equal an uninterrupted run's; a rerun with another
    key (another model) reuses nothing."""
    want_seen: list[int] = []
    want = evaluate_dataset(_dropping_detector(hand, want_seen), hand, progress=False,
                            json_out=tmp_path / "want.json", resume_key="model-a")
    assert want_seen == [0, 1, 2, 3, 4] and 0.3 < want["segm"]["AP"] < 0.95

    out = tmp_path / "dets.json"
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="crashed"):
        evaluate_dataset(_dropping_detector(hand, seen, crash_at=3), hand, progress=False, json_out=out,
                         resume_key="model-a")
    assert not out.exists()
    partial = Path(str(out) + ".partial")
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 3 and [json.loads(line)["image_id"] for line in lines[1:]] == [0, 1, 2]
    partial.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # torn line 3

    seen.clear()
    got = evaluate_dataset(_dropping_detector(hand, seen), hand, progress=False, json_out=out,
                           resume_key="model-a")
    assert seen == [2, 3, 4]  # images 0 and 1 reused, the torn image 2 detected again
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            assert got[iou_type][name] == pytest.approx(want[iou_type][name], nan_ok=True, abs=0), name
    assert json.loads(out.read_text()) == json.loads((tmp_path / "want.json").read_text())
    assert not partial.exists()

    # Another evaluation's partial file is not reused.
    with pytest.raises(RuntimeError):
        evaluate_dataset(_dropping_detector(hand, [], crash_at=3), hand, progress=False, json_out=out,
                         resume_key="model-a")
    seen.clear()
    evaluate_dataset(_dropping_detector(hand, seen), hand, progress=False, json_out=out, resume_key="model-b")
    assert seen == [0, 1, 2, 3, 4]


def trained_shapes_model(folder: Path):
    """The trained shapes model (tests/shapes_model.py) and its weights as a .weights.h5 in folder."""
    from tests.shapes_model import load_shapes_model

    model = load_shapes_model()
    path = folder / "shapes.weights.h5"
    model.save_weights(str(path))
    return model, path


DYING_SHAPES = """
import os, signal
from mrcnn.data.synthetic import ShapesDataset


class DyingShapes(ShapesDataset):
    def load_image(self, image_id):
        if image_id == int(os.environ.get("KILL_AT_IMAGE", "-1")):
            print("KILLING at image", image_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().load_image(image_id)


def shapes(subset):
    ds = DyingShapes()
    ds.load_shapes(8, seed=2)
    return ds
"""


@pytest.mark.slow
def test_sigkill_during_mrcnn_evaluate_then_the_same_command_reuses_the_partial(tmp_path: Path) -> None:
    """`mrcnn evaluate` of the trained shapes model on 8 images (batches of 4) SIGKILLs itself when it
    loads image 5: the 4 images of the first batch are in ``.partial``. Its last line is then torn
    (cut inside). The same command reuses 3 images and its metrics and detections equal an in-process
    uninterrupted ``evaluate_dataset`` of the same model."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "dying_shapes.py").write_text(DYING_SHAPES)
    model, weights = trained_shapes_model(tmp_path)
    results, metrics_out = tmp_path / "results.json", tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "mrcnn", "evaluate", "--config", "mrcnn.data.synthetic:ShapesDemoConfig",
           "--weights", str(weights), "--dataset", "dying_shapes:shapes", "--results-out", str(results),
           "--json-out", str(metrics_out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{root}:{tmp_path}")

    killed = subprocess.run(cmd, cwd=tmp_path, env=dict(env, KILL_AT_IMAGE="5"), capture_output=True, text=True,
                            timeout=3600)  # only catches a hang
    assert killed.returncode == -9 and "KILLING at image 5" in killed.stdout, killed.stdout + killed.stderr
    partial = Path(str(results) + ".partial")
    lines = partial.read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in lines[1:]] == [0, 1, 2, 3] and not results.exists()
    partial.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "reusing 3 of 8 images" in rerun.stdout + rerun.stderr
    assert not partial.exists()

    import importlib.util

    spec = importlib.util.spec_from_file_location("dying_shapes", tmp_path / "dying_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    want = evaluate_dataset(model.detect, module.shapes("val"), batch_size=4, progress=False,
                            json_out=tmp_path / "want.json")
    got = json.loads(metrics_out.read_text())
    assert want["segm"]["AP50"] > 0.8  # a trained model: the metrics say something
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            value = want[iou_type][name]  # strict JSON: NaN (no such area range) is null
            assert got[iou_type][name] == (None if math.isnan(value) else pytest.approx(value, abs=1e-6)), name
    dets, want_dets = json.loads(results.read_text()), json.loads((tmp_path / "want.json").read_text())
    assert [d["image_id"] for d in dets] == [d["image_id"] for d in want_dets]
    assert [d["category_id"] for d in dets] == [d["category_id"] for d in want_dets]
    np.testing.assert_allclose([d["score"] for d in dets], [d["score"] for d in want_dets], atol=1e-5)
    np.testing.assert_allclose([d["bbox"] for d in dets], [d["bbox"] for d in want_dets], atol=0.05)


def test_evaluation_memory_does_not_grow_with_full_size_masks() -> None:
    """Peak RSS of a subprocess: 3 vs 9 images of 1000x1000 with 100 detections (100 MB of
    masks per image). Keeping the masks would add ~600 MB; streaming adds only RLEs.
    scripts/bench_eval_memory.py runs the full 200-image measurement."""
    import subprocess
    import sys

    _, script = _bench()

    def peak(n):
        out = subprocess.run([sys.executable, str(script), "--images", str(n), "--size", "1000", "--dets", "100"],
                             capture_output=True, text=True, timeout=3600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    small, large = peak(3), peak(9)
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 60, (small, large)
    assert large["peak_rss_mb"] < 1500
