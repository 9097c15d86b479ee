"""The graph forms an export builds are constructor values (issue #21 item 4): the Config
(``export_config``) selects them, the export builds a model from it, and nothing is
patched on a built model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.export.graph import export_config, model_for
from mrcnn.layers.pooler import RoIPooler
from mrcnn.layers.roi_heads import CLASS_PICKS
from mrcnn.model import MaskRCNN
from tests.conftest import TinyConfig


def test_gather_pooler_equals_the_stock_ops_one():
    rng = np.random.default_rng(0)
    features = [tf.constant(rng.normal(size=(2, 64 // s, 64 // s, 8)), tf.float32) for s in (4, 8, 16, 32)]
    y1x1 = rng.uniform(0, 40, (2, 30, 2))
    boxes = tf.constant(np.concatenate([y1x1, y1x1 + rng.uniform(1, 60, (2, 30, 2))], -1), tf.float32)
    portable = RoIPooler(7, implementation="portable")(features, boxes)
    gather = RoIPooler(7, implementation="gather")(features, boxes)
    assert gather.shape == (2, 30, 7, 7, 8)
    np.testing.assert_allclose(gather.numpy(), portable.numpy(), atol=2e-5)
    assert RoIPooler.from_config(RoIPooler(7, implementation="gather").get_config()).implementation == "gather"
    with pytest.raises(ValueError, match="sampling_ratio > 0"):
        RoIPooler(7, implementation="gather", sampling_ratio=0)
    with pytest.raises(ValueError, match="implementation must be one of"):
        RoIPooler(7, implementation="fast")


def test_class_picks_agree():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(2, 5, 4, 4, 3)), tf.float32)
    ids = tf.constant(rng.integers(0, 3, (2, 5)), tf.int32)
    batched, flat = CLASS_PICKS["batched"](logits, ids), CLASS_PICKS["flat"](logits, ids)
    np.testing.assert_array_equal(flat.numpy(), batched.numpy())
    np.testing.assert_array_equal(batched.numpy()[1, 3], logits.numpy()[1, 3, :, :, ids.numpy()[1, 3]])


@pytest.mark.parametrize("fmt, roi_align, pick", [
    ("saved_model", "portable", "batched"), ("onnx", "gather", "batched"),
    ("openvino", "gather", "flat"), ("litert", "gather", "batched"),
])
def test_each_format_builds_its_model_from_the_config(fmt, roi_align, pick):
    config = TinyConfig(ROI_ALIGN_IMPLEMENTATION="auto", MIXED_PRECISION="bfloat16")
    model = MaskRCNN(config)
    traced = model_for(model, fmt)
    assert traced is not model
    assert (traced.config.ROI_ALIGN_IMPLEMENTATION, traced.config.MASK_CLASS_PICK) == (roi_align, pick)
    assert traced.config.MIXED_PRECISION is None
    heads = traced.roi_heads
    assert {heads.box_pooler.implementation, heads.mask_pooler.implementation} == {roi_align}
    assert heads.get_config()["mask_class_pick"] == pick
    # The forms are in the layers' own code, not attributes set on an instance.
    assert "call" not in vars(heads.box_pooler) and "call" not in vars(heads.mask_pooler)
    # The caller's model is untouched; the export's has its weights.
    assert model.config.ROI_ALIGN_IMPLEMENTATION == "auto" and model.config.MASK_CLASS_PICK == "batched"
    for a, b in zip(model.get_weights(), traced.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model_for(traced, fmt) is traced  # already the format's model


def test_export_config_refuses_adaptive_sampling_and_bad_forms():
    with pytest.raises(ValueError, match="adaptive sampling"):
        export_config(TinyConfig(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="custom"), "onnx")
    with pytest.raises(ValueError, match="MASK_CLASS_PICK"):
        TinyConfig(MASK_CLASS_PICK="onehot")
    with pytest.raises(ValueError, match="ROI_ALIGN_SAMPLING_RATIO"):
        TinyConfig(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="gather")
