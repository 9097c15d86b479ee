"""Checkpoint conversion (mrcnn/convert.py) and the COCO presets (mrcnn/configs.py).

Without torch: the layout conversions against NumPy references, and the
Detectron2 key mapping on *synthetic* checkpoints written by generators below
with Detectron2's key names and shapes (Detectron2 cannot be installed here; no
real Detectron2 file is read). A torchvision-named synthetic checkpoint turned
into a Detectron2-named one must convert to the same Keras weights.

Every parity test against torchvision (recorded fixtures, and the full-size live
one on COCO images) is in tests/test_parity_torchvision.py.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from mrcnn.checkpoint.convert import (
    ConversionError,
    background_last_to_first,
    conv_kernel,
    conv_transpose_kernel,
    convert_detectron2,
    convert_state_dict,
    dense_kernel,
    flatten_chw_to_hwc,
    read_checkpoint,
    xy_to_yx_deltas,
)
from mrcnn.cli import main
from mrcnn.config import Config
from mrcnn.configs import (
    DETECTRON2_CATEGORY_IDS,
    DETECTRON2_COCO_CLASS_NAMES,
    TORCHVISION_CATEGORY_IDS,
    TORCHVISION_COCO_CLASS_NAMES,
    Detectron2COCO,
    TorchvisionCOCO,
)

HERE = os.path.join(os.path.dirname(__file__), "..")
# Small network dimensions for the torch-free tests (same layer structure as R50-FPN).
SMALL = dict(BACKBONE_BASE_WIDTH=8, FPN_CHANNELS=16, FPN_FC_LAYERS_SIZE=32, MASK_HEAD_CONV_CHANNELS=16,
             NUM_CLASSES=5, CLASS_NAMES=None)
DEPTHS = (3, 4, 6, 3)  # ResNet-50


def small_config(source: str) -> Config:
    return TorchvisionCOCO(**SMALL) if source == "torchvision" else Detectron2COCO(**SMALL)


# ----- synthetic checkpoints ------------------------------------------------------------------
def _bn(rng, prefix, n, out, tracked):
    out[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
    out[f"{prefix}.bias"] = rng.normal(0, 0.1, n).astype(np.float32)
    out[f"{prefix}.running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
    out[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
    if tracked:
        out[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)


def _w(rng, *shape):
    return rng.normal(0, 0.1, shape).astype(np.float32)


def torchvision_state_dict(rng, width=8, fpn=16, fc=32, mask_ch=16, num_classes=5, pool=7,
                           old_names=False) -> dict[str, np.ndarray]:
    """torchvision ``maskrcnn_resnet50_fpn`` state_dict names and shapes (scaled widths).

    ``old_names``: the pre-0.13 names of the published COCO checkpoint
    (``inner_blocks.0.weight``, ``rpn.head.conv.weight``, ``mask_head.mask_fcn1.weight``).
    """
    s = {}
    b = "backbone.body"
    s[f"{b}.conv1.weight"] = _w(rng, width, 3, 7, 7)
    _bn(rng, f"{b}.bn1", width, s, True)
    cin = width
    for i, depth in enumerate(DEPTHS):
        planes = width * 2**i
        for blk in range(depth):
            p = f"{b}.layer{i + 1}.{blk}"
            s[f"{p}.conv1.weight"] = _w(rng, planes, cin, 1, 1)
            _bn(rng, f"{p}.bn1", planes, s, True)
            s[f"{p}.conv2.weight"] = _w(rng, planes, planes, 3, 3)
            _bn(rng, f"{p}.bn2", planes, s, True)
            s[f"{p}.conv3.weight"] = _w(rng, planes * 4, planes, 1, 1)
            _bn(rng, f"{p}.bn3", planes * 4, s, True)
            if blk == 0:
                s[f"{p}.downsample.0.weight"] = _w(rng, planes * 4, cin, 1, 1)
                _bn(rng, f"{p}.downsample.1", planes * 4, s, True)
            cin = planes * 4
    for i in range(4):
        inner = f"backbone.fpn.inner_blocks.{i}" + ("" if old_names else ".0")
        layer = f"backbone.fpn.layer_blocks.{i}" + ("" if old_names else ".0")
        s[f"{inner}.weight"] = _w(rng, fpn, width * 4 * 2**i, 1, 1)
        s[f"{inner}.bias"] = _w(rng, fpn)
        s[f"{layer}.weight"] = _w(rng, fpn, fpn, 3, 3)
        s[f"{layer}.bias"] = _w(rng, fpn)
    conv = "rpn.head.conv" + ("" if old_names else ".0.0")
    s[f"{conv}.weight"], s[f"{conv}.bias"] = _w(rng, fpn, fpn, 3, 3), _w(rng, fpn)
    s["rpn.head.cls_logits.weight"], s["rpn.head.cls_logits.bias"] = _w(rng, 3, fpn, 1, 1), _w(rng, 3)
    s["rpn.head.bbox_pred.weight"], s["rpn.head.bbox_pred.bias"] = _w(rng, 12, fpn, 1, 1), _w(rng, 12)
    s["roi_heads.box_head.fc6.weight"] = _w(rng, fc, fpn * pool * pool)
    s["roi_heads.box_head.fc6.bias"] = _w(rng, fc)
    s["roi_heads.box_head.fc7.weight"], s["roi_heads.box_head.fc7.bias"] = _w(rng, fc, fc), _w(rng, fc)
    p = "roi_heads.box_predictor"
    s[f"{p}.cls_score.weight"], s[f"{p}.cls_score.bias"] = _w(rng, num_classes, fc), _w(rng, num_classes)
    s[f"{p}.bbox_pred.weight"] = _w(rng, 4 * num_classes, fc)
    s[f"{p}.bbox_pred.bias"] = _w(rng, 4 * num_classes)
    cin = fpn
    for i in range(4):
        key = f"roi_heads.mask_head.mask_fcn{i + 1}" if old_names else f"roi_heads.mask_head.{i}.0"
        s[f"{key}.weight"], s[f"{key}.bias"] = _w(rng, mask_ch, cin, 3, 3), _w(rng, mask_ch)
        cin = mask_ch
    p = "roi_heads.mask_predictor"
    s[f"{p}.conv5_mask.weight"], s[f"{p}.conv5_mask.bias"] = _w(rng, mask_ch, mask_ch, 2, 2), _w(rng, mask_ch)
    s[f"{p}.mask_fcn_logits.weight"] = _w(rng, num_classes, mask_ch, 1, 1)
    s[f"{p}.mask_fcn_logits.bias"] = _w(rng, num_classes)
    return s


def detectron2_from_torchvision(tv: dict[str, np.ndarray], class_agnostic: bool = False) -> dict:
    """The same network written with Detectron2's key names and conventions.

    Detectron2 names (``GeneralizedRCNN`` R50-FPN): ``backbone.bottom_up.stem.conv1``
    (+ ``.norm``), ``backbone.bottom_up.res{2..5}.{b}.conv{1,2,3}`` (+ ``.norm``) and
    ``.shortcut``, ``backbone.fpn_lateral{2..5}`` / ``fpn_output{2..5}``,
    ``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}``,
    ``roi_heads.box_head.fc{1,2}``, ``roi_heads.box_predictor.{cls_score,bbox_pred}``,
    ``roi_heads.mask_head.{mask_fcn1..4,deconv,predictor}``. Background is the last
    ``cls_score`` row; ``bbox_pred`` has 4 rows per foreground class (or 4 when
    class-agnostic) and the mask predictor one channel per foreground class (or 1);
    FrozenBN has no ``num_batches_tracked``.
    """
    d2 = {}
    for key, value in tv.items():
        if key.endswith("num_batches_tracked"):
            continue
        k = key.replace("backbone.body.conv1.", "backbone.bottom_up.stem.conv1.")
        k = k.replace("backbone.body.bn1.", "backbone.bottom_up.stem.conv1.norm.")
        for i in range(1, 5):
            k = k.replace(f"backbone.body.layer{i}.", f"backbone.bottom_up.res{i + 1}.")
        for j in (1, 2, 3):
            k = k.replace(f".bn{j}.", f".conv{j}.norm.")
        k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        for i in range(4):
            k = k.replace(f"backbone.fpn.inner_blocks.{i}.0.", f"backbone.fpn_lateral{i + 2}.")
            k = k.replace(f"backbone.fpn.layer_blocks.{i}.0.", f"backbone.fpn_output{i + 2}.")
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        k = k.replace("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv.")
        k = k.replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        k = k.replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        k = k.replace("roi_heads.box_head.fc6.", "roi_heads.box_head.fc1.")
        k = k.replace("roi_heads.box_head.fc7.", "roi_heads.box_head.fc2.")
        k = k.replace("roi_heads.mask_predictor.conv5_mask.", "roi_heads.mask_head.deconv.")
        k = k.replace("roi_heads.mask_predictor.mask_fcn_logits.", "roi_heads.mask_head.predictor.")
        if k.startswith("roi_heads.box_predictor.cls_score."):
            value = np.concatenate([value[1:], value[:1]], axis=0)  # background last
        elif k.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:8] if class_agnostic else value[4:]  # no background rows
        elif k.startswith("roi_heads.mask_head.predictor."):
            value = value[1:2] if class_agnostic else value[1:]
        d2[k] = value.copy()
    return d2


def _weights_by_path(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v) for v in model.weights}


@pytest.fixture(scope="module")
def small_models():
    """Two small MaskRCNNs (torchvision and Detectron2 conventions), built once."""
    from mrcnn.model import MaskRCNN

    return {"torchvision": MaskRCNN(small_config("torchvision")),
            "detectron2": MaskRCNN(small_config("detectron2"))}


# ----- layout conversions (NumPy references) ---------------------------------------------------
def test_conv_kernel_oihw_to_hwio_matches_cross_correlation():
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 7, 3)).astype(np.float32)
    w = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)  # torch [O, I, kh, kw]
    layer = keras.layers.Conv2D(5, (3, 2), use_bias=False)
    layer.build(x.shape)
    layer.kernel.assign(conv_kernel(w))
    ref = np.zeros((1, 4, 6, 5), np.float32)
    for i in range(4):
        for j in range(6):
            ref[0, i, j] = np.einsum("hwc,ochw->o", x[0, i:i + 3, j:j + 2], w)
    np.testing.assert_allclose(np.asarray(layer(x)), ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_kernel_matches_torch_definition():
    """torch ConvTranspose2d(k=2, s=2): out[o, 2i+a, 2j+b] = sum_c x[c, i, j] w[c, o, a, b] + bias."""
    import keras

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 4, 6)).astype(np.float32)  # NHWC, 6 in-channels
    w = rng.normal(size=(6, 5, 2, 2)).astype(np.float32)  # torch [in, out, kh, kw]
    bias = rng.normal(size=5).astype(np.float32)
    layer = keras.layers.Conv2DTranspose(5, 2, strides=2)
    layer.build(x.shape)
    layer.kernel.assign(conv_transpose_kernel(w))
    layer.bias.assign(bias)
    ref = np.zeros((1, 6, 8, 5), np.float32) + bias
    for i in range(3):
        for j in range(4):
            for a in range(2):
                for b in range(2):
                    ref[0, 2 * i + a, 2 * j + b] += x[0, i, j] @ w[:, :, a, b]
    np.testing.assert_allclose(np.asarray(layer(x)), ref, rtol=1e-5, atol=1e-5)


def test_fc6_flatten_order_chw_to_hwc():
    rng = np.random.default_rng(2)
    c, h, w, out = 4, 3, 5, 6
    feat_chw = rng.normal(size=(c, h, w)).astype(np.float32)
    weight = rng.normal(size=(out, c * h * w)).astype(np.float32)
    torch_out = weight @ feat_chw.reshape(-1)  # torch.flatten on NCHW
    keras_out = feat_chw.transpose(1, 2, 0).reshape(-1) @ flatten_chw_to_hwc(weight, c, h, w)
    np.testing.assert_allclose(keras_out, torch_out, rtol=1e-5)
    np.testing.assert_array_equal(dense_kernel(weight), weight.T)


def test_delta_and_class_reorders():
    np.testing.assert_array_equal(xy_to_yx_deltas(np.arange(8)), [1, 0, 3, 2, 5, 4, 7, 6])
    w = np.arange(24).reshape(8, 3)
    np.testing.assert_array_equal(xy_to_yx_deltas(w)[0], w[1])
    np.testing.assert_array_equal(background_last_to_first(np.array([1, 2, 3, 99])), [99, 1, 2, 3])
    with pytest.raises(ValueError):
        xy_to_yx_deltas(np.arange(6))


# ----- presets ----------------------------------------------------------------------------------
def test_presets_carry_source_conventions():
    tv, d2 = TorchvisionCOCO(), Detectron2COCO()
    assert tv.NUM_CLASSES == len(tv.CLASS_NAMES) == 91 and d2.NUM_CLASSES == len(d2.CLASS_NAMES) == 81
    assert TORCHVISION_COCO_CLASS_NAMES.count("N/A") == 10
    assert DETECTRON2_COCO_CLASS_NAMES[1] == "person" and DETECTRON2_COCO_CLASS_NAMES[-1] == "toothbrush"
    assert DETECTRON2_CATEGORY_IDS[1:6] == (1, 2, 3, 4, 5) and DETECTRON2_CATEGORY_IDS[-1] == 90
    assert all(TORCHVISION_COCO_CLASS_NAMES[TORCHVISION_CATEGORY_IDS[i]] == n
               for i, n in enumerate(TORCHVISION_COCO_CLASS_NAMES) if TORCHVISION_CATEGORY_IDS[i])
    assert (tv.STRIDE_IN_1X1, d2.STRIDE_IN_1X1) == (False, True)
    assert (tv.INPUT_CHANNEL_ORDER, d2.INPUT_CHANNEL_ORDER) == ("RGB", "BGR")
    assert (tv.ROI_ALIGN_ALIGNED, tv.ROI_ALIGN_SAMPLING_RATIO) == (False, 2)
    assert (d2.ROI_ALIGN_ALIGNED, d2.ROI_ALIGN_SAMPLING_RATIO, d2.ROI_ALIGN_IMPLEMENTATION) == (True, 0, "custom")
    assert (tv.ROUND_ANCHORS, tv.ANCHOR_STRIDE_FROM_GRID) == (True, True)
    assert (d2.ROUND_ANCHORS, d2.ANCHOR_STRIDE_FROM_GRID, d2.ANCHOR_OFFSET) == (False, False, 0.0)
    for c in (tv, d2):
        assert (c.IMAGE_MIN_DIM, c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE) == (800, 1333, "pad32")
        assert c.BACKBONE_NORM == "frozen_bn" and c.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
        assert (c.PRE_NMS_LIMIT_INFERENCE, c.POST_NMS_ROIS_INFERENCE) == (1000, 1000)
        assert (c.DETECTION_MIN_CONFIDENCE, c.DETECTION_NMS_THRESHOLD, c.DETECTION_MAX_INSTANCES) == (0.05, 0.5, 100)
    with pytest.raises(ValueError, match="custom"):
        Detectron2COCO(ROI_ALIGN_IMPLEMENTATION="portable")


def test_torchvision_preset_config_json_roundtrip():
    config = TorchvisionCOCO()
    back = Config.from_dict(json.loads(config.to_json()))
    assert back.to_dict() == config.to_dict()


def test_detectron2_preset_config_json_roundtrip():
    config = Detectron2COCO()
    back = Config.from_dict(json.loads(config.to_json()))
    assert back.to_dict() == config.to_dict()


# ----- key mapping on synthetic checkpoints (no torch) -----------------------------------------
def test_detectron2_mapping_equals_torchvision_mapping(small_models):
    """The same weights written with torchvision's and Detectron2's names convert identically
    (background: zero box deltas and a zero mask channel on the Detectron2 side)."""
    rng = np.random.default_rng(3)
    tv = torchvision_state_dict(rng)
    report_tv = convert_state_dict(small_models["torchvision"], tv, "torchvision")
    report_d2 = convert_state_dict(small_models["detectron2"], detectron2_from_torchvision(tv), "detectron2")
    assert len(report_tv["keys"]) == len(report_d2["keys"]) == len(tv) - sum(
        k.endswith("num_batches_tracked") for k in tv)
    assert all(k.endswith("num_batches_tracked") for k in report_tv["ignored"]) and not report_d2["ignored"]
    a = _weights_by_path(small_models["torchvision"])
    b = _weights_by_path(small_models["detectron2"])
    assert a.keys() == b.keys()
    for path in a:
        x, y = a[path], b[path]
        if "bbox_pred" in path and "box_head" in path:  # [fc, 5*4] / [5*4]: class 0 = columns 0..3
            np.testing.assert_array_equal(y[..., :4], 0)
            x, y = x[..., 4:], y[..., 4:]
        elif "mask_fcn_logits" in path:  # [1, 1, ch, 5] / [5]: channel 0 is background
            np.testing.assert_array_equal(y[..., 0], 0)
            x, y = x[..., 1:], y[..., 1:]
        np.testing.assert_array_equal(x, y, err_msg=path)
    # Spot checks against the source arrays.
    box = small_models["detectron2"].roi_heads.box_head
    d2 = detectron2_from_torchvision(tv)
    np.testing.assert_array_equal(np.asarray(box.cls_score.bias)[0], d2["roi_heads.box_predictor.cls_score.bias"][-1])
    np.testing.assert_array_equal(np.asarray(box.bbox_pred.bias)[4:8],
                                  d2["roi_heads.box_predictor.bbox_pred.bias"][[1, 0, 3, 2]])
    norm = small_models["detectron2"].backbone
    layer = {x.name: x for x in norm._flatten_layers()}["layer3_2_2_norm"]
    np.testing.assert_array_equal(np.asarray(layer.moving_variance),
                                  d2["backbone.bottom_up.res4.2.conv2.norm.running_var"])


def test_detectron2_class_agnostic_predictors_are_tiled(small_models):
    rng = np.random.default_rng(4)
    d2 = detectron2_from_torchvision(torchvision_state_dict(rng), class_agnostic=True)
    assert d2["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4
    convert_state_dict(small_models["detectron2"], d2, "detectron2")
    box, mask = small_models["detectron2"].roi_heads.box_head, small_models["detectron2"].roi_heads.mask_head
    bias = np.asarray(box.bbox_pred.bias).reshape(5, 4)
    np.testing.assert_array_equal(bias[0], 0)
    for k in range(1, 5):
        np.testing.assert_array_equal(bias[k], d2["roi_heads.box_predictor.bbox_pred.bias"][[1, 0, 3, 2]])
    logits_bias = np.asarray(mask.logits.bias)
    assert logits_bias[0] == 0 and np.all(logits_bias[1:] == d2["roi_heads.mask_head.predictor.bias"][0])


def test_torchvision_pre_013_key_names_accepted(small_models):
    rng = np.random.default_rng(5)
    new = torchvision_state_dict(rng)
    old = torchvision_state_dict(np.random.default_rng(5), old_names=True)
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn1.weight" in old
    model = small_models["torchvision"]
    convert_state_dict(model, new, "torchvision")
    a = _weights_by_path(model)
    convert_state_dict(model, {f"module.{k}": v for k, v in old.items()}, "torchvision")
    b = _weights_by_path(model)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.mark.parametrize("source", ["torchvision", "detectron2"])
def test_missing_extra_and_mismatched_keys_are_errors_naming_the_key(small_models, source):
    rng = np.random.default_rng(6)
    tv = torchvision_state_dict(rng)
    state = tv if source == "torchvision" else detectron2_from_torchvision(tv)
    model = small_models[source]
    key = next(k for k in state if "layer3.1.conv2" in k or "res4.1.conv2.weight" in k)

    missing = dict(state)
    del missing[key]
    with pytest.raises(ConversionError, match=f"missing key '{key}'"):
        convert_state_dict(model, missing, source)

    extra = dict(state, **{"roi_heads.keypoint_head.conv_fcn1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match="roi_heads.keypoint_head.conv_fcn1.weight"):
        convert_state_dict(model, extra, source)

    bad = dict(state)
    bad[key] = np.zeros(state[key].shape[:1] + (1,) + state[key].shape[2:], np.float32)
    with pytest.raises(ConversionError, match=f"shape mismatch for '{key}'"):
        convert_state_dict(model, bad, source)


def test_wrong_source_or_class_count_is_an_error(small_models):
    rng = np.random.default_rng(7)
    tv = torchvision_state_dict(rng)
    with pytest.raises(ConversionError, match="missing key 'backbone.bottom_up.stem.conv1.weight'"):
        convert_state_dict(small_models["detectron2"], tv, "detectron2")
    with pytest.raises(ConversionError, match="roi_heads.box_predictor.cls_score.weight"):
        convert_state_dict(small_models["torchvision"], torchvision_state_dict(rng, num_classes=7), "torchvision")
    d2 = detectron2_from_torchvision(tv)
    d2["roi_heads.box_predictor.bbox_pred.weight"] = d2["roi_heads.box_predictor.bbox_pred.weight"][:8]
    with pytest.raises(ConversionError, match="bbox_pred.weight.*box-regression outputs"):
        convert_state_dict(small_models["detectron2"], d2, "detectron2")


def test_detectron2_pixel_statistics_are_checked(small_models):
    d2 = detectron2_from_torchvision(torchvision_state_dict(np.random.default_rng(8)))
    ok = dict(d2, pixel_mean=np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1),
              pixel_std=np.ones((3, 1, 1), np.float32))
    report = convert_state_dict(small_models["detectron2"], ok, "detectron2")
    assert set(report["ignored"]) == {"pixel_mean", "pixel_std"}
    rgb = dict(ok, pixel_mean=np.array([123.675, 116.28, 103.53], np.float32).reshape(3, 1, 1))
    with pytest.raises(ConversionError, match="pixel_mean"):
        convert_state_dict(small_models["detectron2"], rgb, "detectron2")


def test_detectron2_pkl_file_cli_and_safe_unpickling(tmp_path, small_models):
    d2 = detectron2_from_torchvision(torchvision_state_dict(np.random.default_rng(9)))
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:  # the model zoo layout
        pickle.dump({"model": d2, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f, protocol=2)
    state = read_checkpoint(path)
    assert state.keys() == d2.keys()
    assert all(np.array_equal(state[k], d2[k]) for k in d2)

    # Through the command line, with the small config as a config.json (sampling ratio 2:
    # a plain Config cannot hold 0 yet, and it does not change the weights).
    config = small_config("detectron2")
    cfg_path = tmp_path / "config.json"
    values = json.loads(config.to_json())
    values["ROI_ALIGN_SAMPLING_RATIO"] = 2
    cfg_path.write_text(json.dumps(values))
    out = tmp_path / "d2.weights.h5"
    assert main(["convert-weights", "--from", "detectron2", str(path), "--out", str(out), "--config", str(cfg_path)]) == 0
    from mrcnn.model import MaskRCNN

    loaded = MaskRCNN(small_config("detectron2"))
    loaded.load_weights(str(out))
    direct = small_models["detectron2"]
    convert_state_dict(direct, d2, "detectron2")
    a, b = _weights_by_path(direct), _weights_by_path(loaded)
    for p in a:
        np.testing.assert_array_equal(a[p], b[p], err_msg=p)

    # Same through the Python API.
    out2 = tmp_path / "d2_api.weights.h5"
    report = convert_detectron2(path, out2, config=small_config("detectron2"))
    assert report["out"] == str(out2) and os.path.exists(out2)

    # Errors are reported, not raised, by the command line.
    assert main(["convert-weights", "--from", "torchvision", str(path), "--out", str(out), "--config", str(cfg_path)]) == 2
    assert main(["convert-weights", "--from", "detectron2", str(path), "--out", str(tmp_path / "x.h5")]) == 2

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"x": Evil()}}, f)
    with pytest.raises(ConversionError, match="refusing to load global"):
        read_checkpoint(evil)
