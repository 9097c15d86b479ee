"""MaskRCNN assembly, training and detection."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import Config, MaskRCNN
from mrcnn.data.pipeline import build_dataset
from samples.shapes.shapes import ShapesDataset


def _count(model, norm_too=False):
    kinds = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.Conv2DTranspose)
    if norm_too:
        kinds = kinds + (keras.layers.BatchNormalization,)
    total = 0
    for layer in model._flatten_layers():
        if isinstance(layer, kinds):
            total += sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    return total


def test_r50_fpn_parameter_count_equals_torchvision():
    model = MaskRCNN(Config(NUM_CLASSES=91))
    assert _count(model) == 44_401_393
    bn = MaskRCNN(Config(NUM_CLASSES=91, BACKBONE_NORM="bn"))
    assert _count(bn, norm_too=True) == 44_454_513


def test_inference_outputs_are_fixed_shape(tiny_config):
    config = tiny_config(DETECTION_MIN_CONFIDENCE=0.0)
    model = MaskRCNN(config)
    out = model({"images": tf.random.uniform([2, 128, 128, 3], 0, 255),
                 "image_sizes": tf.constant([[128, 128], [100, 64]])})
    d = config.DETECTION_MAX_INSTANCES
    assert out["boxes"].shape == (2, d, 4)
    assert out["masks"].shape == (2, d, 28, 28)
    n = out["num_detections"].numpy()
    assert (n > 0).all()
    boxes = out["boxes"].numpy()
    # Detections of image 1 stay inside its valid 100x64 region.
    assert boxes[1, : n[1], 2].max() <= 100 + 1e-3 and boxes[1, : n[1], 3].max() <= 64 + 1e-3


def test_detect_on_odd_sizes_and_formats(tiny_config):
    model = MaskRCNN(tiny_config(DETECTION_MIN_CONFIDENCE=0.0))
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (97, 143, 3), dtype=np.uint8),
        rng.integers(0, 255, (300, 41, 3), dtype=np.uint8),
        rng.integers(0, 255, (64, 64), dtype=np.uint8),  # grayscale
        rng.integers(0, 255, (50, 80, 4), dtype=np.uint8),  # RGBA
    ]
    results = model.detect(images)
    assert len(results) == 4
    for image, r in zip(images, results):
        h, w = image.shape[:2]
        n = len(r["scores"])
        assert r["masks"].shape == (h, w, n) and r["masks"].dtype == bool
        assert r["rois"].shape == (n, 4) and r["class_ids"].shape == (n,)
        if n:
            assert (r["rois"] >= 0).all() and (r["rois"][:, 2] <= h).all() and (r["rois"][:, 3] <= w).all()
            assert (np.diff(r["scores"]) <= 1e-6).all()
            assert set(r["class_ids"]) <= {1, 2, 3}


@pytest.mark.parametrize("bad", [np.zeros((5,)), np.zeros((2, 3, 4, 5, 3)), np.zeros((10, 10, 5)), [], "x.png"])
def test_detect_rejects_wrong_rank(tiny_config, bad):
    model = MaskRCNN(tiny_config())
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        model.detect(bad)


@pytest.fixture(scope="module")
def detect_model():
    from conftest import TinyConfig

    return MaskRCNN(TinyConfig(DETECTION_MIN_CONFIDENCE=0.0))


def _same_detections(a: dict, b: dict) -> None:
    assert len(a["scores"]) > 0
    for key in ("rois", "scores", "class_ids", "masks"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_detect_scales_uint16_as_training_does(detect_model):
    # 16-bit data is scaled by 255/65535 (training's sanitize_image), not clipped to 255:
    # x * 257 is exactly x again, so the detections equal those of the 8-bit image.
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    wide = image.astype(np.uint16) * 257
    assert (wide > 255).mean() > 0.9  # clipping would have made it almost white
    _same_detections(detect_model.detect([wide])[0], detect_model.detect([image])[0])
    # A float [0, 1] image is x 255, rounded.
    _same_detections(detect_model.detect([image.astype(np.float32) / 255.0])[0],
                     detect_model.detect([image])[0])


@pytest.mark.parametrize("bad, match", [
    (np.nan, r"detect\(\) image 2: float image contains NaN"),
    (-3.0, r"detect\(\) image 2: float image values must lie in \[0, 1\] or \[0, 255\], got \[-3.0"),
    (300.0, r"detect\(\) image 2: .*got \[0.0, 300.0\]"),
])
def test_detect_rejects_bad_float_images_naming_the_index(detect_model, bad, match):
    good = np.zeros((40, 50, 3), np.float32)
    broken = good.copy()
    broken[3, 4, 1] = bad
    with pytest.raises(ValueError, match=match):
        detect_model.detect([good, good, broken])


def test_detect_converts_grayscale_and_rgba_as_training_does(detect_model):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (70, 100), dtype=np.uint8)
    as_rgb = np.stack([gray] * 3, axis=-1)
    want = detect_model.detect([as_rgb])[0]
    _same_detections(detect_model.detect([gray])[0], want)
    _same_detections(detect_model.detect([gray[..., None]])[0], want)
    rgba = np.concatenate([as_rgb, rng.integers(0, 256, (70, 100, 1), dtype=np.uint8)], axis=-1)
    _same_detections(detect_model.detect([rgba])[0], want)  # alpha dropped, not composited


def test_overfits_one_image_then_detects_it(tiny_config):
    # The step decay lets the last steps settle, so the final loss does not depend on
    # where the (non-deterministic, multi-threaded) trajectory happens to be.
    config = tiny_config(IMAGES_PER_GPU=1, TRAIN_FLIP_PROB=0.0, WARMUP_STEPS=10, LEARNING_RATE=0.02,
                         LR_STEPS=(220,), DETECTION_MIN_CONFIDENCE=0.5)
    keras.utils.set_random_seed(3)
    ds = ShapesDataset()
    ds.load_shapes(1, seed=5)
    _, class_ids = ds.load_mask(0)
    model = MaskRCNN(config)
    model.compile()
    train = build_dataset(ds, config, training=True, seed=0)
    first = model.evaluate(build_dataset(ds, config, training=False), steps=1, verbose=0, return_dict=True)
    model.fit(train, epochs=1, steps_per_epoch=300, verbose=0)
    last = model.evaluate(build_dataset(ds, config, training=False), steps=1, verbose=0, return_dict=True)
    # Untrained, the class (ln 4), objectness (ln 2) and mask (>= ln 2) losses alone
    # sum to > 2.7; trained on the one image the total falls by more than 10x
    # (0.17-0.35 seen over runs: training on CPU is not bit-repeatable).
    assert first["loss"] > 2.7, first
    assert last["loss"] < 0.5, (first, last)
    assert last["mask_loss"] < 0.15 and last["class_loss"] < 0.2, last
    r = model.detect([ds.load_image(0)])[0]
    masks, gt_classes = ds.load_mask(0)
    for i, cls in enumerate(gt_classes):
        ious = [
            (masks[..., i] & r["masks"][..., j]).sum() / (masks[..., i] | r["masks"][..., j]).sum()
            for j in range(len(r["scores"]))
        ]
        best = int(np.argmax(ious))
        assert ious[best] > 0.7, f"instance {i}: best mask IoU {ious[best]:.2f}"
        assert r["class_ids"][best] == cls


def test_stages_own_their_settings_and_round_trip_through_get_config(tiny_config):
    from mrcnn.layers import RPN, AnchorGenerator, BoxCoder, RoIHeads, RoIPooler

    config = tiny_config(NUM_KEYPOINTS=2, KEYPOINT_HEAD_CONV_CHANNELS=8, KEYPOINT_HEAD_NUM_CONVS=1,
                         PRE_NMS_LIMIT_INFERENCE=123, DETECTION_NMS_THRESHOLD=0.4, ROI_ALIGN_SAMPLING_RATIO=3)
    model = MaskRCNN(config)
    rpn, heads = model.rpn, model.roi_heads
    assert isinstance(rpn, RPN) and isinstance(heads, RoIHeads)
    assert isinstance(model.anchor_generator, AnchorGenerator) and isinstance(rpn.box_coder, BoxCoder)
    # Built from the Config once: the settings live on the stage.
    assert rpn.get_config()["pre_nms_top_n_test"] == 123
    assert rpn.get_config()["pre_nms_top_n_train"] == config.PRE_NMS_LIMIT_TRAINING
    assert heads.get_config()["nms_threshold"] == 0.4
    assert heads.box_coder.box_weights == config.BBOX_REG_WEIGHTS
    assert model.anchor_generator.sizes == config.RPN_ANCHOR_SCALES
    assert isinstance(heads.box_pooler, RoIPooler) and heads.box_pooler.output_size == (7, 7)
    assert heads.mask_pooler.output_size == (14, 14)
    assert heads.box_pooler.sampling_ratio == 3 and heads.keypoint_pooler.sampling_ratio == 3
    # Keras' own round trip rebuilds an equal stage (same settings, same weight shapes).
    for layer in (model.anchor_generator, rpn, rpn.head, rpn.box_coder, heads, heads.box_pooler,
                  heads.box_head, heads.mask_head, heads.keypoint_head):
        cfg = layer.get_config()
        again = type(layer).from_config(cfg)
        assert again.get_config() == cfg, type(layer).__name__
    rebuilt = RoIHeads.from_config(heads.get_config())
    rebuilt.build([tuple(s) for s in [(1, 16, 16, config.FPN_CHANNELS)] * 5])
    assert [tuple(w.shape) for w in rebuilt.weights] == [tuple(w.shape) for w in heads.weights]
    # The stages chain exactly as model(...) does.
    images = tf.random.uniform([1, 64, 64, 3], 0, 255, seed=1)
    sizes = tf.constant([[64, 64]])
    features = model.features(images, sizes)
    proposals, valid, rpn_losses = rpn(features, model.anchor_generator(images, features), sizes)
    detections, head_losses = heads(features, proposals, valid, sizes)
    assert rpn_losses == {} and head_losses == {}
    out = model({"images": images, "image_sizes": sizes})
    assert sorted(detections) == sorted(out)
    for key in out:
        np.testing.assert_array_equal(detections[key].numpy(), out[key].numpy())


def test_sampling_generator_state_decides_the_training_draws():
    """``model.sampling_generator`` is where the RPN and RoI sampling draw from (no module
    state): the same generator state gives the same losses bit for bit, an advanced state
    other samples, and holding it adds no weight to the model."""
    from conftest import TinyConfig

    config = TinyConfig()
    ds = ShapesDataset()
    ds.load_shapes(2, 128, 128, seed=0)
    batch = next(iter(build_dataset(ds, config, training=True, shuffle=False, seed=0)))
    model = MaskRCNN(config)
    weights = len(model.weights)
    generator = tf.random.Generator.from_seed(3)
    model.sampling_generator = generator
    assert model.sampling_generator is generator and len(model.weights) == weights
    start = generator.state.numpy().copy()
    first = {k: float(v) for k, v in model.compute_losses(batch).items()}
    second = {k: float(v) for k, v in model.compute_losses(batch).items()}
    generator.reset(tf.constant(start))
    again = {k: float(v) for k, v in model.compute_losses(batch).items()}
    assert again == first
    assert second["rpn_class_loss"] != first["rpn_class_loss"]
