"""Nucleus sample: split, masks, training crops, bad files, and the command line end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.evaluate import METRIC_NAMES
from samples.nucleus import nucleus as N

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nuclei"
needs_data = pytest.mark.skipif(
    not (DATA / "stage1_train").is_dir(),
    reason=f"nuclei dataset not found at {DATA} (see ../shared/datasets/README.md)",
)

# A network small enough for CPU tests (same fields that train writes to config.json).
TINY = {
    "BACKBONE_BASE_WIDTH": 8, "GROUP_NORM_GROUPS": 4, "FPN_CHANNELS": 16, "FPN_FC_LAYERS_SIZE": 32,
    "MASK_HEAD_CONV_CHANNELS": 8, "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128, "TRAIN_CROP_SIZE": 64,
    "POST_NMS_ROIS_INFERENCE": 200, "DETECTION_MAX_INSTANCES": 50, "STEPS_PER_EPOCH": 4,
}


def tiny_args() -> list[str]:
    return [a for k, v in TINY.items() for a in ("--set", f"{k}={v!r}")]


def write_fake_dataset(root: Path, sizes: dict[str, tuple[int, int]], bad_mask: str | None = None) -> Path:
    """stage1_train/<id>/images/<id>.png (RGBA) + two instance masks per image."""
    stage = root / "stage1_train"
    rng = np.random.default_rng(0)
    for image_id, (h, w) in sizes.items():
        (stage / image_id / "images").mkdir(parents=True)
        (stage / image_id / "masks").mkdir()
        rgba = np.concatenate([rng.integers(0, 255, (h, w, 3)), np.full((h, w, 1), 255)], axis=2)
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(stage / image_id / "images" / f"{image_id}.png")
        for k, (y, x) in enumerate([(2, 2), (h // 2, w // 2)]):
            m = np.zeros((h, w), np.uint8)
            m[y : y + 5, x : x + 6] = 255
            Image.fromarray(m).save(stage / image_id / "masks" / f"m{k}.png")
        if image_id == bad_mask:
            Image.fromarray(np.zeros((h + 1, w), np.uint8)).save(stage / image_id / "masks" / "wrong.png")
    return stage


# ----- no real data needed --------------------------------------------------------------------
def test_config_uses_the_library_augmentation_and_optimizer():
    c = N.NucleusConfig()
    assert c.NUM_CLASSES == 2 and c.CLASS_NAMES == ("BG", "nucleus")
    assert min(c.RPN_ANCHOR_SCALES) <= 8 and c.MAX_GT_INSTANCES >= 375 and c.DETECTION_MAX_INSTANCES >= 375
    assert c.BACKBONE_NORM == "gn"
    # One config for training and inference: the pipeline crops 256 windows at the 512 scale.
    assert (c.IMAGE_MIN_DIM, c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE) == (512, 512, "pad32")
    assert c.TRAIN_CROP_SIZE == 256 and tuple(c.TRAIN_SCALE_JITTER) == (0.8, 1.25)
    assert c.OPTIMIZER == "adamw" and c.effective_lr() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="TRAIN_SCALE_JITTER"):
        N.NucleusConfig(TRAIN_SCALE_JITTER=(2.0, 1.0))
    # A saved config.json comes back as a NucleusConfig with its values.
    again = N.make_config(N.NucleusConfig, {"FPN_CHANNELS": 32})
    assert type(again) is N.NucleusConfig and again.FPN_CHANNELS == 32 and again.TRAIN_CROP_SIZE == 256


def test_samples_do_not_import_each_other():
    root = Path(N.__file__).resolve().parents[1]
    for path in root.glob("*/*.py"):
        text = path.read_text()
        others = {p.name for p in root.iterdir() if p.is_dir() and p.name != path.parent.name}
        for other in others:
            assert f"samples.{other}" not in text and f"from {other}" not in text, (path, other)
    assert len((root / "nucleus" / "nucleus.py").read_text().splitlines()) < 400


def test_split_rule_is_a_pure_function_of_the_id():
    ids = [f"{i:04x}" for i in range(2000)]
    splits = [N.split_of(i) for i in ids]
    assert splits == [N.split_of(i) for i in ids]
    share = splits.count("val") / len(ids)
    assert 0.07 < share < 0.13
    assert all(N.split_of(i, 0.0) == "train" for i in ids[:50])
    assert all(N.split_of(i, 1.0) == "val" for i in ids[:50])


def test_fake_dataset_layouts_and_wrong_size_mask(tmp_path):
    stage = write_fake_dataset(tmp_path, {"a": (20, 30), "b": (16, 16)}, bad_mask="b")
    for given in (tmp_path, stage):  # the stage1_train folder or its parent
        ds = N.NucleusDataset().load_nucleus(given, "all")
        assert [info["id"] for info in ds.image_info] == ["a", "b"]
    image = ds.load_image(0)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8  # alpha dropped
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (20, 30, 2) and masks.dtype == bool and masks.sum() == 60
    assert class_ids.tolist() == [1, 1] and class_ids.dtype == np.int32
    with pytest.raises(ValueError, match=r"wrong\.png") as info:
        ds.load_mask(1)
    assert "17" in str(info.value)  # the offending size is named too


def test_bad_dataset_dir_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        N.find_stage_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="images/<id>.png"):
        N.find_stage_dir(tmp_path / "empty")
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")
    for folder in (tmp_path / "nope", tmp_path / "empty"):
        with pytest.raises(SystemExit) as info:
            N.main(["evaluate", "--dataset", str(folder), "--weights", str(weights)])
        assert info.value.code == 2
        assert str(folder) in capsys.readouterr().err


# ----- real data ----------------------------------------------------------------------------------
@needs_data
def test_real_split_deterministic_and_disjoint():
    train = N.NucleusDataset().load_nucleus(DATA, "train")
    val = N.NucleusDataset().load_nucleus(DATA / "stage1_train", "val")
    everything = N.NucleusDataset().load_nucleus(DATA, "all")
    t = [i["id"] for i in train.image_info]
    v = [i["id"] for i in val.image_info]
    a = [i["id"] for i in everything.image_info]
    assert not set(t) & set(v)
    assert sorted(t + v) == a and len(a) == 572
    assert 0.05 < len(v) / len(a) < 0.15
    again = N.NucleusDataset().load_nucleus(DATA, "val")
    assert [i["id"] for i in again.image_info] == v


@needs_data
def test_real_masks_and_crops():
    ds = N.NucleusDataset().load_nucleus(DATA, "all", limit=2)
    for image_id in ds.image_ids:
        info = ds.image_info[image_id]
        image = ds.load_image(image_id)
        with Image.open(info["path"]) as im:
            rgba = np.asarray(im)
        np.testing.assert_array_equal(image, rgba[:, :, :3])
        masks, class_ids = ds.load_mask(image_id)
        n_files = len(list(Path(info["mask_dir"]).glob("*.png")))
        assert masks.shape == (*image.shape[:2], n_files) and masks.dtype == bool
        assert class_ids.shape == (n_files,) and set(class_ids.tolist()) == {1}
        assert masks.sum(axis=(0, 1)).min() > 0

    # Training batches: random 64 windows of the image at the 128 scale x jitter, through the
    # library's augmentation stage (tests/test_augment.py checks its geometry).
    from mrcnn.data.pipeline import build_dataset

    config = N.make_config(N.NucleusConfig, TINY)
    batch = next(iter(build_dataset(ds, config, training=True, seed=3)))
    assert batch["images"].shape == (2, 64, 64, 3)
    sizes = batch["image_sizes"].numpy()
    assert sizes.max() <= 64 and sizes.min() > 0
    boxes, ids = batch["gt_boxes"].numpy(), batch["gt_class_ids"].numpy()
    assert (ids > 0).sum() > 0 and set(np.unique(ids)) <= {0, 1}
    assert boxes.min() >= 0 and boxes.max() <= 64


@needs_data
def test_cli_evaluate_random_weights(tmp_path, capsys):
    """`nucleus.py evaluate` on 2 images: its detections are the model's (as many per image, the
    same scores) and its metrics are pycocotools' own for those detections against the images'
    masks, all 12 stats of both IoU types (wrong images, a dropped or extra detection, another
    max-detections cap or a mislabelled metric would change them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mrcnn.evaluate import dataset_to_coco

    config = N.make_config(N.NucleusConfig, TINY)
    model = N.build_model(config)
    weights = tmp_path / "random.weights.h5"
    model.save_weights(str(weights))
    out, results = tmp_path / "metrics.json", tmp_path / "results.json"
    result = N.main(["evaluate", "--dataset", str(DATA), "--weights", str(weights), "--limit", "2",
                     "--json-out", str(out), "--results-out", str(results), "--quiet", *tiny_args()])
    written = json.loads(out.read_text())
    assert result == written and set(written) == {"bbox", "segm"}
    assert "AP50" in capsys.readouterr().out

    ds = N.NucleusDataset().load_nucleus(DATA, "all", limit=2)
    dets = json.loads(results.read_text())
    for image_id in ds.image_ids:
        want = model.detect([ds.load_image(image_id)])[0]
        got = sorted((d["score"] for d in dets if d["image_id"] == image_id), reverse=True)
        assert len(got) == len(want["scores"]) > 0
        np.testing.assert_allclose(got, np.sort(want["scores"])[::-1], atol=1e-5)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(dataset_to_coco(ds).dataset))
    gt = COCO(str(gt_file))
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(str(results)), iou_type)
        ev.params.maxDets = [1, 10, config.DETECTION_MAX_INSTANCES]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        # summarize() takes AP at a hard-coded maxDets=100; at this cap it is the mean precision
        # at maxDets=50 (evaluate.coco_metrics' documented convention).
        precision = ev.eval["precision"][:, :, :, 0, -1]
        ev.stats[0] = precision[precision > -1].mean() if (precision > -1).any() else -1
        assert list(written[iou_type]) == list(METRIC_NAMES)
        for name, stat in zip(METRIC_NAMES, ev.stats):
            want = None if stat == -1 else float(stat)
            assert written[iou_type][name] == (want if want is None else pytest.approx(want, abs=1e-12)), name


@needs_data
def test_cli_train_stops_at_budget_then_evaluates(tmp_path):
    out = tmp_path / "run"
    budget = 0.25  # minutes; the stop logic is the same as for 30
    N.main(["train", "--dataset", str(DATA), "--out", str(out), "--max-minutes", str(budget),
            "--epochs", "100000", "--val-images", "2", "--eval-every-epochs", "1", *tiny_args()])
    assert (out / "final.weights.h5").is_file()
    assert (out / "config.json").is_file() and (out / "logs").is_dir()
    curve = json.loads((out / "ap_curve.json").read_text())
    assert len(curve["images"]) == 2
    points = curve["points"]
    assert points and all({"minutes", "step", "segm_AP50", "bbox_AP50"} <= set(p) for p in points)
    assert points[-1]["minutes"] >= budget  # stopped by the budget, not by the epochs
    # (That TimeBudget stops within one step of the budget is counted in steps, not minutes:
    # tests/engine/test_reliability_units.py::test_time_budget_stop_keeps_the_backup_and_the_same_call_resumes.)
    steps = [p["step"] for p in points]
    assert steps == sorted(steps)
    saved = json.loads((out / "config.json").read_text())
    assert saved["BACKBONE_BASE_WIDTH"] == 8

    # evaluate finds the run's config.json beside the weights.
    metrics = tmp_path / "m.json"
    N.main(["evaluate", "--dataset", str(DATA), "--subset", "val", "--limit", "1",
            "--weights", str(out / "final.weights.h5"), "--json-out", str(metrics), "--quiet"])
    assert set(json.loads(metrics.read_text())) == {"bbox", "segm"}
