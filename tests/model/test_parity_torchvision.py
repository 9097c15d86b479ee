"""Training-step parity with torchvision's Mask R-CNN, from recorded fixtures (no torch needed).

The training step runs twice: with direct 3x3 convolutions and with every one by Winograd
(``TRAINING_CONV_ALGORITHM="winograd"``).

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
:class:`mrcnn.solver.optimizer.TorchSGD` on the same batch, and the losses and the weights
after each step are compared with torchvision's (the weights through the same
converter, so the comparison is per Keras variable).

``MRCNN_PARITY_LIVE=1`` (with torch + torchvision installed): the reference is
recomputed by live torchvision in this process instead of read from the files,
and the recorded fixtures must equal it (a stale fixture fails).

The same fixtures hold the untrained small model's eval-mode outputs of every
stage (FPN, RPN head, proposals, detections, masks), compared on CI as well.

The full-size inference parity (a random ``maskrcnn_resnet50_fpn`` with 91 classes on
two COCO photos of ../shared/datasets/tiny_coco) also runs without torch: its 170 MB
state dict is regenerated with NumPy from a seed
(``record_parity_fixtures.full_size_state_dict``) and full_size.npz (~1.7 MB) holds
torchvision's outputs for it (sampled FPN values, each level's pre-NMS top-1000 RPN
outputs, the 1000 proposals, box-head rows, the 100 detections and their mask logits,
the end-to-end ``net([image])`` detections). It skips only when the photos are absent
(the project rule for ../shared data). Parity numbers are printed (``pytest -s``) and
written to $MRCNN_PARITY_REPORT (JSON) when that is set.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
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


def _config(rec, conv: str = "auto"):
    from mrcnn.configs import TorchvisionCOCO

    return TorchvisionCOCO(
        NAME="parity", TRAINING_CONV_ALGORITHM=conv, NUM_CLASSES=rec.NUM_CLASSES, CLASS_NAMES=None,
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


# "winograd": every 3x3 stride-1 convolution of the step by Winograd F(4x4, 3x3) (this
# narrow model has none that "auto" would pick on its own).
@pytest.fixture(scope="module", params=["direct", "winograd"])
def parity(reference, request):
    import tensorflow as tf

    from mrcnn.checkpoint.convert import convert_state_dict
    from mrcnn.model import MaskRCNN
    from mrcnn.solver.optimizer import TorchSGD

    rec, ref, recorded, live = reference
    state = {k[len("state/"):]: v for k, v in ref.items() if k.startswith("state/")}
    batch = {k[len("batch/"):]: v for k, v in ref.items() if k.startswith("batch/")}

    # No enable_op_determinism (process-wide): the stock-ops RoIAlign's racy CPU gradient
    # (when the custom op is not built) reorders float sums, ~1e-7, far below TOL.
    config = _config(rec, request.param)
    model = MaskRCNN(config)
    assert model.training_conv_algorithm == request.param
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
    bad, worst = [], 0.0
    for path in got:
        entry = groups.setdefault(_group(path), [0.0, 0.0, 0.0, 0])
        du_got, du_want = got[path] - initial[path], want[path] - initial[path]
        entry[0] = max(entry[0], _rel(got[path], want[path]))
        entry[1] = max(entry[1], _rel(du_got, du_want))
        entry[2] = max(entry[2], float(np.max(np.abs(du_want))))
        entry[3] += 1
        err = float(np.max(np.abs(du_got - du_want)))
        bound = 1e-3 * float(np.max(np.abs(du_want))) + 4 * float(np.spacing(np.max(np.abs(want[path]))))
        worst = max(worst, err / bound)
        if err > bound:
            bad.append(f"{path}: update error {err:.2e} > {bound:.2e}")
    report = "; ".join(f"{g}: weights {w:.1e}, update {u:.1e} (max update {m:.1e}, {n} vars)"
                       for g, (w, u, m, n) in groups.items())
    report += f"; largest update error / bound {worst:.2f}"
    print(f"\nstep {step} weights (max rel. difference): {report}")
    moved = [p for p in got if np.max(np.abs(want[p] - initial[p])) > 0]
    assert len(moved) == len(got), f"variables torchvision did not move: {set(got) - set(moved)}"
    assert max(w for w, _, _, _ in groups.values()) <= TOL, f"step {step} weights differ: {report}"
    assert not bad, f"step {step} updates differ: {bad[:5]}; {report}"


# ----- inference: the untrained model, every stage ------------------------------------------
@pytest.fixture(scope="module")
def inference(reference):
    import tensorflow as tf

    from mrcnn.checkpoint.convert import convert_state_dict
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


# ----- full-size parity: a NumPy-seeded maskrcnn_resnet50_fpn (91 classes) on two COCO photos ------
# Its 170 MB state dict is regenerated from a seed (record_parity_fixtures.full_size_state_dict);
# full_size.npz holds torchvision's outputs for it, so this runs on CI without torch (it skips
# only without ../shared/datasets/tiny_coco). Live mode recomputes them with torchvision.
def test_shim_roi_align_is_the_reference_kernel():
    """torchvision's RoIAlign (the parity harness' kernel entry point) == the NumPy
    transcription of the kernel (tests/roi_align_reference.py), borders included, and
    torchvision's batched NMS keeps the same boxes as this project's. torchvision's outputs
    come from shim.npz (scripts/record_parity_fixtures.py), or live with MRCNN_PARITY_LIVE=1
    (then the fixture must equal them)."""
    import tensorflow as tf
    from roi_align_reference import (
        ARANGE_BOX,
        ARANGE_EXPECTED,
        arange_features,
        random_case,
        roi_align_forward,
    )

    from mrcnn.ops.nms import batched_nms

    rec = _recorder()
    with np.load(os.path.join(FIXTURES, "shim.npz")) as z:
        recorded = {k: z[k] for k in z.files}
    want = recorded
    if os.environ.get("MRCNN_PARITY_LIVE") == "1":
        want = rec.record_shim()
        assert want.keys() == recorded.keys()
        for k, v in want.items():
            np.testing.assert_allclose(recorded[k], v, rtol=1e-6, atol=1e-7, err_msg=f"shim.npz stale: {k}")
    for aligned in (False, True):
        got = roi_align_forward(arange_features(), ARANGE_BOX, [0], 4, 1.0, 0, aligned)
        np.testing.assert_allclose(want[f"roi_align_arange_{int(aligned)}"][0, ..., 0], ARANGE_EXPECTED[aligned],
                                   atol=1e-5)
        np.testing.assert_allclose(got[0, ..., 0], ARANGE_EXPECTED[aligned], atol=1e-5)
        for ratio in (2, 0):
            f, b, idx = random_case(np.random.default_rng(ratio + 10 * aligned))
            np.testing.assert_allclose(want[f"roi_align_{int(aligned)}_{ratio}"],
                                       roi_align_forward(f, b, idx, 3, 0.5, ratio, aligned), atol=1e-4)

    # torchvision's NMS keeps the same boxes as this project's batched NMS.
    boxes, scores, levels = rec.nms_case()
    idx, keep = batched_nms(tf.constant(boxes[None][..., [1, 0, 3, 2]]), tf.constant(scores[None]),
                            tf.ones([1, 500], bool), 500, 0.7, groups=tf.constant(levels[None].astype(np.int32)))
    assert 0 < len(want["nms_keep"]) < 500
    np.testing.assert_array_equal(np.sort(idx.numpy()[0][keep.numpy()[0]]), want["nms_keep"])


PARITY: dict = {}


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _set_match(boxes, ref, tol=0.01) -> dict:
    """How many of ``ref`` boxes have a box in ``boxes`` with every coordinate within ``tol``
    (order-free: equal scores may come out in either order)."""
    dist = np.abs(ref[:, None, :] - boxes[None, :, :]).max(-1).min(1) if len(boxes) else np.full(len(ref), np.inf)
    matched = dist <= tol
    return {"count": [len(boxes), len(ref)], "matched": float(matched.mean()),
            "top100_matched": float(matched[:100].mean()),
            "max_abs_px_matched": float(dist[matched].max()) if matched.any() else None}


def _stats(ious) -> dict | None:
    if not ious:
        return None
    ious = np.asarray(ious)
    return {"min": float(ious.min()), "mean": float(ious.mean()), "at_least_0.98": float((ious >= 0.98).mean())}


def _pick(mask_logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[N, 28, 28, K] and [N] -> [N, 28, 28] channel of each class."""
    return np.stack([mask_logits[i, ..., c] for i, c in enumerate(classes)]) if len(classes) else mask_logits[..., 0]


def _texture(masks: np.ndarray) -> float:
    """Fraction of 4-neighbour pairs of 28x28 cells on opposite sides of 0.5 (0 = smooth)."""
    m = masks > 0.5
    return float(np.mean(np.concatenate([(m[:, 1:] != m[:, :-1]).ravel(), (m[:, :, 1:] != m[:, :, :-1]).ravel()])))


def _match(ref_boxes, ref_classes, boxes, classes, tol):
    """For each reference detection, the index of a same-class detection whose box
    coordinates are all within ``tol`` (closest first), or -1."""
    out = []
    taken = set()
    for rb, rc in zip(ref_boxes, ref_classes):
        d = np.abs(boxes - rb).max(axis=1) if len(boxes) else np.zeros(0)
        order = [j for j in np.argsort(d) if classes[j] == rc and d[j] <= tol and j not in taken]
        out.append(order[0] if order else -1)
        if order:
            taken.add(order[0])
    return np.array(out, int)


@pytest.fixture(scope="module")
def full_parity(tmp_path_factory):
    """A full-size ``maskrcnn_resnet50_fpn`` (91 classes) vs its conversion, on two COCO photos.

    The weights are :func:`record_parity_fixtures.full_size_state_dict` (NumPy, seeded,
    regenerated here); torchvision's outputs for them come from full_size.npz, or from live
    torchvision with MRCNN_PARITY_LIVE=1 (and then the fixture must equal them). Both sides
    start the stage-by-stage comparison from the same network input (mrcnn's resize + pad);
    the end-to-end comparison runs each side's own resize from the original photo.
    """
    import tensorflow as tf

    from mrcnn.checkpoint.convert import convert_state_dict
    from mrcnn.model import MaskRCNN
    from mrcnn.ops.masks import paste_masks

    rec = _recorder()
    try:
        images = rec.full_size_images()
    except FileNotFoundError as e:  # the project rule: tests needing ../shared data skip without it
        pytest.skip(str(e))
    with np.load(os.path.join(FIXTURES, "full_size.npz")) as z:
        recorded = {k: z[k] for k in z.files}
    live = os.environ.get("MRCNN_PARITY_LIVE") == "1"
    want_all = rec.record_full_size() if live else recorded
    state = rec.full_size_state_dict()
    keys = sorted(state)
    sums = np.array([[state[k].astype(np.float64).sum(), np.square(state[k].astype(np.float64)).sum()]
                     for k in keys])
    generator_exact = (keys == list(want_all["state_keys"])
                       and bool(np.allclose(sums, want_all["state_sums"], rtol=1e-9, atol=1e-9)))
    reader_exact = None
    if live:
        import torch

        from mrcnn.checkpoint.convert import read_checkpoint

        pth = str(tmp_path_factory.mktemp("parity") / "maskrcnn_random.pth")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
        read = read_checkpoint(pth)
        reader_exact = read.keys() == state.keys() and all(np.array_equal(read[k], state[k]) for k in state)
        stale = []
        for k, v in want_all.items():
            old = recorded.get(k)
            if old is None or old.shape != v.shape:
                stale.append(k)
            elif v.dtype.kind == "f" and not np.allclose(old, v, rtol=1e-5, atol=1e-5):
                stale.append(k)
            elif v.dtype.kind != "f" and not np.array_equal(old, v):
                stale.append(k)
    config = rec.full_size_config()
    model = MaskRCNN(config)
    report = convert_state_dict(model, state, "torchvision")
    results = []
    for i, image in enumerate(images):
        want = {k[len(f"img{i}/"):]: v for k, v in want_all.items() if k.startswith(f"img{i}/")}
        res = {}
        batch, (h, w) = rec.full_size_input(image, config)
        x, sizes = tf.constant(batch), tf.constant([[h, w]], tf.int32)
        kfeats = model.features(x, sizes, training=False)
        res["features_rel"] = {}
        for level, f in enumerate(kfeats):
            name = f"p{level + 2}"
            got = np.asarray(f[0]).ravel()[want[f"{name}_index"]]
            res["features_rel"][name] = float(np.abs(got - want[f"{name}_sample"]).max() / want[f"{name}_maxabs"])
        klogits, kdeltas = model.rpn.head(kfeats)
        counts = [int(k.shape[1]) for k in klogits]
        top = want["rpn_index"]
        kanchors = np.concatenate([a.numpy() for a in model.anchor_generator(x, kfeats)])
        res["anchors"] = [len(kanchors), int(want["num_anchors"])]
        res["anchors_max_abs"] = float(np.abs(kanchors[top] - want["anchors"]).max())
        kl = np.concatenate([k.numpy()[0] for k in klogits])
        kd = np.concatenate([k.numpy()[0] for k in kdeltas])
        res["rpn_logits_rel"] = float(np.abs(kl[top] - want["rpn_logits"]).max() / want["rpn_logits_maxabs"])
        res["rpn_deltas_rel"] = float(np.abs(kd[top] - want["rpn_deltas"]).max() / want["rpn_deltas_maxabs"])
        t_props = want["proposals"]

        def proposals(logits, deltas, x=x, kfeats=kfeats, sizes=sizes):
            p, _, valid = model.rpn.proposals(logits, deltas, model.anchor_generator(x, kfeats), sizes)
            return p.numpy()[0][valid.numpy()[0]]

        # Proposal stage alone, from torchvision's RPN outputs: its per-level pre-NMS top-1000
        # (all that torchvision's NMS sees) with their logits and deltas, every other anchor
        # at logit -1e4 (never in a top-1000: each level has more than 1000 anchors).
        t_logits, t_deltas = np.full(len(kl), -1e4, np.float32), np.zeros_like(kd)
        t_logits[top], t_deltas[top] = want["rpn_logits"], want["rpn_deltas"]
        bounds = np.cumsum([0] + counts)
        same_head = proposals([tf.constant(t_logits[None, a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
                              [tf.constant(t_deltas[None, a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        res["proposals_from_same_head"] = _set_match(same_head, t_props)
        # End to end (features -> RPN -> proposals): near-tied scores may swap NMS winners.
        res["proposals_end_to_end"] = _set_match(proposals(klogits, kdeltas), t_props)
        # Box head on torchvision's proposals (the first HEAD_ROWS rows recorded).
        kcls, kbox = model.roi_heads.box_forward(kfeats, tf.constant(t_props[None]))
        rows = len(want["box_cls"])
        res["box_head_same_rois"] = {
            "rois": len(t_props),
            "cls_logits_rel": float(np.abs(kcls[0].numpy()[:rows] - want["box_cls"]).max() / want["box_cls_maxabs"]),
            "box_deltas_rel": float(np.abs(kbox[0].numpy()[:rows] - want["box_deltas"]).max()
                                    / want["box_deltas_maxabs"])}
        # Mask head on torchvision's detections (the detected class' channel recorded).
        t_det_boxes, t_scores, t_labels = want["boxes"], want["scores"], want["labels"]
        kmask = model.roi_heads.mask_head(model.roi_heads.mask_pooler(kfeats, tf.constant(t_det_boxes[None])))
        k_logits = _pick(kmask[0].numpy(), t_labels)
        res["mask_head_same_boxes"] = {"boxes": len(t_det_boxes), "mask_logits_rel": float(
            np.abs(k_logits - want["mask_logits"]).max() / want["mask_logits_maxabs"])}
        # Final detections, each model end to end from the same network input.
        out = {k: v.numpy()[0] for k, v in model({"images": x, "image_sizes": sizes}).items()}
        n = int(out["num_detections"])
        t_masks = 1.0 / (1.0 + np.exp(-want["mask_logits"].astype(np.float64)))
        match = _match(t_det_boxes, t_labels, out["boxes"][:n], out["class_ids"][:n], 1.0)
        ok = np.where(match >= 0)[0]
        k_same = 0.5 * (1.0 + np.tanh(0.5 * k_logits))  # sigmoid, on torchvision's boxes
        same_box = [_mask_iou(paste_masks(t_masks[i:i + 1], t_det_boxes[i:i + 1], (h, w))[..., 0],
                              paste_masks(k_same[i:i + 1], t_det_boxes[i:i + 1], (h, w))[..., 0])
                    for i in range(len(t_det_boxes))]
        own_box = [_mask_iou(paste_masks(t_masks[i:i + 1], t_det_boxes[i:i + 1], (h, w))[..., 0],
                             paste_masks(out["masks"][j:j + 1], out["boxes"][j:j + 1], (h, w))[..., 0])
                   for i, j in zip(ok, match[ok])]
        res["detections"] = {
            "count": [n, len(t_det_boxes)], "matched": int(len(ok)),
            "score_range": [float(t_scores.min()), float(t_scores.max())] if len(t_scores) else None,
            "max_box_px": float(np.abs(out["boxes"][match[ok]] - t_det_boxes[ok]).max()) if len(ok) else None,
            "max_score_diff": float(np.abs(out["scores"][match[ok]] - t_scores[ok]).max()) if len(ok) else None,
            "mask_texture": _texture(t_masks),
            "mask_iou_same_box": _stats(same_box),
            "mask_iou_own_box": _stats(own_box),
            "max_mask_prob_diff_same_box": float(np.abs(k_same - t_masks).max()),
        }
        # End to end from the original photo: detect() vs torchvision's own transform.
        got = model.detect([image])[0]
        e_boxes = want["e2e_boxes"]
        e_ours_paste = paste_masks(want["e2e_masks"].astype(np.float32), e_boxes, image.shape[:2])
        match = _match(e_boxes, want["e2e_labels"], got["rois"], got["class_ids"], 1.0)
        ok = np.where(match >= 0)[0]
        res["detect_vs_torchvision"] = {
            "count": [len(got["rois"]), len(e_boxes)], "matched": int(len(ok)),
            "max_box_px": float(np.abs(got["rois"][match[ok]] - e_boxes[ok]).max()) if len(ok) else None,
            "max_score_diff": float(np.abs(got["scores"][match[ok]] - want["e2e_scores"][ok]).max())
            if len(ok) else None,
            # torchvision's 28x28 masks pasted with this project's (Detectron2's) rule vs detect().
            "mask_iou_same_paste_rule": _stats([_mask_iou(e_ours_paste[..., i], got["masks"][..., j])
                                                for i, j in zip(ok, match[ok])]),
        }
        results.append(res)
    PARITY.update({"images": list(rec.FULL_IMAGES), "live": live, "generator_exact": generator_exact,
                   "reader_exact": reader_exact, "stale_fixture_keys": stale[:10] if live else None,
                   "num_torchvision_keys": int(want_all["num_torchvision_keys"]), "state_keys": len(state),
                   "converted_tensors": len(report["keys"]), "ignored": len(report["ignored"]),
                   "per_image": results})
    print("\nparity:", json.dumps(PARITY, indent=1))
    if os.environ.get("MRCNN_PARITY_REPORT"):
        with open(os.environ["MRCNN_PARITY_REPORT"], "w") as f:
            json.dump(PARITY, f, indent=1)
    return PARITY


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_reader_and_conversion(full_parity):
    """The NumPy weight generator reproduces what torchvision was given (per-tensor sums),
    every tensor is converted (torchvision's 360 keys = these + 53 BN counters), and in live
    mode torch.save -> read_checkpoint (no torch) is exact and full_size.npz is current."""
    assert full_parity["generator_exact"], "full_size_state_dict() no longer gives the recorded weights"
    assert full_parity["num_torchvision_keys"] == 360
    assert full_parity["converted_tensors"] + full_parity["ignored"] == full_parity["state_keys"] == 360 - 53
    if full_parity["live"]:
        assert full_parity["reader_exact"], "read_checkpoint (no torch) differs from torch's state_dict"
        assert not full_parity["stale_fixture_keys"], ("full_size.npz differs from live torchvision; rerun "
                                                       f"scripts/record_parity_fixtures.py: {full_parity['stale_fixture_keys']}")


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_backbone_fpn_features(full_parity):
    for res in full_parity["per_image"]:
        assert max(res["features_rel"].values()) < 1e-4, res["features_rel"]


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_rpn_and_proposals(full_parity):
    for res in full_parity["per_image"]:
        assert res["anchors_max_abs"] == 0.0
        assert res["rpn_logits_rel"] < 1e-4 and res["rpn_deltas_rel"] < 1e-4
        same = res["proposals_from_same_head"]  # the proposal stage alone
        assert same["count"][0] == same["count"][1] and same["matched"] == 1.0, same
        assert same["max_abs_px_matched"] < 1e-2, same
        e2e = res["proposals_end_to_end"]  # near-tied objectness may swap NMS winners
        assert e2e["count"][0] == e2e["count"][1] and e2e["matched"] >= 0.9, e2e


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_box_head_same_rois(full_parity):
    for res in full_parity["per_image"]:
        r = res["box_head_same_rois"]
        assert r["cls_logits_rel"] < 1e-4 and r["box_deltas_rel"] < 1e-4, r


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_mask_head_same_boxes(full_parity):
    for res in full_parity["per_image"]:
        r = res["mask_head_same_boxes"]
        assert r["boxes"] > 0 and r["mask_logits_rel"] < 1e-4, r


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_final_detections(full_parity):
    for res in full_parity["per_image"]:
        d = res["detections"]
        assert d["count"][1] > 0, "the random model detects nothing: nothing compared"
        assert d["matched"] >= 0.95 * d["count"][1], d
        assert d["max_box_px"] <= 1.0 and d["max_score_diff"] <= 1e-3, d
        assert d["mask_iou_same_box"]["min"] >= 0.98, d
        # Each model's own box (sub-pixel apart) on a random, high-frequency mask: see docs/weights.md.
        assert d["mask_iou_own_box"]["mean"] >= 0.98, d


@pytest.mark.slow  # ~90 s for the shared full_parity fixture (2 CPU cores)
def test_full_size_parity_detect_vs_torchvision_end_to_end(full_parity):
    for res in full_parity["per_image"]:
        d = res["detect_vs_torchvision"]
        assert d["count"][1] > 0 and d["matched"] >= 0.95 * d["count"][1], d
        assert d["max_box_px"] <= 1.0 and d["max_score_diff"] <= 1e-3, d
        # Random masks are noise at the 28x28 cell scale ("mask_texture" ~0.5), so boxes
        # 0.02 px apart (float resize differences) already move pixels; docs/weights.md.
        assert d["mask_iou_same_paste_rule"]["mean"] >= 0.95, d
