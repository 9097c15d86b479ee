"""Inference benchmark: R50-FPN at 800x1333 on this CPU, end to end vs backbone+FPN alone.

    python scripts/bench_inference.py [--runs 3] [--backbone resnet50]

Both are measured in the same process, interleaved, after a warm-up; the median
of the runs is printed with the ratio (end-to-end / backbone+FPN). Random weights:
speed does not depend on them, except that DETECTION_MIN_CONFIDENCE is set to 0
so the mask head really runs on DETECTION_MAX_INSTANCES boxes, as with a trained
model on a busy image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN

    config = Config(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_RESIZE_MODE="pad32",
                    DETECTION_MIN_CONFIDENCE=0.0, ROI_ALIGN_IMPLEMENTATION="auto")
    model = MaskRCNN(config)
    image = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)

    from mrcnn.inference.preprocess import prepare_image_batch

    batch, sizes, _ = prepare_image_batch([image], config)
    batch = tf.constant(batch)

    @tf.function
    def features(x):
        return model.features(x, None, training=False)

    def end_to_end():
        return model.detect([image])

    def backbone():
        return [f.numpy() for f in features(batch)]

    for fn in (end_to_end, backbone):  # warm-up: tracing
        fn()
    times: dict[str, list[float]] = {"end_to_end": [], "backbone_fpn": []}
    for _ in range(args.runs):
        for name, fn in (("end_to_end", end_to_end), ("backbone_fpn", backbone)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    e2e = statistics.median(times["end_to_end"])
    bb = statistics.median(times["backbone_fpn"])
    print(f"input {args.height}x{args.width} -> padded {batch.shape[1]}x{batch.shape[2]}, "
          f"{args.backbone}-FPN, {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads")
    print(f"end to end (detect):   {e2e * 1000:8.0f} ms/image  (runs: {[round(t, 2) for t in times['end_to_end']]})")
    print(f"backbone + FPN alone:  {bb * 1000:8.0f} ms/image  (runs: {[round(t, 2) for t in times['backbone_fpn']]})")
    print(f"ratio end-to-end / backbone+FPN: {e2e / bb:.2f}")


if __name__ == "__main__":
    main()
