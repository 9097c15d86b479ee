"""Detection time vs the number of candidates that pass DETECTION_MIN_CONFIDENCE.

    python scripts/bench_candidates.py [--runs 3] [--backbone resnet50] [--size 480 640]

One R50-FPN (91 classes, random weights) and one image; the score threshold is
set so that exactly 0, 10 and 100 (RoI, class) pairs pass it (measured from the
model's own scores with NMS turned off), and ``detect()`` is timed for each,
interleaved, median of the runs. Before the NMS pre-selection fix the 0-candidate
case was ~5.6x slower than the 100-candidate one; the goal is within 1.3x.
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
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    parser.add_argument("--counts", type=int, nargs="+", default=(0, 10, 100))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN

    base = dict(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_RESIZE_MODE="pad32",
                IMAGE_MIN_DIM=min(args.size), IMAGE_MAX_DIM=max(1333, max(args.size)))
    image = np.random.default_rng(0).integers(0, 255, (*args.size, 3), dtype=np.uint8)

    # The scores of the best pairs, with NMS off (IoU > 1 never holds) and no threshold.
    probe = MaskRCNN(Config(**base, DETECTION_MIN_CONFIDENCE=0.0, DETECTION_NMS_THRESHOLD=1.0,
                            DETECTION_MAX_INSTANCES=max(args.counts) + 1))
    scores = np.sort(probe.detect([image])[0]["scores"])[::-1]
    weights = probe.get_weights()

    models = {}
    for count in args.counts:
        if count == 0:
            threshold = float(scores[0]) * 1.01 + 1e-6
        else:
            threshold = float(scores[count - 1] + scores[count]) / 2
        threshold = min(threshold, 0.999999)
        model = MaskRCNN(Config(**base, DETECTION_MIN_CONFIDENCE=threshold))
        model.set_weights(weights)
        models[count] = model
    del probe

    times: dict[int, list[float]] = {c: [] for c in args.counts}
    found: dict[int, int] = {}
    for count, model in models.items():  # warm-up: tracing
        found[count] = len(model.detect([image])[0]["scores"])
    for _ in range(args.runs):
        for count, model in models.items():
            t = time.perf_counter()
            model.detect([image])
            times[count].append(time.perf_counter() - t)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"{args.backbone}-FPN, 91 classes, image {args.size[0]}x{args.size[1]}, {threads} threads, "
          f"{args.runs} interleaved runs")
    reference = statistics.median(times[max(args.counts)])
    print(f"{'candidates':>10} {'detections':>10} {'ms/image':>9} {'vs ' + str(max(args.counts)):>8}")
    for count in args.counts:
        median = statistics.median(times[count])
        print(f"{count:>10} {found[count]:>10} {median * 1000:>9.0f} {median / reference:>8.2f}")


if __name__ == "__main__":
    main()
