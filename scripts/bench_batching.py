"""Training step on real COCO images: square canvas vs batches padded to their largest image.

    python scripts/bench_batching.py [--steps 12] [--backbone resnet18] [--min 384 --max 640]

Uses ``../shared/datasets/tiny_coco`` (50 COCO train2017 photos, mostly 4:3).
For each ``TRAIN_PADDING`` ("square": every image on the IMAGE_MAX_DIM square;
"batch": each batch padded to its largest image, sides multiples of 32, with
aspect-ratio grouping) it runs the real input pipeline into the model's train
step and prints the median seconds per step (steps after the first three, which
include tracing; "batch" retraces for new shapes at first), the mean input
pixels per batch and the share of them that is padding. The default size is
the COCO recipe scaled by 0.48 (800/1333 -> 384/640) so that a 2-core CPU runs
it in minutes; the padding ratio, hence the saving, is the same.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tiny_coco"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--min", type=int, default=384)
    parser.add_argument("--max", type=int, default=640)
    parser.add_argument("--modes", nargs="*", default=["square", "batch"])
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"tiny_coco not found at {DATA} (see ../shared/datasets/README.md)")

    import warnings

    import keras
    import numpy as np

    from mrcnn import Config, MaskRCNN
    from mrcnn.data.coco import CocoDataset
    from mrcnn.data.pipeline import build_dataset

    warnings.simplefilter("ignore")
    dataset = CocoDataset(DATA / "annotations" / "instances_train2017.json", DATA / "train2017")
    results = {}
    for mode in args.modes:
        config = Config(NUM_CLASSES=dataset.num_classes, BACKBONE=args.backbone, BACKBONE_NORM="gn",
                        IMAGE_MIN_DIM=args.min, IMAGE_MAX_DIM=args.max, IMAGES_PER_GPU=2,
                        TRAIN_PADDING=mode, ROI_ALIGN_IMPLEMENTATION="portable", WARMUP_STEPS=10)
        keras.utils.set_random_seed(0)
        model = MaskRCNN(config)
        model.compile()
        model.make_train_function()
        data = iter(build_dataset(dataset, config, training=True, seed=0))
        times, pixels, valid = [], [], []
        for _ in range(args.steps + 3):
            batch = next(data)
            t = time.perf_counter()
            logs = model.train_function(iter([batch]))
            float(logs["loss"])
            times.append(time.perf_counter() - t)
            hp, wp = batch["images"].shape[1:3]
            pixels.append(2 * hp * wp)
            valid.append(float(np.prod(batch["image_sizes"].numpy(), axis=1).sum()))
        median = statistics.median(times[3:])
        pad = 1.0 - sum(valid) / sum(pixels)
        results[mode] = median
        print(f"{mode:6s} {median:.2f} s/step (median of {args.steps}), {np.mean(pixels) / 1e6:.2f} Mpx "
              f"per batch, {pad:.0%} padding ({args.backbone}-FPN, short side {args.min}, max {args.max})",
              flush=True)
        del model
        keras.backend.clear_session()
    if {"square", "batch"} <= set(results):
        print(f"speed-up batch vs square: {results['square'] / results['batch']:.2f}x")


if __name__ == "__main__":
    main()
