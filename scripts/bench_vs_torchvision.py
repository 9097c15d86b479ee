"""Side by side with torchvision: the same weights, the same photos, one process.

    python scripts/bench_vs_torchvision.py [--images 3] [--runs 3] [--threads 2]
    python scripts/bench_vs_torchvision.py --train [--steps 3] [--size 512] [--threads 2] [--conv direct winograd]

torchvision's ``maskrcnn_resnet50_fpn`` (91 classes) is initialised at random
(seeded), saved, converted with ``mrcnn.checkpoint.convert.convert_torchvision`` and loaded
into ``MaskRCNN(TorchvisionCOCO())``; both run on real COCO photos from
``../shared/datasets/tiny_coco`` at 800 px (torchvision's resize rule, which
ours reproduces), interleaved, with the same number of intra-op threads. The
score threshold is 0 on both sides so that both run the mask head on 100
detections, as a trained model does on a busy photo.

Prints end to end (``detect()`` vs ``net([image])``) and per stage: backbone +
FPN, RPN + proposals, box head + NMS, mask head, paste (mask resampling into the
image). Needs ``pip install torch==2.13.0`` and ``pip install --no-deps
torchvision==0.28.0``, then ``bash ../shared/tools/torchvision-cpu-ops/install.sh
VENV/bin/python``, which builds torchvision's own C++ CPU kernels (NMS, RoIAlign and
its backward): the figures in docs/benchmarks.md are measured with them. Without
them torchvision's RoIAlign and NMS run through ``tests/torchvision_shim.py``
(pure Python/PyTorch, far slower: the README's old 4.6x came from there); the
script prints which.

Both frameworks run in this one process: the Python needs TensorFlow and torch. With
torch in a separate venv (torch drags its own numpy), put a folder of links to that
venv's ``torch``, ``torchgen``, ``torchvision``, ``torchvision.libs``, ``functorch`` and
their pure-Python dependencies (``sympy``, ``mpmath``, ``jinja2``, ``filelock``,
``fsspec``) on ``PYTHONPATH`` after the checkout, and run the project's Python.
``--photos``: the tiny_coco photos are looked for next to the checkout
(``../shared/datasets``); from a worktree elsewhere, name the folder.

``--model v2``: ``maskrcnn_resnet50_fpn_v2`` against ``MaskRCNN(TorchvisionCOCOv2())``
(for ``--train``: every stage trained, BatchNorm in training mode on both sides, as
torchvision builds v2 without pretrained weights).

``--train``: one SGD step (momentum 0.9, weight decay 1e-4) of each, interleaved,
on the same batch: 2 images of ``--size`` px with 5 instances each (random
smooth textures with rectangle and ellipse masks), 91 classes, frozen BN, the
stem and stage 1 frozen (torchvision ``trainable_backbone_layers=3``, built
explicitly: torchvision ignores that argument and switches to trainable
BatchNorm when no pretrained weights are given), the same converted random
weights, and then our step split into stages (see ``train_profile``). ``--conv``: one
of our models per ``Config.TRAINING_CONV_ALGORITHM`` value ("direct", "auto",
"winograd"), all interleaved with torchvision, each profiled.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_COCO = os.path.join(ROOT, "..", "shared", "datasets", "tiny_coco", "train2017")


def _kernels(tv) -> str:
    """Which torchvision kernels run: its compiled C++ ops, or the test shim's Python ones."""
    if tv.extension._has_ops():
        return "torchvision's compiled C++ CPU kernels"
    return "tests/torchvision_shim.py (pure PyTorch NMS / RoIAlign; not representative of torchvision's speed)"


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", default=TINY_COCO, help="folder of .jpg photos (inference; default: %(default)s)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="compare one training step instead")
    parser.add_argument("--model", choices=("v1", "v2"), default="v1",
                        help="v1: maskrcnn_resnet50_fpn / TorchvisionCOCO; v2: maskrcnn_resnet50_fpn_v2 / "
                             "TorchvisionCOCOv2 (BatchNorm FPN and heads, 2-conv RPN head, 4conv1fc box head)")
    parser.add_argument("--steps", type=int, default=3, help="--train: timed steps per side")
    parser.add_argument("--size", type=int, default=512, help="--train: image side")
    parser.add_argument("--conv", nargs="+", default=["auto"], choices=["auto", "direct", "winograd"],
                        help="--train: our Config.TRAINING_CONV_ALGORITHM; several = one model each, interleaved")
    parser.add_argument("--bfloat16", action="store_true",
                        help="--train: ours with MIXED_PRECISION='bfloat16', torchvision under torch.autocast bf16")
    args = parser.parse_args()
    if args.train:
        train(args)
        return

    paths = sorted(glob.glob(os.path.join(args.photos, "*.jpg")))[: args.images]
    if not paths:
        sys.exit(f"no .jpg photos under {args.photos} (the shared tiny_coco dataset; pass --photos DIR)")

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torchvision_shim import import_torchvision

    tv = import_torchvision()

    from mrcnn.checkpoint.convert import convert_torchvision
    from mrcnn.configs import TorchvisionCOCO, TorchvisionCOCOv2
    from mrcnn.inference.preprocess import prepare_image_batch
    from mrcnn.model import MaskRCNN
    from mrcnn.ops.masks import paste_masks

    torch.manual_seed(0)
    build = (tv.models.detection.maskrcnn_resnet50_fpn if args.model == "v1"
             else tv.models.detection.maskrcnn_resnet50_fpn_v2)
    net = build(weights=None, weights_backbone=None, num_classes=91).eval()
    net.roi_heads.score_thresh = 0.0
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_vs_tv_{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(tmp, "tv.pth"))
    config = (TorchvisionCOCO if args.model == "v1" else TorchvisionCOCOv2)(DETECTION_MIN_CONFIDENCE=0.0)
    convert_torchvision(os.path.join(tmp, "tv.pth"), os.path.join(tmp, "ours.weights.h5"), config)
    model = MaskRCNN(config)
    model.load_weights(os.path.join(tmp, "ours.weights.h5"))

    images = [np.array(Image.open(p).convert("RGB")) for p in paths]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in images]

    # ----- our stages, each a traced function over the previous stage's outputs -----
    @tf.function(reduce_retracing=True)
    def ours_features(x, sizes):
        return model.features(x, sizes, training=False)

    @tf.function(reduce_retracing=True)
    def ours_rpn(x, sizes, features):
        anchors = model.anchor_generator(x, features)
        proposals, valid, _ = model.rpn(features, anchors, sizes)
        return proposals, valid

    @tf.function(reduce_retracing=True)
    def ours_boxes(features, proposals, valid, sizes):
        heads = model.roi_heads
        logits, deltas = heads.box_forward(features, proposals)
        return heads.postprocess(proposals, valid, logits, deltas, sizes)

    @tf.function(reduce_retracing=True)
    def ours_masks(features, boxes, class_ids):
        return tf.sigmoid(model.roi_heads.mask_logits(features, boxes, class_ids))

    def ours_staged(image, times):
        t0 = time.perf_counter()
        batch, sizes, scales = prepare_image_batch([image], config)
        x, s = tf.constant(batch, tf.float32), tf.constant(sizes, tf.int32)
        feats = ours_features(x, s)
        _ = [f.numpy() for f in feats]
        t1 = time.perf_counter()
        proposals, valid = ours_rpn(x, s, feats)
        proposals.numpy()
        t2 = time.perf_counter()
        det = ours_boxes(feats, proposals, valid, s)
        det.boxes.numpy()
        t3 = time.perf_counter()
        masks = ours_masks(feats, det.boxes, det.class_ids).numpy()
        t4 = time.perf_counter()
        n = int(np.count_nonzero(det.valid.numpy()[0]))
        boxes = det.boxes.numpy()[0, :n] / np.tile(np.asarray(scales)[0], 2)
        boxes = np.clip(boxes, 0, np.tile(image.shape[:2], 2)).astype(np.float32)
        pasted = paste_masks(masks[0, :n], boxes, image.shape[:2], config.DETECTION_MASK_THRESHOLD)
        t5 = time.perf_counter()
        times.setdefault("pasted", []).append(pasted.shape[-1])
        for name, a, b in (("backbone+FPN", t0, t1), ("RPN+proposals", t1, t2), ("box head+NMS", t2, t3),
                           ("mask head", t3, t4), ("paste", t4, t5)):
            times.setdefault(name, []).append(b - a)

    def tv_staged(tensor, times):
        with torch.no_grad():
            t0 = time.perf_counter()
            image_list, _ = net.transform([tensor])
            feats = net.backbone(image_list.tensors)
            t1 = time.perf_counter()
            proposals, _ = net.rpn(image_list, feats)
            t2 = time.perf_counter()
            heads = net.roi_heads
            box_features = heads.box_head(heads.box_roi_pool(feats, proposals, image_list.image_sizes))
            logits, regression = heads.box_predictor(box_features)
            boxes, scores, labels = heads.postprocess_detections(logits, regression, proposals,
                                                                 image_list.image_sizes)
            t3 = time.perf_counter()
            mask_logits = heads.mask_predictor(heads.mask_head(
                heads.mask_roi_pool(feats, boxes, image_list.image_sizes)))
            probs = tv.models.detection.roi_heads.maskrcnn_inference(mask_logits, labels)
            t4 = time.perf_counter()
            result = [{"boxes": boxes[0], "scores": scores[0], "labels": labels[0], "masks": probs[0]}]
            final = net.transform.postprocess(result, image_list.image_sizes, [tuple(tensor.shape[-2:])])
            t5 = time.perf_counter()
        times.setdefault("pasted", []).append(int(final[0]["masks"].shape[0]))
        for name, a, b in (("backbone+FPN", t0, t1), ("RPN+proposals", t1, t2), ("box head+NMS", t2, t3),
                           ("mask head", t3, t4), ("paste", t4, t5)):
            times.setdefault(name, []).append(b - a)

    def ours_e2e(image):
        return model.detect([image])[0]

    def tv_e2e(tensor):
        with torch.no_grad():
            return net([tensor])[0]

    # Warm-up: tracing, oneDNN primitive caches, torch's allocator.
    for image, tensor in zip(images, tensors):
        n_ours = len(ours_e2e(image)["scores"])
        n_tv = len(tv_e2e(tensor)["scores"])
        ours_staged(image, {})
        tv_staged(tensor, {})
    e2e = {"ours": [], "torchvision": []}
    stages = {"ours": {}, "torchvision": {}}
    for _ in range(args.runs):
        for image, tensor in zip(images, tensors):
            t = time.perf_counter()
            ours_e2e(image)
            e2e["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            tv_e2e(tensor)
            e2e["torchvision"].append(time.perf_counter() - t)
            ours_staged(image, stages["ours"])
            tv_staged(tensor, stages["torchvision"])

    print(f"{len(images)} tiny_coco photos ({', '.join(f'{a.shape[0]}x{a.shape[1]}' for a in images)}) -> 800 px, "
          f"{args.runs} interleaved runs, {args.threads} threads each; random torchvision weights converted; "
          f"score threshold 0 ({n_ours} vs {n_tv} detections on the last photo)")
    print(f"model {args.model}; torchvision's RoIAlign and NMS: {_kernels(tv)}")
    print(f"masks pasted per photo: ours {stages['ours'].pop('pasted')[-1]}, torchvision "
          f"{stages['torchvision'].pop('pasted')[-1]}")
    print(f"{'stage':<16} {'ours ms':>9} {'torchvision ms':>15} {'speed-up':>9}")
    for name in stages["ours"]:
        a, b = _median_ms(stages["ours"][name]), _median_ms(stages["torchvision"][name])
        print(f"{name:<16} {a:>9.0f} {b:>15.0f} {b / a:>8.2f}x")
    a, b = _median_ms(e2e["ours"]), _median_ms(e2e["torchvision"])
    print(f"{'end to end':<16} {a:>9.0f} {b:>15.0f} {b / a:>8.2f}x")
    # The shim's NMS is a Python loop: the box head + NMS stage says more about it than
    # about torchvision's C++ kernel, so also compare without that stage.
    box_ours = _median_ms(stages["ours"]["box head+NMS"])
    box_tv = _median_ms(stages["torchvision"]["box head+NMS"])
    print(f"{'e2e w/o box+NMS':<16} {a - box_ours:>9.0f} {b - box_tv:>15.0f} {(b - box_tv) / (a - box_ours):>8.2f}x")


# ----------------------------------------------------------------------------- training
def _train_batch(size: int, instances: int = 5, images: int = 2, seed: int = 0):
    """Images [B, size, size, 3] float32 0-255, boxes [B, G, 4] (y1, x1, y2, x2), class ids
    [B, G] in 1..90, full masks [B, G, size, size] uint8 (rectangles and ellipses)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (images, size // 32, size // 32, 3))
    pics = np.kron(coarse, np.ones((1, 32, 32, 1))) + rng.normal(0, 20, (images, size, size, 3))
    pics = np.clip(np.round(pics), 0, 255).astype(np.float32)
    boxes = np.zeros((images, instances, 4), np.float32)
    masks = np.zeros((images, instances, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for b in range(images):
        for g in range(instances):
            h, w = rng.uniform(0.1, 0.5, 2) * size
            y1, x1 = rng.uniform(0, size - h), rng.uniform(0, size - w)
            y1, x1, y2, x2 = int(y1), int(x1), int(y1 + h), int(x1 + w)
            if g % 2:
                cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
                masks[b, g] = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
            else:
                masks[b, g, y1:y2, x1:x2] = 1
            rows, cols = np.flatnonzero(masks[b, g].any(1)), np.flatnonzero(masks[b, g].any(0))
            boxes[b, g] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    classes = rng.integers(1, 91, (images, instances)).astype(np.int32)
    return pics, boxes, classes, masks


def train(args: argparse.Namespace) -> None:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torchvision_shim import import_torchvision

    tv = import_torchvision()
    import keras

    from mrcnn.checkpoint.convert import convert_state_dict
    from mrcnn.configs import TorchvisionCOCO, TorchvisionCOCOv2
    from mrcnn.data.loader import minimize_masks
    from mrcnn.model import MaskRCNN
    from mrcnn.solver.optimizer import TorchSGD

    lr, momentum, decay = 0.0025, 0.9, 1e-4
    torch.manual_seed(0)
    if args.model == "v1":
        resnet = tv.models.resnet50(weights=None, norm_layer=tv.ops.misc.FrozenBatchNorm2d)
        backbone = tv.models.detection.backbone_utils._resnet_fpn_extractor(resnet, trainable_layers=3)
        net = tv.models.detection.MaskRCNN(backbone, num_classes=91, min_size=args.size, max_size=args.size).train()
    else:  # maskrcnn_resnet50_fpn_v2 as torchvision builds it for fine-tuning (stem + C2 frozen, BN trained)
        net = tv.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91,
                                                           trainable_backbone_layers=3, min_size=args.size,
                                                           max_size=args.size).train()
    params = [p for p in net.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)

    state = {k: v.numpy() for k, v in net.state_dict().items()}
    models = {}
    for algorithm in args.conv:
        preset = TorchvisionCOCO if args.model == "v1" else TorchvisionCOCOv2
        # v2 without pretrained weights: torchvision trains every stage (trainable_backbone_layers -> 5).
        config = preset(IMAGE_MIN_DIM=args.size, IMAGE_MAX_DIM=args.size,
                        FREEZE_BACKBONE_STAGES=2 if args.model == "v1" else 0,
                                 IMAGES_PER_GPU=2, MAX_GT_INSTANCES=5, WARMUP_STEPS=0,
                                 MIXED_PRECISION="bfloat16" if args.bfloat16 else None,
                                 TRAINING_CONV_ALGORITHM=algorithm)
        model = MaskRCNN(config)
        convert_state_dict(model, state, "torchvision")
        # WEIGHT_DECAY_NORM: frozen BN has no trainable parameter, so both decay the same set.
        model.compile(optimizer=TorchSGD(learning_rate=lr, momentum=momentum, weight_decay=decay))
        models[f"ours ({model.training_conv_algorithm})"] = model

    pics, boxes, classes, masks = _train_batch(args.size)
    gt_masks = masks if config.MINI_MASK_SHAPE is None else np.stack(
        [minimize_masks(m.transpose(1, 2, 0).astype(bool), b, config.MINI_MASK_SHAPE) for m, b in zip(masks, boxes)])
    batch = {"images": tf.constant(pics), "image_sizes": tf.constant([[args.size, args.size]] * 2, tf.int32),
             "gt_boxes": tf.constant(boxes), "gt_class_ids": tf.constant(classes),
             "gt_masks": tf.constant(gt_masks)}
    tv_images = [torch.from_numpy(p).permute(2, 0, 1) / 255.0 for p in pics]
    tv_targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]]), "labels": torch.from_numpy(c).long(),
                   "masks": torch.from_numpy(m)} for b, c, m in zip(boxes, classes, masks)]

    def tv_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bfloat16):
            losses = net(tv_images, tv_targets)
        sgd.zero_grad()
        sum(losses.values()).backward()
        sgd.step()

    steps = {name: (lambda m=model: m.train_on_batch(batch, return_dict=True)) for name, model in models.items()}
    steps["torchvision"] = tv_step
    for step in steps.values():  # warm-up: tracing, oneDNN caches, allocator
        step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"training step, R50-FPN, 91 classes, 2 images {args.size}x{args.size} with 5 instances, SGD, "
          f"{args.threads} threads each, {args.steps} interleaved steps (median)")
    print(f"model {args.model}; torchvision's RoIAlign: {_kernels(tv)}; ours: "
          f"RoIAlign {config.ROI_ALIGN_IMPLEMENTATION}, mini masks {config.MINI_MASK_SHAPE}; "
          f"{'bfloat16 (ours MIXED_PRECISION, torchvision autocast)' if args.bfloat16 else 'float32'}")
    for name, values in times.items():
        speed_up = "" if name == "torchvision" else f"   {medians['torchvision'] / medians[name]:.2f}x torchvision"
        print(f"  {name:<17} {medians[name]:7.2f} s/step   {[round(t, 2) for t in values]}{speed_up}")
    for model in models.values():
        train_profile(model, batch, keras, runs=max(1, args.steps - 1))


def train_profile(model, batch, keras, runs: int = 2) -> None:
    """Our training step split into stages, each a traced function timed alone.

    backbone + FPN forward, and forward + backward of a loss on its outputs; the RPN
    (head, proposals, anchor targets, losses) forward and forward + backward given
    the features; RoI sampling and targets (mask targets included, no gradient);
    the box branch (RoIAlign 7x7, head, losses) and the mask branch (RoIAlign 14x14,
    head, loss) forward + backward given the features and the sample; the optimizer
    update alone; and the whole step. Stage times add up to about the step.
    """
    import tensorflow as tf

    from mrcnn.ops import losses as loss_fns

    images, sizes = batch["images"], batch["image_sizes"]
    targets = {"gt_boxes": batch["gt_boxes"], "gt_class_ids": batch["gt_class_ids"],
               "gt_masks": batch["gt_masks"], "gt_keypoints": None}
    heads, rpn = model.roi_heads, model.rpn
    trunk = model.backbone.trainable_variables + model.fpn.trainable_variables

    @tf.function
    def features_forward():
        return model.features(images, sizes, training=True)

    @tf.function
    def features_backward():
        with tf.GradientTape() as tape:
            feats = model.features(images, sizes, training=True)
            loss = tf.add_n([tf.reduce_mean(f) for f in feats])
        return tape.gradient(loss, trunk)

    feats = [tf.constant(f) for f in features_forward()]
    anchors = model.anchor_generator(images, feats)

    @tf.function
    def rpn_forward():
        return rpn(feats, anchors, sizes, targets=targets)

    @tf.function
    def rpn_backward():
        # The proposals are returned too: the RPN losses no longer read the dense head
        # (RPNHead.at_anchors), and a function that dropped them would not run it.
        with tf.GradientTape() as tape:
            tape.watch(feats)
            proposals, _, values = rpn(feats, anchors, sizes, targets=targets)
            loss = tf.add_n(list(values.values()))
        return proposals, tape.gradient(loss, rpn.trainable_variables + feats)

    proposals, valid, _ = rpn_forward()

    @tf.function
    def sample():
        return heads.sample(proposals, valid, targets)

    roi = sample()

    @tf.function
    def box_backward():
        with tf.GradientTape() as tape:
            tape.watch(feats)
            logits, deltas = heads.box_forward(feats, roi.rois)
            positive = roi.valid & (roi.class_ids > 0)
            pred = tf.gather(deltas, roi.class_ids, batch_dims=2)
            loss = loss_fns.classifier_loss(logits, roi.class_ids, roi.valid) + loss_fns.box_regression_loss(
                pred, roi.deltas, positive, roi.valid, heads.settings["box_loss_beta"])
        return tape.gradient(loss, heads.box_head.trainable_variables + feats)

    # Before mask_slots existed the mask branch ran on every num_mask_rois slot.
    m = roi.mask_slots if getattr(roi, "mask_slots", None) is not None else heads.num_mask_rois

    @tf.function
    def mask_backward():
        with tf.GradientTape() as tape:
            tape.watch(feats)
            logits = heads.mask_logits(feats, roi.rois[:, :m], roi.class_ids[:, :m])
            positive = roi.valid & (roi.class_ids > 0)
            loss = loss_fns.mask_loss(logits, roi.masks, positive[:, :m])
        return tape.gradient(loss, heads.mask_head.trainable_variables + feats)

    variables = model.trainable_variables
    zeros = [tf.zeros_like(v) for v in variables]

    @tf.function
    def update():
        model.optimizer.apply_gradients(zip(zeros, variables))

    def whole():
        model.train_on_batch(batch)

    stages = [("backbone+FPN forward", features_forward), ("backbone+FPN fwd+bwd", features_backward),
              ("RPN forward (given features)", rpn_forward), ("RPN fwd+bwd", rpn_backward),
              ("RoI sampling + targets", sample), ("box branch fwd+bwd", box_backward),
              ("mask branch fwd+bwd", mask_backward), ("optimizer update", update), ("whole step", whole)]
    # Traced as train_step traces: inside the scope that picks the training convolution.
    from mrcnn.layers.conv import winograd_scope

    with winograd_scope(model.training_conv_algorithm):
        for _, fn in stages:
            fn()  # trace
    results = {name: [] for name, _ in stages}
    for _ in range(runs):
        for name, fn in stages:
            t = time.perf_counter()
            out = fn()
            if out is not None:
                tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
            results[name].append(time.perf_counter() - t)
    print(f"our step by stage (median of {runs}; the mask branch runs on {int(m)} slots per image, "
          f"of {heads.num_mask_rois} possible; 3x3 convolutions: {model.training_conv_algorithm})")
    for name, values in results.items():
        print(f"  {name:<30} {statistics.median(values):7.2f} s")
    parts = ("backbone+FPN fwd+bwd", "RPN fwd+bwd", "RoI sampling + targets", "box branch fwd+bwd",
             "mask branch fwd+bwd", "optimizer update")
    print(f"  {'sum of the parts':<30} {sum(statistics.median(results[p]) for p in parts):7.2f} s")


if __name__ == "__main__":
    main()
