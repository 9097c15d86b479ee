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
  see :func:`torchvision_inference`), for the inference parity tests.

Run (needs torch + torchvision; tests/torchvision_shim.py makes a CPU torch import a CUDA
torchvision wheel)::

    .venv/bin/python scripts/record_parity_fixtures.py [--out tests/fixtures/parity_torchvision]

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


def build_model(tv):
    """The small torchvision MaskRCNN, seeded; train mode; every candidate sampled."""
    import torch
    from torch import nn
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    torch.manual_seed(0)

    class Body(nn.Module):
        """torchvision's ResNet-50 (names and structure) at base width WIDTH."""

        def __init__(self):
            super().__init__()
            norm = FrozenBatchNorm2d
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
    backbone = BackboneWithFPN(body, {f"layer{i + 1}": str(i) for i in range(4)},
                               [WIDTH * 4 * 2**i for i in range(4)], FPN, extra_blocks=LastLevelMaxPool())
    net = MaskRCNN(
        backbone, num_classes=None, min_size=IMAGE, max_size=IMAGE,
        rpn_pre_nms_top_n_train=ALL, rpn_post_nms_top_n_train=ALL,
        rpn_batch_size_per_image=ALL, rpn_positive_fraction=1.0,
        box_batch_size_per_image=ALL, box_positive_fraction=1.0,
        box_head=TwoMLPHead(FPN * 7 * 7, FC), box_predictor=FastRCNNPredictor(FC, NUM_CLASSES),
        mask_head=MaskRCNNHeads(FPN, [MASK_CH] * 4, 1), mask_predictor=MaskRCNNPredictor(MASK_CH, MASK_CH, NUM_CLASSES),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, FrozenBatchNorm2d):
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


def record(steps: int = 2) -> dict[str, np.ndarray]:
    """Build, train ``steps`` SGD steps; returns every array the fixtures hold (flat dict)."""
    tv = _import_torchvision()
    import torch

    net = build_model(tv)
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
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
    return out


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
    args = parser.parse_args(argv)
    arrays = record()
    paths = save(arrays, args.out)
    total = sum(os.path.getsize(p) for p in paths)
    print("losses (rpn_class, rpn_box, class, box, mask):\n", arrays["losses"])
    print("proposals per step:", int(arrays["proposals1"]), int(arrays["proposals2"]))
    print(f"wrote {', '.join(paths)} ({total / 1e6:.2f} MB)")
    if total > 5e6:
        raise SystemExit("fixtures exceed 5 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
