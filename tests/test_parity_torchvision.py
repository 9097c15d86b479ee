"""Training-step parity with torchvision's Mask R-CNN, from recorded fixtures (no torch needed).

The fixtures (tests/fixtures/parity_torchvision/, written by
scripts/record_parity_fixtures.py) hold a small torchvision ``MaskRCNN`` with
``maskrcnn_resnet50_fpn``'s structure and key names (ResNet-50 at base width 4,
FPN 8 channels, random frozen-BN statistics), one 64 x 64 image with two
instances, the five losses of two ``torch.optim.SGD`` steps (lr 0.02, momentum
0.9, weight decay 1e-4) and every parameter after each step. Every sampler takes
every candidate (RPN: all 1023 anchors that are positive or negative; heads: all
proposals + GT), so both sides see the same anchors and RoIs.

Here the initial state dict is converted with mrcnn's converter
(``convert_state_dict``), ``MaskRCNN.train_step`` runs twice with
:class:`mrcnn.training.TorchSGD` on the same batch, and the losses and the weights
after each step are compared with torchvision's (the weights through the same
converter, so the comparison is per Keras variable).

``MRCNN_PARITY_LIVE=1`` (with torch + torchvision installed): the reference is
recomputed by live torchvision in this process instead of read from the files,
and the recorded fixtures must equal it (a stale fixture fails).

The inference parity tests (a full-size random ``maskrcnn_resnet50_fpn`` on COCO
images) are still in tests/test_convert.py and need live torchvision.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "parity_torchvision")
RECORDER = os.path.join(HERE, "..", "scripts", "record_parity_fixtures.py")
TOL = 1e-4


def _recorder():
    spec = importlib.util.spec_from_file_location("record_parity_fixtures", RECORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_fixtures() -> dict[str, np.ndarray]:
    out = {}
    for name in ("state", "batch", "inference", "steps"):
        path = os.path.join(FIXTURES, f"{name}.npz")
        with np.load(path) as z:
            for k in z.files:
                out[k if name == "steps" else f"{name}/{k}"] = z[k]
    return out


def _config(rec):
    from mrcnn.configs import TorchvisionCOCO

    return TorchvisionCOCO(
        NAME="parity", NUM_CLASSES=rec.NUM_CLASSES, CLASS_NAMES=None,
        BACKBONE_BASE_WIDTH=rec.WIDTH, FPN_CHANNELS=rec.FPN, FPN_FC_LAYERS_SIZE=rec.FC,
        MASK_HEAD_CONV_CHANNELS=rec.MASK_CH, FREEZE_BACKBONE_STAGES=0, IMAGES_PER_GPU=1,
        IMAGE_MIN_DIM=rec.IMAGE, IMAGE_MAX_DIM=rec.IMAGE, MINI_MASK_SHAPE=None,
        RPN_TRAIN_ANCHORS_PER_IMAGE=rec.ALL, RPN_POSITIVE_RATIO=1.0,
        TRAIN_ROIS_PER_IMAGE=rec.ALL, ROI_POSITIVE_RATIO=1.0,
        PRE_NMS_LIMIT_TRAINING=rec.ALL, POST_NMS_ROIS_TRAINING=rec.ALL,
        LEARNING_RATE=rec.LR, LEARNING_MOMENTUM=rec.MOMENTUM, WEIGHT_DECAY=rec.WEIGHT_DECAY,
        WEIGHT_DECAY_NORM=rec.WEIGHT_DECAY,  # frozen BN: no norm variable is trained on either side
    )


PREDICTORS = {"cls_score": "box_predictor", "bbox_pred": "box_predictor", "conv5_mask": "mask_predictor",
              "mask_fcn_logits": "mask_predictor"}


def _group(path: str) -> str:
    """Weight group of a Keras variable path, torchvision's module names: backbone (the
    ResNet body), fpn, rpn, box_head (fc6, fc7), box_predictor, mask_head (4 convs),
    mask_predictor (deconv + logits)."""
    parts = path.split("/")
    if parts[0] in ("backbone", "fpn", "rpn"):
        return parts[0]
    return PREDICTORS.get(parts[2], parts[1])


def _by_path(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.trainable_weights}


@pytest.fixture(scope="module")
def reference():
    """(recorder module, reference arrays, recorded arrays, live?): the reference is the
    committed fixtures, or live torchvision with MRCNN_PARITY_LIVE=1."""
    rec = _recorder()
    recorded = _load_fixtures()
    live = os.environ.get("MRCNN_PARITY_LIVE") == "1"
    return rec, (rec.record() if live else recorded), recorded, live


def _split(ref, prefix):
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def parity(reference):
    import tensorflow as tf

    from mrcnn.convert import convert_state_dict
    from mrcnn.model import MaskRCNN
    from mrcnn.training import TorchSGD

    rec, ref, recorded, live = reference
    state = {k[len("state/"):]: v for k, v in ref.items() if k.startswith("state/")}
    batch = {k[len("batch/"):]: v for k, v in ref.items() if k.startswith("batch/")}

    # No enable_op_determinism (process-wide): the stock-ops RoIAlign's racy CPU gradient
    # (when the custom op is not built) reorders float sums, ~1e-7, far below TOL.
    config = _config(rec)
    model = MaskRCNN(config)
    convert_state_dict(model, state, "torchvision")
    reference = MaskRCNN(config)
    model.compile(optimizer=TorchSGD(learning_rate=rec.LR, momentum=rec.MOMENTUM,
                                     weight_decay=rec.WEIGHT_DECAY, norm_weight_decay=rec.WEIGHT_DECAY))
    initial = _by_path(model)
    inputs = {k: tf.constant(v) for k, v in batch.items()}
    losses, weights, expected = [], [], []
    for step in (1, 2):
        for tracker in model.loss_trackers.values():
            tracker.reset_state()
        logs = model.train_step(inputs)
        losses.append([float(logs[name]) for _, name in rec.LOSS_KEYS])
        weights.append(_by_path(model))
        updated = dict(state)
        updated.update({k[len(f"step{step}/"):]: v for k, v in ref.items() if k.startswith(f"step{step}/")})
        convert_state_dict(reference, updated, "torchvision")
        expected.append(_by_path(reference))
    return {"rec": rec, "ref": ref, "recorded": recorded, "live": live, "losses": np.array(losses),
            "weights": weights, "expected": expected, "initial": initial}


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def test_fixtures_are_small_and_match_live_torchvision(parity):
    size = sum(os.path.getsize(os.path.join(FIXTURES, f)) for f in os.listdir(FIXTURES))
    assert size <= 5e6, f"fixtures are {size / 1e6:.2f} MB (at most 5 MB)"
    # Every sampler took every candidate: anchors and proposals + GT fit the sample sizes.
    rec = parity["rec"]
    assert 3 * sum((rec.IMAGE // s) ** 2 for s in (4, 8, 16, 32, 64)) < rec.ALL
    for step in (1, 2):
        assert 0 < int(parity["ref"][f"proposals{step}"]) + 2 < rec.ALL
    if parity["live"]:
        # Live mode: the committed fixtures are what torchvision computes now.
        for k, v in parity["ref"].items():
            np.testing.assert_allclose(parity["recorded"][k], v, rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("step", [1, 2])
def test_training_step_losses_equal_torchvision(parity, step):
    rec = parity["rec"]
    got, want = parity["losses"][step - 1], parity["ref"]["losses"][step - 1]
    rel = {name: abs(g - w) / abs(w) for (_, name), g, w in zip(rec.LOSS_KEYS, got, want)}
    report = ", ".join(f"{k} {got[i]:.6g} vs {want[i]:.6g} (rel {rel[k]:.1e})"
                       for i, k in enumerate(rel))
    print(f"\nstep {step} losses: {report}")
    assert max(rel.values()) <= TOL, f"step {step} losses differ from torchvision: {report}"


@pytest.mark.parametrize("step", [1, 2])
def test_training_step_weights_equal_torchvision(parity, step):
    """The weights after the step, and the step itself (w_step - w_0), per weight group.

    weights: max over the group's variables of max|got - want| / max|want| (<= 1e-4).
    update: the same on w_step - w_0; a float32 weight carries the update only to its
    rounding, so the bound is 1e-3 of the largest update plus 4 float32 spacings of the
    largest weight. That is tight enough to see the weight decay: decoupled decay (or
    none) moves a weight by lr * wd * momentum * w = 1.8e-7 * w at step 2.
    """
    got, want = parity["weights"][step - 1], parity["expected"][step - 1]
    initial = parity["initial"]
    assert got.keys() == want.keys()
    groups: dict[str, list] = {}
    bad = []
    for path in got:
        entry = groups.setdefault(_group(path), [0.0, 0.0, 0.0, 0])
        du_got, du_want = got[path] - initial[path], want[path] - initial[path]
        entry[0] = max(entry[0], _rel(got[path], want[path]))
        entry[1] = max(entry[1], _rel(du_got, du_want))
        entry[2] = max(entry[2], float(np.max(np.abs(du_want))))
        entry[3] += 1
        err = float(np.max(np.abs(du_got - du_want)))
        bound = 1e-3 * float(np.max(np.abs(du_want))) + 4 * float(np.spacing(np.max(np.abs(want[path]))))
        if err > bound:
            bad.append(f"{path}: update error {err:.2e} > {bound:.2e}")
    report = "; ".join(f"{g}: weights {w:.1e}, update {u:.1e} (max update {m:.1e}, {n} vars)"
                       for g, (w, u, m, n) in groups.items())
    print(f"\nstep {step} weights (max rel. difference): {report}")
    moved = [p for p in got if np.max(np.abs(want[p] - initial[p])) > 0]
    assert len(moved) == len(got), f"variables torchvision did not move: {set(got) - set(moved)}"
    assert max(w for w, _, _, _ in groups.values()) <= TOL, f"step {step} weights differ: {report}"
    assert not bad, f"step {step} updates differ: {bad[:5]}; {report}"


# ----- inference: the untrained model, every stage ------------------------------------------
@pytest.fixture(scope="module")
def inference(reference):
    import tensorflow as tf

    from mrcnn.convert import convert_state_dict
    from mrcnn.model import MaskRCNN

    rec, ref, _, _ = reference
    model = MaskRCNN(_config(rec))
    convert_state_dict(model, _split(ref, "state/"), "torchvision")
    batch = _split(ref, "batch/")
    images, sizes = tf.constant(batch["images"]), tf.constant(batch["image_sizes"])
    features = model.features(images, sizes, training=False)
    logits, deltas = model.rpn.head(features)
    anchors = model.anchor_generator(images, features)
    proposals, _, valid = model.rpn.proposals(logits, deltas, anchors, sizes, training_limits=False)
    detections = {k: np.asarray(v) for k, v in model({"images": images, "image_sizes": sizes}).items()}
    return {"want": _split(ref, "inference/"), "features": [np.asarray(f) for f in features],
            "logits": [np.asarray(x) for x in logits], "deltas": [np.asarray(x) for x in deltas],
            "proposals": np.asarray(proposals)[0][np.asarray(valid)[0]], "detections": detections}


def _xyxy(yx: np.ndarray) -> np.ndarray:
    return yx[..., [1, 0, 3, 2]]


def _rows_sorted(boxes: np.ndarray) -> np.ndarray:
    key = np.round(boxes, 2)  # sort key robust to float32 rounding between the two sides
    return boxes[np.lexsort(key.T[::-1])]


def test_inference_features_and_rpn_head_equal_torchvision(inference):
    want = inference["want"]
    rel = {}
    for level, f in enumerate(inference["features"]):
        rel[f"p{level + 2}"] = _rel(f, want[f"p{level + 2}"].transpose(0, 2, 3, 1))
    for level, (lg, dl) in enumerate(zip(inference["logits"], inference["deltas"])):
        o, d = want[f"objectness{level}"], want[f"rpn_deltas{level}"]
        a, h, w = o.shape[1:]
        rel[f"objectness{level}"] = _rel(lg, o.transpose(0, 2, 3, 1).reshape(1, -1))
        d = d.reshape(1, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(1, -1, 4)[..., [1, 0, 3, 2]]
        rel[f"rpn_deltas{level}"] = _rel(dl, d)
    report = ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
    print(f"\ninference features / RPN head (max rel. difference): {report}")
    assert max(rel.values()) <= TOL, report


def test_inference_proposals_and_detections_equal_torchvision(inference):
    """Same proposals (count and boxes: as sets, since proposals with exactly equal float32
    scores may come in either order), same detections (count, order, boxes, scores,
    classes) and the same 28 x 28 mask probabilities."""
    want, det = inference["want"], inference["detections"]
    got_props = _xyxy(inference["proposals"])
    assert got_props.shape == want["proposals"].shape, (got_props.shape, want["proposals"].shape)
    n = int(det["num_detections"][0])
    assert n == len(want["scores"]) > 0, (n, len(want["scores"]))
    np.testing.assert_array_equal(det["class_ids"][0, :n], want["labels"])
    rel = {"proposals": _rel(_rows_sorted(got_props), _rows_sorted(want["proposals"])),
           "boxes": _rel(_xyxy(det["boxes"][0, :n]), want["boxes"]),
           "scores": _rel(det["scores"][0, :n], want["scores"]),
           "masks": _rel(det["masks"][0, :n], want["masks"])}
    report = ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
    print(f"\ninference, {len(got_props)} proposals, {n} detections (max rel. difference): {report}")
    assert max(rel.values()) <= TOL, report
