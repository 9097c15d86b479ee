"""Training throughput: R50-FPN, 2 images of 512x512 per step, on this CPU.

    python scripts/bench_train.py [--steps 5] [--roi-align portable|custom|auto]

Random images with 5 boxes each; prints steps/s (median over the timed steps
after one warm-up step) and, when the custom op is built, the same with each
RoIAlign implementation side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--roi-align", nargs="*", default=None,
                        help="implementations to compare (default: portable, plus custom when built)")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN
    from mrcnn.ops import custom_roi_align

    impls = args.roi_align or (["portable", "custom"] if custom_roi_align.is_available() else ["portable"])
    rng = np.random.default_rng(0)
    b, g, side = 2, 5, 512
    boxes = np.zeros((b, 100, 4), np.float32)
    y1x1 = rng.uniform(0, 300, (b, g, 2))
    boxes[:, :g] = np.concatenate([y1x1, y1x1 + rng.uniform(32, 200, (b, g, 2))], -1)
    classes = np.zeros((b, 100), np.int32)
    classes[:, :g] = rng.integers(1, 91, (b, g))
    masks = np.zeros((b, 100, 56, 56), np.uint8)
    masks[:, :g, 8:48, 8:48] = 1
    batch = {
        "images": rng.uniform(0, 255, (b, side, side, 3)).astype(np.float32),
        "image_sizes": np.full((b, 2), side, np.int32),
        "gt_boxes": boxes, "gt_class_ids": classes, "gt_masks": masks,
    }
    results = {}
    for impl in impls:
        config = Config(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_MIN_DIM=side, IMAGE_MAX_DIM=side,
                        IMAGES_PER_GPU=b, ROI_ALIGN_IMPLEMENTATION=impl, FREEZE_BACKBONE_STAGES=2)
        model = MaskRCNN(config)
        model.compile()
        model.make_train_function()
        step = model.train_function
        data = iter(tf.data.Dataset.from_tensors(batch).repeat())
        step(data)  # trace + first step
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            logs = step(data)
            float(logs["loss"])
            times.append(time.perf_counter() - t)
        results[impl] = statistics.median(times)
        print(f"{impl:9s} {1 / results[impl]:.3f} steps/s ({results[impl]:.2f} s/step, "
              f"{args.backbone}-FPN, {b}x{side}x{side})", flush=True)
        del model
        keras.backend.clear_session()
    if len(results) == 2:
        print(f"speed-up custom vs portable: {results['portable'] / results['custom']:.2f}x")


if __name__ == "__main__":
    main()
