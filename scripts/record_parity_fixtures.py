"""Record the torchvision training-step parity fixtures (tests/fixtures/parity_torchvision/).

A small torchvision Mask R-CNN with ``maskrcnn_resnet50_fpn``'s layer structure and
key names (ResNet-50 bottlenecks at base width ``WIDTH``, FPN ``FPN`` channels,
small box/mask heads, frozen BatchNorm with random statistics), seeded, is
trained for two steps of ``torch.optim.SGD`` (momentum 0.9, weight decay 1e-4 on
every parameter: frozen BN has none) on one fixed 64 x 64 image with two
instances, in a setting where every sampler takes every candidate
(``*_batch_size_per_image`` above the number of anchors / RoIs, positive
fraction 1.0, pre/post-NMS limits above the anchor count). Saved (npz):

- ``state.npz``: the state dict before training (what ``mrcnn convert-weights`` reads);
- ``batch.npz``: image [1, 64, 64, 3] float32 RGB 0-255, boxes [1, G, 4] (y1, x1, y2, x2),
  class ids [1, G], full masks [1, G, 64, 64] uint8;
- ``steps.npz``: ``losses`` [2, 5] (rpn_class, rpn_box, class, box, mask: mrcnn's order of
  ``Config.LOSS_NAMES``), the number of proposals torchvision's RPN kept at each step
  (``proposals1``, ``proposals2``: with the 2 GT boxes, the RoI candidates, all sampled), and
  every parameter after step 1 and step 2 (``step1/<key>``, ``step2/<key>``);
- ``inference.npz``: the untrained model's eval-mode outputs of every stage on the same
  image (FPN maps, RPN head, proposals, detections and their 28 x 28 mask probabilities;
  see :func:`torchvision_inference`), for the inference parity tests;
- ``full_size.npz``: torchvision's outputs for a full-size ``maskrcnn_resnet50_fpn`` (91
  classes) whose weights :func:`full_size_state_dict` regenerates with NumPy from a seed,
  on two tiny_coco photos (see :func:`record_full_size`);
- ``shim.npz``: torchvision's RoIAlign and batched NMS on the cases of
  tests/roi_align_reference.py (see :func:`record_shim`).

Run (needs torch + torchvision; tests/torchvision_shim.py makes a CPU torch import a CUDA
torchvision wheel)::

    .venv/bin/python scripts/record_parity_fixtures.py [--out tests/fixtures/parity_torchvision]
        [--full-size-only]   # keep the small-model fixtures, rewrite shim.npz and full_size.npz

``tests/test_parity_torchvision.py`` imports :func:`record` for its live mode
(``MRCNN_PARITY_LIVE=1``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "parity_torchvision")
DEFAULT_OUT_V2 = os.path.join(HERE, "..", "tests", "fixtures", "parity_torchvision_v2")

# Network and training setting shared with tests/test_parity_torchvision.py.
WIDTH, FPN, FC, MASK_CH, NUM_CLASSES = 4, 8, 16, 8, 3
IMAGE = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4
# Above the anchor count of a 64 x 64 image (3 x (16^2 + 8^2 + 4^2 + 2^2 + 1) = 1023) and
# the RoI candidates (proposals + GT): every sampler takes every candidate.
ALL = 1100
LOSS_KEYS = (("loss_objectness", "rpn_class_loss"), ("loss_rpn_box_reg", "rpn_box_loss"),
             ("loss_classifier", "class_loss"), ("loss_box_reg", "box_loss"), ("loss_mask", "mask_loss"))
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def make_batch() -> dict[str, np.ndarray]:
    """One 64 x 64 image (smooth random texture, integer 0-255 values) with two instances.

    The masks are constant (all ones / all zeros): torchvision builds mask targets with
    RoIAlign ``aligned=False`` and this project with ``aligned=True`` (Detectron2's
    rule, docs/design.md), which differ by half a pixel on a mask edge; on a constant
    mask both give the same targets, so the mask loss is compared exactly.
    """
    rng = np.random.default_rng(11)
    coarse = rng.uniform(0, 255, (8, 8, 3))
    image = np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 20, (IMAGE, IMAGE, 3))
    image = np.clip(np.round(image), 0, 255).astype(np.float32)
    boxes = np.array([[6.0, 8.0, 40.0, 36.0], [24.0, 30.0, 60.0, 62.0]], np.float32)  # y1 x1 y2 x2
    masks = np.stack([np.ones((IMAGE, IMAGE), np.uint8), np.zeros((IMAGE, IMAGE), np.uint8)])
    return {"images": image[None], "gt_boxes": boxes[None], "gt_class_ids": np.array([[1, 2]], np.int32),
            "gt_masks": masks[None], "image_sizes": np.array([[IMAGE, IMAGE]], np.int32)}


def _import_torchvision():
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from torchvision_shim import import_torchvision

    tv = import_torchvision()
    if tv is None:
        raise SystemExit("torch and torchvision are needed (see docs/weights.md)")
    return tv


def build_model(tv, variant: str = "v1"):
    """The small torchvision MaskRCNN, seeded; train mode; every candidate sampled.

    ``variant="v2"``: maskrcnn_resnet50_fpn_v2's structure instead: trainable BatchNorm in
    the ResNet, the FPN (``norm_layer=nn.BatchNorm2d``), the 4conv1fc box head
    (``FastRCNNConvFCHead``) and the mask head; a two-conv RPN head. Every BatchNorm gets
    random affine terms and running statistics (so eval mode is not the identity)."""
    import torch
    from torch import nn
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import (
        FastRCNNConvFCHead,
        FastRCNNPredictor,
        TwoMLPHead,
    )
    from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    torch.manual_seed(0)

    class Body(nn.Module):
        """torchvision's ResNet-50 (names and structure) at base width WIDTH."""

        def __init__(self):
            super().__init__()
            norm = FrozenBatchNorm2d if variant == "v1" else nn.BatchNorm2d
            self.conv1 = nn.Conv2d(3, WIDTH, 7, 2, 3, bias=False)
            self.bn1 = norm(WIDTH)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = WIDTH
            for i, depth in enumerate((3, 4, 6, 3)):
                planes, stride = WIDTH * 2**i, (1 if i == 0 else 2)
                down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), norm(planes * 4))
                blocks = [Bottleneck(cin, planes, stride, down, norm_layer=norm)]
                blocks += [Bottleneck(planes * 4, planes, norm_layer=norm) for _ in range(depth - 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                cin = planes * 4

    body = Body()
    v2 = variant == "v2"
    bn = nn.BatchNorm2d if v2 else None
    backbone = BackboneWithFPN(body, {f"layer{i + 1}": str(i) for i in range(4)},
                               [WIDTH * 4 * 2**i for i in range(4)], FPN, extra_blocks=LastLevelMaxPool(),
                               norm_layer=bn)
    heads = {}
    if v2:
        heads = {"rpn_head": RPNHead(FPN, 3, conv_depth=2),
                 "box_head": FastRCNNConvFCHead((FPN, 7, 7), [FPN] * 4, [FC], norm_layer=bn)}
    net = MaskRCNN(
        backbone, num_classes=None, min_size=IMAGE, max_size=IMAGE,
        rpn_pre_nms_top_n_train=ALL, rpn_post_nms_top_n_train=ALL,
        rpn_batch_size_per_image=ALL, rpn_positive_fraction=1.0,
        box_batch_size_per_image=ALL, box_positive_fraction=1.0,
        box_head=heads.get("box_head", TwoMLPHead(FPN * 7 * 7, FC)), box_predictor=FastRCNNPredictor(FC, NUM_CLASSES),
        mask_head=MaskRCNNHeads(FPN, [MASK_CH] * 4, 1, norm_layer=bn),
        mask_predictor=MaskRCNNPredictor(MASK_CH, MASK_CH, NUM_CLASSES),
        **({"rpn_head": heads["rpn_head"]} if v2 else {}),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = module.weight.shape[0]
                # Random affine + statistics, small gammas: keeps the un-normalised random
                # ResNet's activations O(1) over 16 residual blocks.
                module.weight.copy_(0.3 + 0.4 * torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return net.train()


def torchvision_losses(net, batch) -> tuple[dict, dict]:
    """GeneralizedRCNN.forward in training without its transform (the image is already the
    network input: normalised here exactly as mrcnn normalises, no resize, no padding)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    x = (batch["images"] - MEAN) / STD
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    sizes = [tuple(int(v) for v in s) for s in batch["image_sizes"]]
    targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]].copy()),
                "labels": torch.from_numpy(c.astype(np.int64)),
                "masks": torch.from_numpy(m)} for b, c, m in
               zip(batch["gt_boxes"], batch["gt_class_ids"], batch["gt_masks"])]
    image_list = ImageList(images, sizes)
    features = net.backbone(images)
    counts = {}
    proposals, rpn_losses = net.rpn(image_list, features, targets)
    counts["proposals"] = int(sum(len(p) for p in proposals))
    _, head_losses = net.roi_heads(features, proposals, image_list.image_sizes, targets)
    return {**rpn_losses, **head_losses}, counts


def torchvision_inference(net, batch) -> dict[str, np.ndarray]:
    """Eval-mode outputs of every stage on the batch (the image is the network input):
    FPN maps ``p2..p6`` [1, C, h, w], RPN ``objectness{l}`` [1, A, h, w] and
    ``rpn_deltas{l}`` [1, 4A, h, w] (dx, dy, dw, dh per anchor), ``proposals`` [P, 4] and
    the detections ``boxes`` [D, 4] (x1, y1, x2, y2), ``scores`` [D], ``labels`` [D] and
    ``masks`` [D, 28, 28] (probabilities of the detected class, before the paste)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    x = (batch["images"] - MEAN) / STD
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    image_list = ImageList(images, [tuple(int(v) for v in s) for s in batch["image_sizes"]])
    was_training = net.training
    net.eval()
    out = {}
    with torch.no_grad():
        features = net.backbone(images)
        flist = list(features.values())
        for level, f in enumerate(flist):
            out[f"p{level + 2}"] = f.numpy()
        objectness, deltas = net.rpn.head(flist)
        for level, (o, d) in enumerate(zip(objectness, deltas)):
            out[f"objectness{level}"], out[f"rpn_deltas{level}"] = o.numpy(), d.numpy()
        proposals, _ = net.rpn(image_list, features)
        out["proposals"] = proposals[0].numpy()
        detections, _ = net.roi_heads(features, proposals, image_list.image_sizes)
        d = detections[0]
        out.update(boxes=d["boxes"].numpy(), scores=d["scores"].numpy(), labels=d["labels"].numpy(),
                   masks=d["masks"][:, 0].numpy())
    net.train(was_training)
    return {f"inference/{k}": v for k, v in out.items()}


def record(steps: int = 2, variant: str = "v1") -> dict[str, np.ndarray]:
    """Build, train ``steps`` SGD steps; returns every array the fixtures hold (flat dict).
    ``variant="v2"``: the v2-structured model, its BatchNorm layers in training mode."""
    tv = _import_torchvision()
    import torch

    net = build_model(tv, variant)
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    batch = make_batch()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    names = {id(p): k for k, p in net.named_parameters()}
    out = {f"state/{k}": v for k, v in state.items()}
    out.update({f"batch/{k}": v for k, v in batch.items()})
    out.update(torchvision_inference(net, batch))  # the untrained model, eval mode
    losses = []
    for step in range(1, steps + 1):
        values, counts = torchvision_losses(net, batch)
        losses.append([float(values[k].detach()) for k, _ in LOSS_KEYS])
        out[f"proposals{step}"] = np.array(counts["proposals"])
        optimizer.zero_grad()
        sum(values.values()).backward()
        optimizer.step()
        for p in params:
            out[f"step{step}/{names[id(p)]}"] = p.detach().numpy().copy()
    out["losses"] = np.array(losses, np.float64)
    if variant == "v2":
        out.update(float32_error(tv, variant, steps))
    return out


def float32_error(tv, variant: str, steps: int) -> dict[str, np.ndarray]:
    """torchvision's own float32 error: the same steps in float64, and per parameter
    ``f32err_step{n}/<key>`` = max|w32 - w64| / max|w64|. Trainable BatchNorm over the tiny
    maps of a 64 x 64 image (C5 is 2 x 2) is ill-conditioned: float32 rounding alone moves the
    early backbone weights by ~1e-3 of their size after one step, so that is the bound a
    float32 reimplementation can be held to there."""
    import torch

    runs = []
    global MEAN, STD
    mean, std = MEAN, STD
    try:
        for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
            MEAN, STD = mean.astype(np_dtype), std.astype(np_dtype)
            net = build_model(tv, variant).to(dtype)
            batch = {k: v.astype(np_dtype) if v.dtype == np.float32 else v for k, v in make_batch().items()}
            params = [p for p in net.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
            per_step = []
            for _ in range(steps):
                values, _ = torchvision_losses(net, batch)
                optimizer.zero_grad()
                sum(values.values()).backward()
                optimizer.step()
                per_step.append({k: p.detach().double().numpy().copy() for k, p in net.named_parameters()})
            runs.append(per_step)
    finally:
        MEAN, STD = mean, std
    out = {}
    for step, (a, b) in enumerate(zip(*runs), start=1):
        for k in a:
            out[f"f32err_step{step}/{k}"] = np.array(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-30))
    return out


# ----- full size: a NumPy-seeded maskrcnn_resnet50_fpn (91 classes) on two COCO photos ------
# Its 170 MB state dict is never stored: full_size_state_dict() regenerates it from FULL_SEED
# (NumPy only, so CI builds it without torch); full_size.npz holds torchvision's outputs.
FULL_SEED = 2026
FULL_NUM_CLASSES = 91
FULL_IMAGES = ("000000005802.jpg", "000000012448.jpg")
# ../shared/datasets (the project's rule); MRCNN_TINY_COCO overrides (e.g. from a git worktree).
TINY_COCO = os.path.join(os.environ.get("MRCNN_TINY_COCO") or os.path.join(HERE, "..", "..", "shared", "datasets",
                                                                           "tiny_coco"), "train2017")
FEATURE_SAMPLES = 4096  # sampled FPN values per level (the maps themselves are ~20 MB / image)
HEAD_ROWS = 100  # box-head rows (of torchvision's 1000 proposals) kept
RPN_TOP = 1000  # torchvision's pre-NMS top-k per level at test time
DEPTHS = (3, 4, 6, 3)


def full_size_state_dict(seed: int = FULL_SEED) -> dict[str, np.ndarray]:
    """``maskrcnn_resnet50_fpn(num_classes=91)``'s state dict (names and shapes, without the
    BatchNorm ``num_batches_tracked`` counters), float32, generated with NumPy from ``seed``.

    Scales keep the random network's activations O(1) and its outputs non-trivial: He
    normal convolutions, BatchNorm statistics random (mean N(0, 0.1^2), var U(0.5, 1.5)),
    gammas U(0.5, 1.0) except the last BN of each bottleneck (U(0.1, 0.3): 16 residual
    additions do not blow up), a class logit spread of ~3 so some of the 91-way softmax
    scores pass torchvision's 0.05 threshold, small box deltas.
    """
    rng = np.random.default_rng(seed)
    s: dict[str, np.ndarray] = {}

    def he(*shape, gain=2.0):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    def bn(prefix, n, lo=0.5, hi=1.0):
        s[f"{prefix}.weight"] = rng.uniform(lo, hi, n).astype(np.float32)
        s[f"{prefix}.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        s[f"{prefix}.running_mean"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        s[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)

    def bias(n, scale=0.01):
        return (scale * rng.standard_normal(n)).astype(np.float32)

    b = "backbone.body"
    s[f"{b}.conv1.weight"] = he(64, 3, 7, 7)
    bn(f"{b}.bn1", 64)
    cin = 64
    for i, depth in enumerate(DEPTHS):
        planes = 64 * 2**i
        for blk in range(depth):
            p = f"{b}.layer{i + 1}.{blk}"
            s[f"{p}.conv1.weight"] = he(planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = he(planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = he(planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4, 0.1, 0.3)
            if blk == 0:
                s[f"{p}.downsample.0.weight"] = he(planes * 4, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    for i in range(4):
        s[f"backbone.fpn.inner_blocks.{i}.0.weight"] = he(256, 256 * 2**i, 1, 1, gain=1.0)
        s[f"backbone.fpn.inner_blocks.{i}.0.bias"] = bias(256)
        s[f"backbone.fpn.layer_blocks.{i}.0.weight"] = he(256, 256, 3, 3, gain=1.0)
        s[f"backbone.fpn.layer_blocks.{i}.0.bias"] = bias(256)
    s["rpn.head.conv.0.0.weight"], s["rpn.head.conv.0.0.bias"] = he(256, 256, 3, 3), bias(256)
    s["rpn.head.cls_logits.weight"], s["rpn.head.cls_logits.bias"] = he(3, 256, 1, 1, gain=1.0), bias(3, 0.5)
    s["rpn.head.bbox_pred.weight"], s["rpn.head.bbox_pred.bias"] = he(12, 256, 1, 1, gain=0.01), bias(12)
    s["roi_heads.box_head.fc6.weight"], s["roi_heads.box_head.fc6.bias"] = he(1024, 256 * 7 * 7), bias(1024)
    s["roi_heads.box_head.fc7.weight"], s["roi_heads.box_head.fc7.bias"] = he(1024, 1024), bias(1024)
    p = "roi_heads.box_predictor"
    s[f"{p}.cls_score.weight"], s[f"{p}.cls_score.bias"] = he(91, 1024, gain=9.0), bias(91, 1.0)
    s[f"{p}.bbox_pred.weight"], s[f"{p}.bbox_pred.bias"] = he(364, 1024, gain=0.01), bias(364)
    for i in range(4):
        s[f"roi_heads.mask_head.{i}.0.weight"], s[f"roi_heads.mask_head.{i}.0.bias"] = he(256, 256, 3, 3), bias(256)
    p = "roi_heads.mask_predictor"
    # ConvTranspose2d weight is [in, out, kh, kw]: fan-in per output is in * 1 (stride 2, 2x2).
    s[f"{p}.conv5_mask.weight"] = (rng.standard_normal((256, 256, 2, 2)) * np.sqrt(2 / 256)).astype(np.float32)
    s[f"{p}.conv5_mask.bias"] = bias(256)
    s[f"{p}.mask_fcn_logits.weight"], s[f"{p}.mask_fcn_logits.bias"] = he(91, 256, 1, 1, gain=4.0), bias(91, 1.0)
    return s


def full_size_state_dict_v2(seed: int = FULL_SEED) -> dict[str, np.ndarray]:
    """``maskrcnn_resnet50_fpn_v2(num_classes=91)``'s state dict (without ``num_batches_tracked``),
    float32, from NumPy: the ResNet and predictors of :func:`full_size_state_dict` (same seed),
    then, from a second stream (``seed + 1``), v2's parts: FPN convs without bias, each followed
    by BatchNorm (``inner_blocks.i.1`` / ``layer_blocks.i.1``), a second RPN conv
    (``rpn.head.conv.1.0``), the 4conv1fc box head (``box_head.{0..3}.0`` conv, ``.1`` BN,
    ``box_head.5`` the FC) and BatchNorm after each mask-head conv (no conv bias)."""
    s = full_size_state_dict(seed)
    rng = np.random.default_rng(seed + 1)

    def he(*shape, gain=2.0):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    def bn(prefix, n, lo=0.5, hi=1.0):
        s[f"{prefix}.weight"] = rng.uniform(lo, hi, n).astype(np.float32)
        s[f"{prefix}.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        s[f"{prefix}.running_mean"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        s[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)

    for i in range(4):
        for block in ("inner_blocks", "layer_blocks"):
            del s[f"backbone.fpn.{block}.{i}.0.bias"]
            bn(f"backbone.fpn.{block}.{i}.1", 256)
    s["rpn.head.conv.1.0.weight"] = he(256, 256, 3, 3)
    s["rpn.head.conv.1.0.bias"] = (0.01 * rng.standard_normal(256)).astype(np.float32)
    for k in ("fc6", "fc7"):
        del s[f"roi_heads.box_head.{k}.weight"], s[f"roi_heads.box_head.{k}.bias"]
    for i in range(4):
        s[f"roi_heads.box_head.{i}.0.weight"] = he(256, 256, 3, 3)
        bn(f"roi_heads.box_head.{i}.1", 256)
        del s[f"roi_heads.mask_head.{i}.0.bias"]
        bn(f"roi_heads.mask_head.{i}.1", 256)
    s["roi_heads.box_head.5.weight"] = he(1024, 256 * 7 * 7)
    s["roi_heads.box_head.5.bias"] = (0.01 * rng.standard_normal(1024)).astype(np.float32)
    return s


def full_size_images() -> list[np.ndarray]:
    """The two tiny_coco photos, uint8 RGB [H, W, 3]; FileNotFoundError names a missing one."""
    from PIL import Image

    out = []
    for name in FULL_IMAGES:
        path = os.path.join(TINY_COCO, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"parity image {os.path.abspath(path)} not found")
        out.append(np.array(Image.open(path).convert("RGB")))
    return out


def full_size_config(variant: str = "v1"):
    from mrcnn.configs import TorchvisionCOCO, TorchvisionCOCOv2

    return TorchvisionCOCO() if variant == "v1" else TorchvisionCOCOv2()


def full_size_input(image: np.ndarray, config) -> tuple[np.ndarray, tuple[int, int]]:
    """mrcnn's own inference resize + pad (``prepare_image_batch``): float32 [1, Hp, Wp, 3]
    raw RGB and the valid (h, w). Both sides' stage-by-stage comparison start from it, so no
    resize difference enters; the end-to-end comparison uses each side's own resize."""
    sys.path.insert(0, os.path.join(HERE, ".."))
    from mrcnn.data.pipeline import prepare_image_batch

    batch, sizes, _ = prepare_image_batch([image], config)
    return batch, (int(sizes[0][0]), int(sizes[0][1]))


def sample_index(n: int, level: int) -> np.ndarray:
    return np.sort(np.random.default_rng(100 + level).choice(n, FEATURE_SAMPLES, replace=False)).astype(np.int64)


def record_full_size(variant: str = "v1") -> dict[str, np.ndarray]:
    """torchvision's outputs for :func:`full_size_state_dict` on :data:`FULL_IMAGES` (flat
    dict; boxes in mrcnn's (y1, x1, y2, x2), RPN deltas in (dy, dx, dh, dw), anchor order
    (level, y, x, anchor) as both sides flatten them). Per image ``img{i}/``:

    - ``p{l}_index`` / ``p{l}_sample`` / ``p{l}_maxabs``: FPN values at sampled flat
      [H, W, C] positions and the map's max |value|;
    - ``rpn_index`` [5 x 1000]: each level's pre-NMS top-1000 anchors (global index),
      ``rpn_logits``, ``rpn_deltas``, ``anchors`` there, ``rpn_*_maxabs``, ``num_anchors``;
    - ``proposals`` [1000, 4]; ``box_cls`` [100, 91] / ``box_deltas`` [100, 91, 4] of the box
      head on the first 100 of them (+ max |.| over all 1000);
    - ``boxes``, ``scores``, ``labels``, ``mask_logits`` [D, 28, 28] (detected class; + max
      over all classes): detections from the same network input;
    - ``e2e_boxes`` (original pixels), ``e2e_scores``, ``e2e_labels``, ``e2e_masks`` float16
      [D, 28, 28]: ``net([image])`` with torchvision's own transform, masks before the paste.

    Plus ``state_keys`` / ``state_sums`` (sum, sum of squares per tensor: the NumPy generator
    must reproduce what torchvision was given) and ``num_torchvision_keys``.
    """
    tv = _import_torchvision()
    import torch
    from torchvision.models.detection.image_list import ImageList

    build = (tv.models.detection.maskrcnn_resnet50_fpn if variant == "v1"
             else tv.models.detection.maskrcnn_resnet50_fpn_v2)
    net = build(weights=None, weights_backbone=None, num_classes=FULL_NUM_CLASSES).eval()
    state = full_size_state_dict() if variant == "v1" else full_size_state_dict_v2()
    ref = net.state_dict()
    extra = sorted(set(ref) - set(state))
    if set(state) - set(ref) or any(not k.endswith("num_batches_tracked") for k in extra):
        raise SystemExit(f"full_size_state_dict keys differ from torchvision: {sorted(set(state) ^ set(ref))[:5]}")
    bad = [k for k in state if tuple(ref[k].shape) != state[k].shape]
    if bad:
        raise SystemExit(f"full_size_state_dict shapes differ from torchvision: {bad[:5]}")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    keys = sorted(state)
    out = {"state_keys": np.array(keys), "num_torchvision_keys": np.array(len(ref)),
           "state_sums": np.array([[state[k].astype(np.float64).sum(), np.square(state[k].astype(np.float64)).sum()]
                                   for k in keys])}
    config = full_size_config(variant)
    yx = [1, 0, 3, 2]
    for i, image in enumerate(full_size_images()):
        p = f"img{i}/"
        batch, (h, w) = full_size_input(image, config)
        x = np.zeros_like(batch[0])
        x[:h, :w] = (batch[0, :h, :w] - MEAN) / STD  # torchvision pads after normalising
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        image_list = ImageList(t, [(h, w)])
        with torch.no_grad():
            feats = net.backbone(t)
            flist = list(feats.values())
            for level, f in enumerate(flist):
                hwc = f[0].permute(1, 2, 0).numpy().ravel()
                idx = sample_index(hwc.size, level)
                out[f"{p}p{level + 2}_index"], out[f"{p}p{level + 2}_sample"] = idx, hwc[idx]
                out[f"{p}p{level + 2}_maxabs"] = np.array(np.abs(hwc).max())
            objectness, rpn_deltas = net.rpn.head(flist)
            logits = [o.permute(0, 2, 3, 1).reshape(-1).numpy() for o in objectness]
            deltas = [d.view(1, 3, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(-1, 4).numpy()[:, yx]
                      for d in rpn_deltas]
            top, start = [], 0
            for lg in logits:
                top.append(start + np.argsort(-lg, kind="stable")[:RPN_TOP])
                start += lg.size
            top = np.concatenate(top)
            all_logits, all_deltas = np.concatenate(logits), np.concatenate(deltas)
            anchors = net.rpn.anchor_generator(image_list, flist)[0].numpy()[:, yx]
            out.update({f"{p}rpn_index": top, f"{p}rpn_logits": all_logits[top], f"{p}rpn_deltas": all_deltas[top],
                        f"{p}anchors": anchors[top], f"{p}num_anchors": np.array(len(anchors)),
                        f"{p}rpn_logits_maxabs": np.array(np.abs(all_logits).max()),
                        f"{p}rpn_deltas_maxabs": np.array(np.abs(all_deltas).max())})
            props, _ = net.rpn(image_list, feats)
            dets, _ = net.roi_heads(feats, props, image_list.image_sizes)
            heads = net.roi_heads
            cls, box = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, props, image_list.image_sizes)))
            box = box.reshape(len(cls), -1, 4).numpy()[..., yx]
            d = dets[0]
            mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(feats, [d["boxes"]],
                                                                                  image_list.image_sizes))).numpy()
            labels = d["labels"].numpy()
            out.update({f"{p}proposals": props[0].numpy()[:, yx], f"{p}box_cls": cls.numpy()[:HEAD_ROWS],
                        f"{p}box_deltas": box[:HEAD_ROWS], f"{p}box_cls_maxabs": np.array(np.abs(cls.numpy()).max()),
                        f"{p}box_deltas_maxabs": np.array(np.abs(box).max()),
                        f"{p}boxes": d["boxes"].numpy()[:, yx], f"{p}scores": d["scores"].numpy(), f"{p}labels": labels,
                        f"{p}mask_logits": mask_logits[np.arange(len(labels)), labels],
                        f"{p}mask_logits_maxabs": np.array(np.abs(mask_logits).max()),
                        f"{p}image_size": np.array([h, w])})
            # net([image]) in pieces, keeping the 28x28 masks before torchvision's paste.
            original = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            il2, _ = net.transform([original])
            f2 = net.backbone(il2.tensors)
            raw = heads(f2, net.rpn(il2, f2)[0], il2.image_sizes)[0]
            e2e = net.transform.postprocess([dict(r) for r in raw], il2.image_sizes, [tuple(original.shape[-2:])])[0]
            out.update({f"{p}e2e_boxes": e2e["boxes"].numpy()[:, yx], f"{p}e2e_scores": e2e["scores"].numpy(),
                        f"{p}e2e_labels": e2e["labels"].numpy(),
                        f"{p}e2e_masks": raw[0]["masks"][:, 0].numpy().astype(np.float16)})
    return out


def record_shim() -> dict[str, np.ndarray]:
    """torchvision's RoIAlign (the shim's kernel entry point) on the cases of
    tests/roi_align_reference.py, and its ``batched_nms`` keep indices on 500 random boxes
    (seeded): ``roi_align_{aligned}_{ratio}`` (features NHWC), ``nms_keep`` (sorted)."""
    tv = _import_torchvision()
    import torch
    from roi_align_reference import ARANGE_BOX, arange_features, random_case
    from torchvision_shim import roi_align_kernel_semantics

    def run(features, boxes, indices, size, scale, ratio, aligned):
        rois = np.concatenate([np.asarray(indices, np.float32)[:, None], boxes[:, [1, 0, 3, 2]]], 1)
        out = roi_align_kernel_semantics(torch.from_numpy(features).permute(0, 3, 1, 2),
                                         torch.from_numpy(rois), scale, size, size, ratio, aligned)
        return out.permute(0, 2, 3, 1).numpy()

    out = {}
    for aligned in (False, True):
        out[f"roi_align_arange_{int(aligned)}"] = run(arange_features(), ARANGE_BOX, [0], 4, 1.0, 0, aligned)
        for ratio in (2, 0):
            f, b, idx = random_case(np.random.default_rng(ratio + 10 * aligned))
            out[f"roi_align_{int(aligned)}_{ratio}"] = run(f, b, idx, 3, 0.5, ratio, aligned)
    boxes, scores, levels = nms_case()
    keep = tv.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(levels), 0.7)
    out["nms_keep"] = np.sort(keep.numpy())
    return out


def nms_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """500 random boxes (x1, y1, x2, y2), scores and levels 0..4 (seed 0)."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (500, 2))], 1).astype(np.float32)
    scores = rng.uniform(size=500).astype(np.float32)
    levels = rng.integers(0, 5, 500)
    return boxes, scores, levels


def save(arrays: dict[str, np.ndarray], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    groups = {"state": {}, "batch": {}, "inference": {}, "steps": {}}
    for k, v in arrays.items():
        head, _, rest = k.partition("/")
        if head in ("state", "batch", "inference"):
            groups[head][rest] = v
        else:
            groups["steps"][k] = v
    paths = []
    for name, content in groups.items():
        path = os.path.join(out_dir, f"{name}.npz")
        np.savez_compressed(path, **content)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--full-size-only", action="store_true", help="only rewrite shim.npz and full_size.npz")
    parser.add_argument("--model", choices=("v1", "v2"), default="v1",
                        help="v1: maskrcnn_resnet50_fpn (tests/fixtures/parity_torchvision); v2: "
                             "maskrcnn_resnet50_fpn_v2 (tests/fixtures/parity_torchvision_v2, no shim.npz)")
    args = parser.parse_args(argv)
    if args.model == "v2":
        return main_v2(args.out if args.out != DEFAULT_OUT else DEFAULT_OUT_V2, args.full_size_only)
    paths = [os.path.join(args.out, f"{n}.npz") for n in ("state", "batch", "inference", "steps")]
    if not args.full_size_only:
        arrays = record()
        paths = save(arrays, args.out)
        print("losses (rpn_class, rpn_box, class, box, mask):\n", arrays["losses"])
        print("proposals per step:", int(arrays["proposals1"]), int(arrays["proposals2"]))
    path = os.path.join(args.out, "shim.npz")
    np.savez_compressed(path, **record_shim())
    paths.append(path)
    full = record_full_size()
    path = os.path.join(args.out, "full_size.npz")
    np.savez_compressed(path, **full)
    paths.append(path)
    for i in range(len(FULL_IMAGES)):
        print(f"full size, image {i}: {len(full[f'img{i}/proposals'])} proposals, "
              f"{len(full[f'img{i}/scores'])} detections (scores {full[f'img{i}/scores'].min():.3f}.."
              f"{full[f'img{i}/scores'].max():.3f}), end to end {len(full[f'img{i}/e2e_scores'])}")
    total = sum(os.path.getsize(p) for p in paths)
    print(f"wrote {', '.join(paths)} ({total / 1e6:.2f} MB)")
    if total > 5e6:
        raise SystemExit("fixtures exceed 5 MB")
    return 0


def main_v2(out: str, full_size_only: bool = False) -> int:
    """Write the maskrcnn_resnet50_fpn_v2 fixtures: state/batch/inference/steps (the small v2
    model; BatchNorm in training mode for the two steps) and full_size.npz."""
    paths = [os.path.join(out, f"{n}.npz") for n in ("state", "batch", "inference", "steps")]
    if not full_size_only:
        arrays = record(variant="v2")
        paths = save(arrays, out)
        print("losses (rpn_class, rpn_box, class, box, mask):\n", arrays["losses"])
    full = record_full_size("v2")
    path = os.path.join(out, "full_size.npz")
    np.savez_compressed(path, **full)
    paths.append(path)
    for i in range(len(FULL_IMAGES)):
        print(f"full size v2, image {i}: {len(full[f'img{i}/proposals'])} proposals, "
              f"{len(full[f'img{i}/scores'])} detections, end to end {len(full[f'img{i}/e2e_scores'])}")
    total = sum(os.path.getsize(p) for p in paths)
    print(f"wrote {', '.join(paths)} ({total / 1e6:.2f} MB)")
    if total > 5e6:
        raise SystemExit("fixtures exceed 5 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
