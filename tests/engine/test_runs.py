"""mrcnn.engine.runs: --set parsing, configs of a run, the AP-vs-time curve with the budget paused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset
from mrcnn.engine.callbacks import TimeBudget
from mrcnn.engine.runs import MetricCurve, find_run_config, json_ready, make_config, parse_set


class RunConfig(Config):
    NAME = "run_test"
    NUM_CLASSES = 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64


def test_parse_set_and_make_config(tmp_path):
    values = parse_set(["BACKBONE='resnet34'", "IMAGES_PER_GPU=4", "NAME=plain", "IMAGE_MIN_DIM=(48, 64)"])
    assert values == {"BACKBONE": "resnet34", "IMAGES_PER_GPU": 4, "NAME": "plain", "IMAGE_MIN_DIM": (48, 64)}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_set(["BACKBONE"])
    saved = tmp_path / "run" / "config.json"
    saved.parent.mkdir()
    saved.write_text(RunConfig(FPN_CHANNELS=32).to_json())
    config = make_config(RunConfig, {"IMAGES_PER_GPU": 3}, saved)
    assert type(config) is RunConfig and config.FPN_CHANNELS == 32 and config.IMAGES_PER_GPU == 3
    with pytest.raises(ValueError, match="NOT_A_FIELD"):
        make_config(RunConfig, {"NOT_A_FIELD": 1})
    # train writes config.json beside the run; weights live there or in a subfolder.
    (saved.parent / "checkpoints").mkdir()
    assert find_run_config(saved.parent / "final.weights.h5") == saved
    assert find_run_config(saved.parent / "checkpoints" / "epoch_001.weights.h5") == saved
    assert find_run_config(tmp_path / "elsewhere.weights.h5") is None
    assert json_ready({"a": float("nan"), "b": [1.0, float("nan")]}) == {"a": None, "b": [1.0, None]}


class Rects(Dataset):
    def __init__(self):
        super().__init__()
        self.add_class("r", 1, "rect")
        for i in range(3):
            self.add_image("r", image_id=i, path=None)
        self.prepare()

    def load_image(self, image_id):
        return np.zeros((40, 50, 3), np.uint8)

    def load_mask(self, image_id):
        m = np.zeros((40, 50, 1), bool)
        m[5 + image_id : 25, 10 : 30 + image_id] = True
        return m, np.ones(1, np.int32)


class FakeClock:
    """``time.monotonic`` for the budget and the curve: advances only when told to."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


class Oracle:
    """A stand-in model whose detect() returns the ground truth and takes 0.3 s of the fake clock a call."""

    def __init__(self, dataset, clock):
        self.dataset = dataset
        self.clock = clock
        self.calls = 0

    def detect(self, images, batch_size=None, **kwargs):
        self.clock.now += 0.3
        out = []
        for _ in images:
            masks, _ = self.dataset.load_mask(self.calls % 3)
            rows, cols = np.flatnonzero(masks.any(1)[:, 0]), np.flatnonzero(masks.any(0)[:, 0])
            out.append({"rois": np.array([[rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]], np.float32),
                        "class_ids": np.array([1]), "scores": np.array([0.9], np.float32), "masks": masks})
            self.calls += 1
        return out


def test_metric_curve_records_ap_against_minutes_and_pauses_the_budget(tmp_path, monkeypatch):
    """The curve's points are at the training minutes of the budget, and the evaluation's own time
    (3 detect calls of 0.3 s on a fake clock: no real time is measured) is excluded from the budget."""
    clock = FakeClock()
    monkeypatch.setattr("mrcnn.engine.callbacks.time", clock)
    monkeypatch.setattr("mrcnn.engine.runs.time", clock)
    ds = Rects()
    budget = TimeBudget(minutes=10.0, verbose=False)
    budget.on_train_begin()
    clock.now += 90.0  # 1.5 minutes of training
    curve = MetricCurve(ds, tmp_path / "curve.json", budget, batch_size=1, every_n_epochs=2)
    curve.set_model(Oracle(ds, clock))
    for _ in range(5):
        curve.on_train_batch_end(0)
    logs = {}
    curve.on_epoch_end(0, logs)  # not an evaluation epoch
    assert not curve.points and not logs
    curve.on_epoch_end(1, logs)
    assert clock.now == pytest.approx(1000.0 + 90.0 + 0.9)
    assert budget.elapsed_minutes() == pytest.approx(1.5)  # the 0.9 s of evaluation not counted
    point = curve.points[0]
    assert point["step"] == 5 and point["eval_seconds"] == pytest.approx(0.9)
    assert point["minutes"] == pytest.approx(1.5)
    assert point["segm_AP50"] == pytest.approx(1.0) and point["bbox_AP"] == pytest.approx(1.0)
    assert logs["val_segm_AP50"] == pytest.approx(1.0)
    written = json.loads((tmp_path / "curve.json").read_text())
    assert written["points"] == curve.points and written["images"] == [0, 1, 2]
