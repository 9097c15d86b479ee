"""fit() plumbing: resuming with BackupAndRestore, checkpoints, the time budget, saving."""

import os

import keras
import numpy as np
import pytest

from mrcnn import MaskRCNN
from mrcnn.data.pipeline import build_dataset
from mrcnn.engine.callbacks import TimeBudget
from mrcnn.engine.training import WarmupStepDecay, default_callbacks
from samples.shapes.shapes import ShapesDataset


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")


@pytest.fixture(scope="module")
def shapes():
    ds = ShapesDataset()
    ds.load_shapes(4, seed=11)
    return ds


def test_fit_resumes_after_interruption(tmp_path, tiny_config, shapes):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    out = str(tmp_path / "run")
    model = MaskRCNN(config)
    model.compile()
    with pytest.raises(KeyboardInterrupt):
        model.fit(build_dataset(shapes, config, training=True), epochs=3, steps_per_epoch=2,
                  callbacks=[*default_callbacks(out, tensorboard=False), _Interrupt()], verbose=0)
    assert os.path.exists(os.path.join(out, "checkpoints", "epoch_001.weights.h5"))
    # A fresh process would build a new model: it resumes at epoch 2 with the saved step count.
    resumed = MaskRCNN(config)
    resumed.compile()
    history = resumed.fit(build_dataset(shapes, config, training=True), epochs=3, steps_per_epoch=2,
                          callbacks=default_callbacks(out, tensorboard=False), verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(resumed.optimizer.iterations.numpy()) == 6
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5", "epoch_003.weights.h5"]


def test_time_budget_stops_training(tiny_config, shapes):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    model = MaskRCNN(config)
    model.compile()
    budget = TimeBudget(minutes=0.0, verbose=False)
    history = model.fit(build_dataset(shapes, config, training=True), epochs=50, steps_per_epoch=2,
                        callbacks=[budget], verbose=0)
    assert budget.stopped_early
    assert len(history.history["loss"]) == 1 and int(model.optimizer.iterations.numpy()) == 1


def test_weights_and_keras_file_round_trip(tmp_path, tiny_config):
    config = tiny_config(DETECTION_MIN_CONFIDENCE=0.0)
    model = MaskRCNN(config)
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    expected = model.detect([image])[0]
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    other = MaskRCNN(config)
    other.load_weights(path)
    got = other.detect([image])[0]
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5)
    np.testing.assert_allclose(got["rois"], expected["rois"], atol=1e-3)
    # The whole model as a .keras file (config travels in get_config).
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert loaded.config.NUM_CLASSES == config.NUM_CLASSES
    np.testing.assert_allclose(loaded.detect([image])[0]["scores"], expected["scores"], atol=1e-5)


def test_warmup_step_schedule_values():
    s = WarmupStepDecay(0.02, warmup_steps=100, warmup_factor=0.001, steps=(1000, 2000))
    assert float(s(0)) == pytest.approx(0.02 * 0.001)
    assert float(s(50)) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert float(s(100)) == pytest.approx(0.02)
    assert float(s(1500)) == pytest.approx(0.002)
    assert float(s(2500)) == pytest.approx(0.0002)
    assert WarmupStepDecay.from_config(s.get_config()).steps == (1000, 2000)


class _InjectMetric(keras.callbacks.Callback):
    """Stands in for CocoEvaluationCallback: puts a per-epoch value into the logs."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_segm_AP"] = self.values[epoch]


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path, tiny_config, shapes):
    from mrcnn.engine.callbacks import EpochCheckpoint

    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    model = MaskRCNN(config)
    model.compile()
    folder = tmp_path / "ckpt"
    model.fit(build_dataset(shapes, config, training=True), epochs=5, steps_per_epoch=1, verbose=0,
              callbacks=[_InjectMetric([0.1, 0.5, 0.2, 0.3, 0.25]),
                         EpochCheckpoint(folder, keep=2, monitor="val_segm_AP", mode="max")])
    assert sorted(os.listdir(folder)) == [
        "best.json", "epoch_002.weights.h5", "epoch_004.weights.h5", "epoch_005.weights.h5"]
    import json

    assert json.load(open(folder / "best.json"))["epoch"] == 2
