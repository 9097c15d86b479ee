"""Side by side with torchvision: the same weights, the same photos, one process.

    python scripts/bench_vs_torchvision.py [--images 3] [--runs 3] [--threads 2]

torchvision's ``maskrcnn_resnet50_fpn`` (91 classes) is initialised at random
(seeded), saved, converted with ``mrcnn.convert.convert_torchvision`` and loaded
into ``MaskRCNN(TorchvisionCOCO())``; both run on real COCO photos from
``../shared/datasets/tiny_coco`` at 800 px (torchvision's resize rule, which
ours reproduces), interleaved, with the same number of intra-op threads. The
score threshold is 0 on both sides so that both run the mask head on 100
detections, as a trained model does on a busy photo.

Prints end to end (``detect()`` vs ``net([image])``) and per stage: backbone +
FPN, RPN + proposals, box head + NMS, mask head, paste (mask resampling into the
image). Needs ``pip install torch==2.13.0`` and ``pip install --no-deps
torchvision==0.28.0``; torchvision's RoIAlign and NMS then run through
``tests/torchvision_shim.py`` (pure PyTorch), since a CPU-only torch from PyPI
has no torchvision C++ kernels: torchvision's RoIAlign here is slower than its
compiled kernel would be, so the per-stage table says where that matters.
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


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    paths = sorted(glob.glob(os.path.join(TINY_COCO, "*.jpg")))[: args.images]
    if not paths:
        sys.exit(f"no photos under {TINY_COCO} (the shared tiny_coco dataset)")

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

    from mrcnn.configs import TorchvisionCOCO
    from mrcnn.convert import convert_torchvision
    from mrcnn.data.pipeline import prepare_image_batch
    from mrcnn.model import MaskRCNN
    from mrcnn.ops.masks import paste_masks

    torch.manual_seed(0)
    net = tv.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    net.roi_heads.score_thresh = 0.0
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_vs_tv_{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(tmp, "tv.pth"))
    config = TorchvisionCOCO(DETECTION_MIN_CONFIDENCE=0.0)
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
    print("torchvision's RoIAlign and NMS run through tests/torchvision_shim.py (pure PyTorch) on this CPU-only torch")
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


if __name__ == "__main__":
    main()
