"""The mrcnn command line: every command the README documents, run through mrcnn.cli.main
(train, detect, evaluate on shapes / COCO files / module:function, export, convert-weights,
build-ops, --version), plus a first run in a subprocess that must print no start-up noise."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TinyConfig
from pycocotools import mask as mask_utils
from skimage import draw, io

from mrcnn.cli import main, mask_to_polygons, mask_to_rle, output_names
from mrcnn.data.synthetic import CLASS_NAMES, ShapesDataset

ROOT = Path(__file__).resolve().parents[1]


class KeypointOnlyConfig(TinyConfig):
    """The paper's keypoint-only model: no mask head, 7 keypoints (the stick figures')."""

    NAME = "kp_only"
    NUM_CLASSES = 2
    CLASS_NAMES = ("BG", "person")
    MASK_HEAD = False
    NUM_KEYPOINTS = 7
    KEYPOINT_HEAD_CONV_CHANNELS = 16
    KEYPOINT_HEAD_NUM_CONVS = 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A config.json and weights shared by the tests below (random weights: `mrcnn train`
    itself is run in test_train_in_a_fresh_process_prints_no_startup_noise)."""
    from mrcnn.model import MaskRCNN

    tmp = tmp_path_factory.mktemp("cli")
    config = TinyConfig(CLASS_NAMES=CLASS_NAMES, STEPS_PER_EPOCH=2)
    config_path = tmp / "config.json"
    config_path.write_text(config.to_json())
    weights = tmp / "random.weights.h5"
    MaskRCNN(config).save_weights(str(weights))
    return SimpleNamespace(config=str(config_path), weights=str(weights), tmp=tmp)


def _images(folder: Path, names_shapes) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in names_shapes:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        io.imsave(path, rng.integers(0, 255, shape, dtype=np.uint8), check_contrast=False)
        paths.append(str(path))
    return paths


# ----- detect ---------------------------------------------------------------------------------
def test_detect_writes_unique_pngs_and_rle_masks(run, tmp_path):
    # Two inputs share the stem "img": both outputs must survive.
    images = _images(tmp_path, [("a/img.png", (100, 150, 3)), ("b/img.jpg", (64, 64)), ("c.png", (90, 80, 3))])
    out = tmp_path / "det"
    assert main(["detect", "--config", run.config, "--weights", run.weights, "--out", str(out),
                 "--min-score", "0.0", "--polygons", *images]) == 0
    assert sorted(os.listdir(out)) == ["c.png", "detections.json", "img-2.png", "img.png"]
    assert io.imread(out / "img.png").shape[:2] == (100, 150)
    assert io.imread(out / "img-2.png").shape[:2] == (64, 64)
    records = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in records] == images
    assert [r["output"] for r in records] == ["img.png", "img-2.png", "c.png"]
    detections = [(r, d) for r in records for d in r["detections"]]
    assert detections, "an untrained model still reports low-score detections at --min-score 0"
    for r, d in detections:
        assert d["class_name"] in CLASS_NAMES[1:] and 0 <= d["score"] <= 1
        y1, x1, y2, x2 = d["box_yxyx"]
        assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
        rle = d["segmentation"]
        assert rle["size"] == [r["height"], r["width"]] and isinstance(rle["counts"], str)
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert mask.shape == (r["height"], r["width"]) and int(mask.sum()) == d["mask_area"]
        assert isinstance(d["polygons"], list)


def test_rle_and_polygons_of_known_masks():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True  # 10 x 20 rectangle
    rle = mask_to_rle(mask)
    assert rle["size"] == [40, 60]
    back = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(back.astype(bool), mask)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 200
    (poly,) = mask_to_polygons(mask)
    xy = np.asarray(poly).reshape(-1, 2)
    # The outline runs along the pixel edges: x in [10, 30], y in [5, 15].
    assert xy[:, 0].min() == pytest.approx(10, abs=0.5) and xy[:, 0].max() == pytest.approx(30, abs=0.5)
    assert xy[:, 1].min() == pytest.approx(5, abs=0.5) and xy[:, 1].max() == pytest.approx(15, abs=0.5)
    # A disk touching the border, and two blobs: the polygons rasterise back to the masks.
    disk = np.zeros((50, 50), bool)
    disk[draw.disk((10, 25), 14, shape=disk.shape)] = True
    disk[35:45, 35:48] = True
    polys = mask_to_polygons(disk)
    assert len(polys) == 2
    rles = mask_utils.frPyObjects(polys, 50, 50)
    raster = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    iou = (raster & disk).sum() / (raster | disk).sum()
    assert iou > 0.93


def test_output_names():
    assert output_names(["x/a.png", "y/a.jpg", "a-2.png", "z/A.png", "b"]) == [
        "a.png", "a-2.png", "a-2-2.png", "A-3.png", "b.png"]


# ----- evaluate -------------------------------------------------------------------------------
def test_evaluate_on_shapes_writes_strict_json(tmp_path):
    """`mrcnn evaluate` of the trained shapes model (tests/fixtures/shapes_model) on 4 shapes
    images: strict JSON whose 12 stats per IoU type are pycocotools' own for the detections it
    wrote to --results-out against the images' masks, and a segm AP50 a trained model earns (a
    random or misaligned model, a wrong image set or a mislabelled metric would fail)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mrcnn.evaluate import METRIC_NAMES, dataset_to_coco
    from tests.test_evaluate import trained_shapes_model

    _, weights = trained_shapes_model(tmp_path)
    metrics_path, results = tmp_path / "m.json", tmp_path / "results.json"
    assert main(["evaluate", "--config", "mrcnn.data.synthetic:ShapesDemoConfig", "--weights", str(weights),
                 "--dataset", "shapes", "--val-images", "4", "--json-out", str(metrics_path),
                 "--results-out", str(results)]) == 0
    text = metrics_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert set(metrics) == {"bbox", "segm", "per_class"}
    val = ShapesDataset()
    val.load_shapes(4, seed=2)  # what --dataset shapes --val-images 4 evaluates
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(dataset_to_coco(val).dataset))
    gt = COCO(str(gt_file))
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(str(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        for name, stat in zip(METRIC_NAMES, ev.stats):
            want = None if stat == -1 else pytest.approx(float(stat), abs=1e-12)
            assert metrics[iou_type][name] == want, (iou_type, name)
    assert metrics["segm"]["AP50"] > 0.8, metrics["segm"]
    # Per-class AP by the dataset's class names, for each IoU type (the classes with ground truth).
    assert set(metrics["per_class"]) == {"bbox", "segm"}
    for table in metrics["per_class"].values():
        assert table and set(table) <= set(CLASS_NAMES[1:])
        assert all(v is None or 0.0 <= v <= 1.0 for v in table.values())


def _write_coco(folder: Path, count: int = 2) -> tuple[Path, Path]:
    """COCO instances JSON + image folder made from the shapes dataset (RLE segmentations)."""
    ds = ShapesDataset()
    ds.load_shapes(count, seed=5)
    image_dir = folder / "val2017"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in ds.image_ids:
        name = f"{i:012d}.png"
        io.imsave(image_dir / name, ds.load_image(i), check_contrast=False)
        images.append({"id": int(i) + 1, "file_name": name, "height": 128, "width": 128})
        masks, class_ids = ds.load_mask(i)
        for k in range(masks.shape[-1]):
            ys, xs = np.nonzero(masks[..., k])
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(i) + 1, "category_id": int(class_ids[k]),
                "segmentation": mask_to_rle(masks[..., k]), "area": int(masks[..., k].sum()), "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            })
    categories = [{"id": c, "name": n} for c, n in enumerate(CLASS_NAMES[1:], start=1)]
    ann = folder / "instances_val2017.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann, image_dir


def test_evaluate_coco_files_the_readme_command(run, tmp_path, capsys):
    # The README's command: no shapes flags; --images is a folder (it used to collide with
    # the shapes image count and fail with "not found: 100").
    ann, images = _write_coco(tmp_path)
    out = tmp_path / "coco_metrics.json"
    results = tmp_path / "results.json"
    assert main(["evaluate", "--config", run.config, "--weights", run.weights, "--dataset", "coco",
                 "--annotations", str(ann), "--images", f"{images}/", "--json-out", str(out),
                 "--results-out", str(results)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"bbox", "segm", "per_class"}
    assert all(isinstance(v, (float, int)) or v is None for v in metrics["bbox"].values())
    assert isinstance(json.loads(results.read_text()), list)
    capsys.readouterr()
    assert main(["evaluate", "--config", run.config, "--weights", run.weights, "--dataset", "coco",
                 "--annotations", str(ann), "--images", str(tmp_path / "missing")]) == 2
    assert "COCO image folder not found" in capsys.readouterr().err


def test_dataset_module_function_and_keypoint_only_model(tmp_path, monkeypatch, capsys):
    """--dataset module:function (imported from the working directory), and a model with
    MASK_HEAD=False: detect and evaluate work without masks."""
    (tmp_path / "figures_data.py").write_text(textwrap.dedent("""
        from samples.keypoints.keypoints import StickFigureDataset

        def figures(subset):
            ds = StickFigureDataset()
            ds.load_figures(2, seed=11 if subset == "train" else 12)
            return ds

        def broken(subset):
            return [subset]
    """))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    from mrcnn.model import MaskRCNN

    config = KeypointOnlyConfig(CLASS_NAMES=("BG", "person"))
    config_path = tmp_path / "kp.json"
    config_path.write_text(config.to_json())
    weights = tmp_path / "kp.weights.h5"
    MaskRCNN(config).save_weights(str(weights))

    metrics_path = tmp_path / "kp_metrics.json"
    assert main(["evaluate", "--config", str(config_path), "--weights", str(weights),
                 "--dataset", "figures_data:figures", "--json-out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"bbox", "keypoints", "per_class"} and "segm" not in metrics["per_class"]

    (image,) = _images(tmp_path, [("person.png", (96, 128, 3))])
    out = tmp_path / "kp_det"
    assert main(["detect", "--config", str(config_path), "--weights", str(weights), "--out", str(out),
                 "--min-score", "0.0", image]) == 0
    (record,) = json.loads((out / "detections.json").read_text())
    assert record["detections"]
    for d in record["detections"]:
        assert "segmentation" not in d and "mask_area" not in d
        assert np.asarray(d["keypoints"]).shape == (7, 3)

    capsys.readouterr()
    assert main(["evaluate", "--config", str(config_path), "--weights", str(weights),
                 "--dataset", "figures_data:broken"]) == 2
    assert "figures_data:broken('val') returned list, not a prepared mrcnn.Dataset" in capsys.readouterr().err


# ----- export, convert-weights, build-ops, --version --------------------------------------------
def test_export_and_its_errors(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--config", run.config, "--weights", run.weights, "--output", str(out)]) == 0
    assert (out / "1" / "saved_model.pb").is_file()
    capsys.readouterr()
    # Every failure is one line on stderr and exit status 2, never a traceback.
    assert main(["export", "--config", run.config, "--weights", run.weights, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrcnn export: error: ") and "exists" in err and "Traceback" not in err
    assert main(["export", "--config", run.config, "--weights", str(tmp_path / "none.h5"),
                 "--output", str(tmp_path / "e2")]) == 2
    assert "none.h5" in capsys.readouterr().err
    torn = tmp_path / "torn.weights.h5"
    torn.write_bytes(Path(run.weights).read_bytes()[:4096])  # a truncated weights file
    assert main(["export", "--config", run.config, "--weights", str(torn), "--output", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrcnn export: error: ") and len(err.strip().splitlines()) == 1


def test_convert_weights_from_a_detectron2_pickle(tmp_path):
    from tests.checkpoint.test_convert import (
        detectron2_from_torchvision,
        small_config,
        torchvision_state_dict,
    )

    state = detectron2_from_torchvision(torchvision_state_dict(np.random.default_rng(3)))
    checkpoint = tmp_path / "model_final.pkl"
    with open(checkpoint, "wb") as f:
        pickle.dump({"model": state}, f, protocol=2)
    values = json.loads(small_config("detectron2").to_json())
    values["ROI_ALIGN_SAMPLING_RATIO"] = 2
    config = tmp_path / "d2.json"
    config.write_text(json.dumps(values))
    out = tmp_path / "d2.weights.h5"
    assert main(["convert-weights", "--from", "detectron2", str(checkpoint), "--out", str(out),
                 "--config", str(config)]) == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_build_ops(capsys, tmp_path, monkeypatch):
    assert main(["build-ops"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("custom RoIAlign op library: ") and Path(line.split(": ", 1)[1]).is_file()
    # No compiler: a clear error, exit status 2.
    monkeypatch.setenv("MRCNN_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert main(["build-ops", "--force"]) == 2
    assert "no C++ compiler found" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    import mrcnn

    assert out.startswith(f"mrcnn {mrcnn.__version__} (TensorFlow ") and "Keras" in out


def test_errors_are_clear(tmp_path, run, capsys):
    (image,) = _images(tmp_path, [("x.png", (32, 32, 3))])
    assert main(["detect", "--config", run.config, "--weights", str(tmp_path / "nope.h5"),
                 "--out", str(tmp_path), image]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert main(["detect", "--config", run.config, "--weights", run.weights, "--out", str(tmp_path),
                 str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["detect", "--config", "no_such_module:Cfg", "--weights", "w", "--out", "o", "x.png"]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err
    assert main(["evaluate", "--config", run.config, "--weights", "w", "--dataset", "coco"]) == 2
    assert "--annotations" in capsys.readouterr().err


# ----- a quiet first run ---------------------------------------------------------------------
NOISE = ("cuInit", "absl::InitializeLog", "cudart_stub", "oneDNN custom operations", "cpu_feature_guard",
         "shuffle=True", "WARNING:absl", "Could not find cuda drivers")


@pytest.mark.slow
def test_train_in_a_fresh_process_prints_no_startup_noise(tmp_path):
    """`python -m mrcnn train` and `build-ops` in fresh processes, as a newcomer runs them (no
    TF_CPP_MIN_LOG_LEVEL set): training writes its files, and stderr has none of
    TensorFlow's CUDA/absl start-up lines and no Keras shuffle=True warning."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    config = tmp_path / "config.json"
    config.write_text(TinyConfig(CLASS_NAMES=CLASS_NAMES, STEPS_PER_EPOCH=1).to_json())
    out = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "mrcnn", "train", "--config", str(config), "--dataset", "shapes",
         "--train-images", "2", "--val-images", "1", "--out", str(out), "--epochs", "1", "--check", "none"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "final.weights.h5").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["config_class"] == "conftest:TinyConfig" and saved["STEPS_PER_EPOCH"] == 1
    build = subprocess.run([sys.executable, "-m", "mrcnn", "build-ops"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    for proc in (train, build):
        noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
        assert noisy == []
    # The filter only drops what TF_CPP_MIN_LOG_LEVEL says: level 0 shows TF's start-up lines.
    env0 = dict(env, TF_CPP_MIN_LOG_LEVEL="0")
    shown = subprocess.run([sys.executable, "-c", "import mrcnn, tensorflow"], cwd=tmp_path, env=env0,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0
    assert any(re.match(r"I\d{4} ", line) for line in shown.stderr.splitlines()), shown.stderr


def test_json_ready_makes_strict_json():
    from mrcnn.cli import json_ready

    metrics = {"bbox": {"AP": np.float32(0.5), "APl": float("nan"), "AR": np.float64(np.inf)},
               "per_class": {1: np.array([0.25, np.nan])}, "steps": np.int64(7), "names": ("a", "b")}
    text = json.dumps(json_ready(metrics), allow_nan=False)
    assert json.loads(text) == {"bbox": {"AP": 0.5, "APl": None, "AR": None},
                                "per_class": {"1": [0.25, None]}, "steps": 7, "names": ["a", "b"]}



# ----- a first day: detect a user can trust, one-line errors, class names, data show -------------
def _parser_actions(*path):
    from mrcnn.cli import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("detect",), ("evaluate",), ("data", "show")])
def test_help_shows_every_default(path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = _parser_actions(*path)
    for action in parser._actions:
        if action.option_strings and action.help and action.default is not None and action.dest != "help":
            assert f"(default: {action.default})" in text, (action.dest, text)
    if path == ("detect",):
        assert "(default: 0.5)" in text and "(default: 128)" in text


def _truncated_jpeg(path: Path) -> str:
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_detect_folders_globs_bad_images_and_nothing_above_threshold(run, tmp_path, capsys):
    folder = tmp_path / "photos"
    _images(folder, [("a.png", (60, 70, 3)), ("c.png", (50, 40, 3))])
    bad = _truncated_jpeg(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    _images(tmp_path / "more", [("d.png", (30, 30, 3)), ("e.jpg", (30, 30, 3))])
    out = tmp_path / "det"
    capsys.readouterr()
    # A folder (its images, sorted) and a glob; the truncated JPEG is reported and skipped.
    code = main(["detect", "--config", run.config, "--weights", run.weights, "--out", str(out),
                 "--min-score", "0.999", str(folder), str(tmp_path / "more" / "*.png")])
    err = capsys.readouterr().err
    assert code == 1
    records = json.loads((out / "detections.json").read_text())
    assert [os.path.basename(r["image"]) for r in records] == ["a.png", "c.png", "d.png"]
    assert sorted(os.listdir(out)) == ["a.png", "c.png", "d.png", "detections.json"]
    assert f"skipped {bad}" in err and "truncated" in err
    # Random weights score below 0.999: each image says so with the best score it saw.
    found = re.findall(r"no detection at --min-score 0\.999; the best score was (0\.\d+) \((\w+)\)", err)
    assert len(found) == 3 and all(float(score) < 0.999 and name in CLASS_NAMES for score, name in found)
    assert all(r["detections"] == [] for r in records)
    # Nothing matches: one line, exit status 2.
    assert main(["detect", "--config", run.config, "--weights", run.weights, "--out", str(out),
                 str(tmp_path / "*.tif")]) == 2
    assert "no file matches" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    """The one error line on stderr (progress bars aside), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and re.match(r"mrcnn [a-z]+: error: ", lines[0]), err
    return lines[0]


def test_evaluate_truncated_jpeg_is_one_line(run, tmp_path, capsys):
    ann, images = _write_coco(tmp_path, count=2)
    doc = json.loads(ann.read_text())
    doc["images"][1]["file_name"] = "broken.jpg"
    _truncated_jpeg(images / "broken.jpg")
    doc["images"][1]["height"] = doc["images"][1]["width"] = 64
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != doc["images"][1]["id"]]
    ann.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["evaluate", "--config", run.config, "--weights", run.weights, "--dataset", "coco",
                 "--annotations", str(ann), "--images", str(images)]) == 2
    err = _one_line_error(capsys)
    assert "broken.jpg" in err and "image 1 (COCO id 2)" in err and "truncated" in err
    assert "fix or replace the file" in err


def test_coco_errors_are_one_line(run, tmp_path, capsys):
    ann, images = _write_coco(tmp_path, count=2)
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["category_id"] = 99
    bad_ann = tmp_path / "bad.json"
    bad_ann.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["evaluate", "--config", run.config, "--weights", run.weights, "--dataset", "coco",
                 "--annotations", str(bad_ann), "--images", str(images)]) == 2
    err = _one_line_error(capsys)
    assert "bad.json: annotation 1 (image id 1) has category_id 99" in err and "[1, 2, 3]" in err
    # A dataset with more classes than the config: said once, with what to set.
    two = tmp_path / "two.json"
    two.write_text(TinyConfig(NUM_CLASSES=2).to_json())
    assert main(["evaluate", "--config", str(two), "--weights", run.weights, "--dataset", "coco",
                 "--annotations", str(ann), "--images", str(images)]) == 2
    err = _one_line_error(capsys)
    assert "has 4 classes (BG + 3: 'square', 'circle', 'triangle')" in err and "NUM_CLASSES=2" in err
    assert "set NUM_CLASSES = 4" in err


def test_weights_of_another_class_count_name_both_counts(run, tmp_path, capsys):
    two = tmp_path / "two.json"
    two.write_text(TinyConfig(NUM_CLASSES=2).to_json())
    (image,) = _images(tmp_path, [("x.png", (32, 32, 3))])
    capsys.readouterr()
    assert main(["detect", "--config", str(two), "--weights", run.weights, "--out", str(tmp_path / "o"),
                 image]) == 2
    err = _one_line_error(capsys)
    assert "trained with NUM_CLASSES=4 but the config has NUM_CLASSES=2" in err
    assert f"--init coco:{run.weights}" in err


def test_data_show_with_a_config_file_importing_its_sibling(tmp_path, capsys, monkeypatch):
    """`--config file.py:Class` whose file imports a module beside it, run from another folder;
    `mrcnn data show` writes the samples after resize (96 -> 160 px) with their masks drawn."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "sizes.py").write_text("SIDE = 160\n")
    (project / "my_config.py").write_text(textwrap.dedent("""
        import sys
        sys.path.insert(0, {!r})
        from conftest import TinyConfig
        from sizes import SIDE

        class ShowConfig(TinyConfig):
            IMAGE_MIN_DIM = IMAGE_MAX_DIM = SIDE
            CLASS_NAMES = ("BG", "square", "circle", "triangle")
    """.format(str(ROOT / "tests"))))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "show"
    assert main(["data", "show", "--config", "project/my_config.py:ShowConfig", "--dataset", "shapes",
                 "--train-images", "4", "--val-images", "2", "--out", str(out), "--count", "3"]) == 0
    assert "wrote 3 train sample(s)" in capsys.readouterr().out
    files = sorted(os.listdir(out))
    assert files == ["sample_000.png", "sample_001.png", "sample_002.png"]
    ds = ShapesDataset()
    ds.load_shapes(4, seed=1)
    for name in files:
        picture = io.imread(out / name)
        assert picture.shape == (160, 160, 3)
        # Masks and boxes are drawn in saturated instance colours the shapes images never have.
        assert picture.reshape(-1, 3).tolist() != ds.load_image(0).reshape(-1, 3).tolist()
    # A sibling module that does not exist: one line naming the file.
    (project / "broken.py").write_text("import no_such_sibling\n")
    assert main(["data", "show", "--config", "project/broken.py:X", "--dataset", "shapes",
                 "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "broken.py" in err and "no_such_sibling" in err


@pytest.mark.slow
def test_train_on_coco_files_keeps_the_class_names(tmp_path, capsys):
    """`mrcnn train --dataset coco` with a config without CLASS_NAMES: the run's config.json
    has the dataset's names, and detect, the export's labels and the metrics use them."""
    from mrcnn.config import load_config
    from mrcnn.export.saved_model import class_names_for

    ann, images = _write_coco(tmp_path, count=2)
    doc = json.loads(ann.read_text())
    for cat, name in zip(doc["categories"], ("cell", "nucleus", "debris")):
        cat["name"] = name
    ann.write_text(json.dumps(doc))
    config = tmp_path / "config.json"
    config.write_text(TinyConfig(STEPS_PER_EPOCH=1, CHECKPOINT_MONITOR=None).to_json())
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--dataset", "coco", "--annotations", str(ann),
                 "--images", str(images), "--out", str(out), "--epochs", "1", "--check", "none"]) == 0
    saved = load_config(str(out / "config.json"))
    assert saved.CLASS_NAMES == ("BG", "cell", "nucleus", "debris")
    assert class_names_for(saved) == ["BG", "cell", "nucleus", "debris"]
    det = tmp_path / "det"
    assert main(["detect", "--config", str(out / "config.json"), "--weights", str(out / "final.weights.h5"),
                 "--out", str(det), "--min-score", "0", str(images)]) == 0
    names = {d["class_name"] for r in json.loads((det / "detections.json").read_text()) for d in r["detections"]}
    assert names and names <= {"cell", "nucleus", "debris"}
    metrics = tmp_path / "m.json"
    assert main(["evaluate", "--config", str(out / "config.json"), "--weights", str(out / "final.weights.h5"),
                 "--dataset", "coco", "--annotations", str(ann), "--images", str(images),
                 "--json-out", str(metrics)]) == 0
    assert set(json.loads(metrics.read_text())["per_class"]["bbox"]) <= {"cell", "nucleus", "debris"}
