"""``Config.JIT_COMPILE``: the XLA-compiled training step equals the plain one, compiled once.

Sampling is random (anchors, RoIs) and XLA draws other random numbers than the TF
kernels, so the equality test takes samples large enough to hold every candidate
(2048 anchor slots for the 1023 anchors of a 64 x 64 canvas, half of them allowed
positive; 512 RoI slots, 128 of them positive, for 100 proposals + 6 GT boxes): the chosen set, hence every
loss, is then the same whatever the random order.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import MaskRCNN
from mrcnn.data.pipeline import build_dataset
from samples.shapes.shapes import ShapesDataset

DETERMINISTIC = {
    "IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64, "TRAIN_PADDING": "square",
    "RPN_TRAIN_ANCHORS_PER_IMAGE": 2048, "TRAIN_ROIS_PER_IMAGE": 512,
    "POST_NMS_ROIS_TRAINING": 100, "WARMUP_STEPS": 0,
    # Fewer ops to trace and compile than group norm (the test's time is XLA's compile).
    "BACKBONE_NORM": "frozen_bn", "MASK_HEAD_NUM_CONVS": 1,
    # The plain step with the same RoIAlign arithmetic: the custom op sums its
    # gradients in another order (see docs/distributed.md, "XLA", for that comparison).
    "ROI_ALIGN_IMPLEMENTATION": "gather",
}


def _batches(config_class, count: int, size: int = 64) -> tf.data.Dataset:
    """``count`` fixed batches of 2 shapes images (size x size canvas), in order."""
    dataset = ShapesDataset()
    dataset.load_shapes(2 * count, height=size, width=size, seed=7)
    config = config_class(**{**DETERMINISTIC, "IMAGE_MIN_DIM": size, "IMAGE_MAX_DIM": size})
    batches = list(build_dataset(dataset, config, training=False, batch_size=2))
    stacked = {k: tf.stack([b[k] for b in batches]) for k in batches[0]}
    return tf.data.Dataset.from_tensor_slices(stacked)


class _StepLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in logs.items()})


def _train(config, initial, data, steps):
    model = MaskRCNN(config)
    model.set_weights(initial)
    model.compile()
    logs = _StepLogs()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[logs])
    return model, logs.steps


@pytest.mark.slow  # most of its time is XLA compiling the training step
def test_xla_step_equals_plain_step_and_compiles_once(tiny_config):
    plain_config = tiny_config(**DETERMINISTIC)
    xla_config = tiny_config(**DETERMINISTIC, JIT_COMPILE=True)
    data = _batches(tiny_config, 3)
    keras.utils.set_random_seed(0)
    initial = MaskRCNN(plain_config).get_weights()

    plain, plain_steps = _train(plain_config, initial, data, 3)
    xla, xla_steps = _train(xla_config, initial, data, 3)
    assert xla.jit_compile and not plain.jit_compile

    # Losses of each of the three steps (Keras logs the running mean of the epoch).
    assert len(plain_steps) == len(xla_steps) == 3
    for want, got in zip(plain_steps, xla_steps):
        assert want.keys() == got.keys() and {"mask_loss", "rpn_class_loss"} <= want.keys()
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, want, got)
    assert plain_steps[0]["mask_loss"] > 0.1 and plain_steps[0]["box_loss"] > 0.01

    # The updated weights: within 1e-4 of the largest weight (tests/test_multiworker.py's
    # measure; zero-initialised biases and norm betas hold ~1e-3 after three steps, so a
    # tensor's own scale would measure float32 noise of their gradients instead).
    plain_w, xla_w = plain.get_weights(), xla.get_weights()
    scale = max(float(np.max(np.abs(w))) for w in plain_w)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(xla_w, plain_w))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(plain_w, initial))
    assert diff <= 1e-4 * scale, (diff, scale)
    assert moved > 1e-3 * scale and diff < 1e-3 * moved, (diff, moved)  # the steps trained, alike

    # One trace of the step = one XLA compile: every step had the first step's shapes. A
    # tf.function reuses a trace only for inputs of its exact shapes (the first trace is
    # fully static), so a batch of another shape would have traced (and compiled) again.
    assert xla.train_step_traces == 1
    xla.fit(data.repeat(), epochs=1, steps_per_epoch=2, verbose=0)
    assert xla.train_step_traces == 1
    # What the count guards against, shown on the plain step (tracing is the same with or
    # without XLA; under XLA each trace is a compile): a batch of another canvas traces anew.
    assert plain.train_step_traces == 1
    plain.fit(_batches(tiny_config, 1, size=96), epochs=1, steps_per_epoch=1, verbose=0)
    assert plain.train_step_traces == 2


def test_jit_compile_configuration_errors(tiny_config):
    with pytest.raises(ValueError, match=r"Config\.TRAIN_PADDING='batch'.*fixed training canvas.*TRAIN_CROP_SIZE"):
        tiny_config(JIT_COMPILE=True).validate()
    with pytest.raises(ValueError, match=r"Config\.ROI_ALIGN_IMPLEMENTATION='custom'.*'gather' or 'auto'"):
        tiny_config(JIT_COMPILE=True, TRAIN_PADDING="square", ROI_ALIGN_IMPLEMENTATION="custom").validate()
    with pytest.raises(ValueError, match=r"Config\.JIT_COMPILE=1"):
        tiny_config(JIT_COMPILE=1, TRAIN_PADDING="square").validate()
    tiny_config(JIT_COMPILE=True, TRAIN_CROP_SIZE=96).validate()  # a crop fixes the canvas too
    config = tiny_config(JIT_COMPILE=True, TRAIN_PADDING="square")
    assert config.roi_align_implementation() == "gather"
    assert tiny_config().roi_align_implementation() == "auto"
    with pytest.raises(ValueError, match=r"jit_compile=True\) needs Config\.JIT_COMPILE=True"):
        MaskRCNN(tiny_config()).compile(jit_compile=True)


def test_exports_of_a_jit_config_trace_the_plain_graph(tiny_config):
    from mrcnn.export.graph import export_config

    config = tiny_config(JIT_COMPILE=True, TRAIN_PADDING="square")
    assert export_config(config, "saved_model").JIT_COMPILE is False
    assert export_config(config, "saved_model").ROI_ALIGN_IMPLEMENTATION == "portable"
