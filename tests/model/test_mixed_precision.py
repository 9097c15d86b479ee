"""Config.MIXED_PRECISION: which layers compute in half precision, training with bfloat16,
float16 loss scaling, and float32 detections and exports whatever the policy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.data.pipeline import build_dataset
from mrcnn.data.synthetic import ShapesDataset
from mrcnn.engine.callbacks import NonFiniteGuard
from mrcnn.export import saved_model as export
from mrcnn.model import MaskRCNN
from tests.conftest import TinyConfig

# Samples large enough to take every candidate (as tests/test_distribute.py): one
# step's update is then a function of the weights and the batch alone.
EXACT = dict(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, RPN_TRAIN_ANCHORS_PER_IMAGE=2048, TRAIN_ROIS_PER_IMAGE=512,
             POST_NMS_ROIS_TRAINING=100, TRAIN_FLIP_PROB=0.0, WARMUP_STEPS=0, GRADIENT_CLIP_NORM=None,
             ROI_ALIGN_IMPLEMENTATION="portable")


def _exact_batch(config):
    ds = ShapesDataset()
    ds.load_shapes(2, height=64, width=64, seed=7)
    return next(iter(build_dataset(ds, config, training=False, batch_size=2)))


def _step(model, batch) -> list[np.ndarray]:
    """Weights after one fit step on ``batch``."""
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=1, verbose=0)
    return model.get_weights()


def test_bfloat16_compute_stages_and_float32_everything_else():
    keras.utils.set_random_seed(0)
    config = TinyConfig(MIXED_PRECISION="bfloat16", NUM_KEYPOINTS=3, KEYPOINT_HEAD_CONV_CHANNELS=16,
                        KEYPOINT_HEAD_NUM_CONVS=1)
    model = MaskRCNN(config)
    assert keras.config.dtype_policy().name == "float32"  # the construction scope is undone
    half = [model.backbone.stem.conv, model.backbone.stages[3][-1].conv2.norm, model.fpn.output_convs[0],
            model.rpn.head.conv, model.roi_heads.box_head.fc6, model.roi_heads.mask_head.logits,
            model.roi_heads.keypoint_head.deconv]
    for layer in half:
        assert layer.dtype_policy.name == "mixed_bfloat16", layer.path
        assert layer.compute_dtype == "bfloat16" and all(v.dtype == "float32" for v in layer.weights), layer.path
    for layer in (model, model.anchor_generator, model.rpn, model.rpn.box_coder, model.roi_heads,
                  model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert layer.dtype_policy.name == "float32", layer.name
    features = model.features(tf.zeros([1, 64, 64, 3]), None)
    assert {f.dtype for f in features} == {tf.bfloat16}
    logits, deltas = model.rpn.head(features)
    assert {t.dtype for t in logits + deltas} == {tf.float32}
    # RoIAlign samples float32 features: the pooler (a float32 layer) casts its inputs.
    rois = tf.constant([[[4.0, 4.0, 40.0, 40.0]]])
    pooled = model.roi_heads.box_pooler(features, rois)
    assert pooled.dtype == tf.float32
    class_logits, box_deltas = model.roi_heads.box_forward(features, rois)
    assert class_logits.dtype == box_deltas.dtype == tf.float32

    out = model({"images": tf.zeros([2, 128, 128, 3]), "image_sizes": tf.constant([[128, 128], [100, 90]])})
    floats = {k: v.dtype for k, v in out.items() if k not in ("class_ids", "num_detections")}
    assert set(floats.values()) == {tf.float32}, floats
    image = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    result = model.detect([image])[0]
    assert result["rois"].dtype == result["scores"].dtype == result["keypoints"].dtype == np.float32


def test_global_policy_does_not_leak_into_the_model():
    """A user's keras.config.set_dtype_policy() does not reach the coordinate stages, and
    MIXED_PRECISION=None keeps every stage float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = MaskRCNN(TinyConfig())
    finally:
        keras.config.set_dtype_policy(previous)
    policies = {layer.dtype_policy.name for layer in model._flatten_layers(include_self=True)}
    assert policies == {"float32"}


def test_float16_loss_scaling_unscales_gradients_and_skips_overflows():
    config32 = TinyConfig(**EXACT)
    config16 = TinyConfig(**EXACT, MIXED_PRECISION="float16")
    batch = _exact_batch(config32)
    keras.utils.set_random_seed(0)
    model32 = MaskRCNN(config32)
    initial = model32.get_weights()
    model16 = MaskRCNN(config16)
    model16.set_weights(initial)
    model32.compile(optimizer=keras.optimizers.SGD(0.01))
    model16.compile(optimizer=keras.optimizers.SGD(0.01))  # wrapped: float16 needs loss scaling
    assert not isinstance(model32.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model16.optimizer.initial_scale == 2.0**15
    # The runner's x1 non-finite guard, given by a user, becomes a real scaler of the same SGD.
    from mrcnn.engine.runner import guard_optimizer

    sgd = keras.optimizers.SGD(0.01)
    guarded = MaskRCNN(config16)
    guarded.compile(optimizer=guard_optimizer(sgd))
    assert guarded.optimizer.initial_scale == 2.0**15 and guarded.optimizer.inner_optimizer is sgd
    assert guarded.optimizer.dynamic_growth_steps < 2**31 - 1

    after32, after16 = _step(model32, batch), _step(model16, batch)
    update32 = np.concatenate([(a - b).ravel() for a, b in zip(after32, initial)])
    update16 = np.concatenate([(a - b).ravel() for a, b in zip(after16, initial)])
    # The applied update is the unscaled gradient's (not 2^15 times it), up to float16 noise.
    assert np.linalg.norm(update32) > 0
    ratio = np.linalg.norm(update16) / np.linalg.norm(update32)
    assert 0.95 < ratio < 1.05, ratio
    assert np.linalg.norm(update16 - update32) / np.linalg.norm(update32) < 0.05
    assert float(model16.optimizer.dynamic_scale) == 2.0**15  # no overflow, no growth yet

    # An overflowing scale: the step is skipped (weights and schedule untouched), the scale
    # halved, and the non-finite guard (a real loss scaler's business) does not stop training.
    model16.optimizer.dynamic_scale.assign(2.0**40)
    iterations = int(model16.optimizer.iterations)
    guard = NonFiniteGuard()
    model16.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=1, verbose=0,
                callbacks=[guard])
    assert float(model16.optimizer.dynamic_scale) == 2.0**39
    assert int(model16.optimizer.iterations) == iterations
    for a, b in zip(model16.get_weights(), after16):
        np.testing.assert_array_equal(a, b)
    assert not guard.halted


@pytest.mark.slow
def test_bfloat16_training_reaches_the_float32_loss(tmp_path):
    """200 steps on shapes: the last 100 steps' mean loss within 10 % of float32's; the
    bfloat16-trained weights export (float32 graph) and serve what a float32 model detects."""
    train = ShapesDataset()
    train.load_shapes(8, height=64, width=64, seed=3)  # few images: a steady descent, comparable between runs
    losses, models = {}, {}
    for policy in (None, "bfloat16"):
        config = TinyConfig(MIXED_PRECISION=policy, STEPS_PER_EPOCH=50, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
        keras.utils.set_random_seed(0)
        model = MaskRCNN(config)
        model.compile()
        history = model.fit(build_dataset(train, config, training=True, seed=0), epochs=4,
                            steps_per_epoch=50, verbose=0)
        losses[policy] = history.history["loss"]
        models[policy] = model
    print("mean loss per 50 steps, float32:", np.round(losses[None], 4), "bfloat16:",
          np.round(losses["bfloat16"], 4))
    # The mean of the last 100 steps: two runs diverge step by step (rounding, then other
    # RoI samples), so a single step or epoch compares noise.
    final = {policy: float(np.mean(values[-2:])) for policy, values in losses.items()}
    assert final[None] < 0.85 * losses[None][0]  # it learned
    assert abs(final["bfloat16"] - final[None]) <= 0.10 * final[None], final

    trained = models["bfloat16"]
    weights = tmp_path / "bf16.weights.h5"
    trained.save_weights(str(weights))
    path = export.export_from_files(weights, trained.config, tmp_path / "model")
    loaded = tf.saved_model.load(str(path))
    image = train.load_image(0)
    out = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    assert out["detection_boxes"].dtype == out["detection_masks"].dtype == tf.float32
    float32_model = MaskRCNN(TinyConfig(ROI_ALIGN_IMPLEMENTATION="portable", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64))
    float32_model.load_weights(str(weights))
    expected = float32_model.detect([image])[0]
    n = int(out["num_detections"][0])
    assert n == len(expected["scores"]) and n > 0
    h, w = image.shape[:2]
    boxes = out["detection_boxes"][0, :n].numpy() * np.array([h, w, h, w], np.float32)
    np.testing.assert_allclose(boxes, expected["rois"], atol=0.5)
    np.testing.assert_allclose(out["detection_scores"][0, :n].numpy(), expected["scores"], atol=1e-4)
