"""The mrcnn command line, run in-process."""

import json
import os

import numpy as np
import pytest
from skimage import io

from mrcnn.cli import main


@pytest.fixture
def config_file(tmp_path, tiny_config):
    path = tmp_path / "config.json"
    path.write_text(tiny_config(CLASS_NAMES=("BG", "square", "circle", "triangle"),
                                STEPS_PER_EPOCH=2).to_json())
    return str(path)


def test_train_then_detect_then_evaluate(tmp_path, config_file, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--config", config_file, "--dataset", "shapes", "--train-images", "4",
                 "--val-images", "2", "--out", out, "--epochs", "1"]) == 0
    weights = os.path.join(out, "final.weights.h5")
    assert os.path.exists(weights) and os.path.exists(os.path.join(out, "config.json"))

    rng = np.random.default_rng(0)
    images = []
    for i, shape in enumerate([(100, 150, 3), (64, 64)]):
        path = str(tmp_path / f"img{i}.png")
        io.imsave(path, rng.integers(0, 255, shape, dtype=np.uint8), check_contrast=False)
        images.append(path)
    det_dir = str(tmp_path / "det")
    assert main(["detect", "--config", config_file, "--weights", weights, "--out", det_dir,
                 "--min-score", "0.0", *images]) == 0
    assert sorted(os.listdir(det_dir)) == ["detections.json", "img0.png", "img1.png"]
    assert io.imread(os.path.join(det_dir, "img0.png")).shape[:2] == (100, 150)
    records = json.load(open(os.path.join(det_dir, "detections.json")))
    assert [r["image"] for r in records] == images
    for d in records[0]["detections"]:
        assert d["class_name"] in ("square", "circle", "triangle") and 0 <= d["score"] <= 1

    metrics_path = str(tmp_path / "m.json")
    assert main(["evaluate", "--config", config_file, "--weights", weights, "--dataset", "shapes",
                 "--val-images", "2", "--json-out", metrics_path]) == 0
    metrics = json.load(open(metrics_path))
    assert set(metrics) == {"bbox", "segm"} and "AP50" in metrics["segm"]


def test_errors_are_clear(tmp_path, config_file, capsys):
    assert main(["detect", "--config", config_file, "--weights", str(tmp_path / "nope.h5"),
                 "--out", str(tmp_path), "x.png"]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert main(["detect", "--config", "no_such_module:Cfg", "--weights", "w", "--out", "o", "x.png"]) == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err
    assert main(["evaluate", "--config", config_file, "--weights", "w", "--dataset", "coco"]) == 2
    assert "--annotations" in capsys.readouterr().err
