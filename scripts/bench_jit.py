"""Compile time and step time of the training step with and without XLA (``Config.JIT_COMPILE``).

    python scripts/bench_jit.py [--canvas square512 crop800] [--steps 5] [--backbone resnet50]

Uses ``../shared/datasets/tiny_coco`` (50 COCO train2017 photos) through the real
training pipeline, on a fixed canvas (XLA compiles one program per input shape):

* ``square512``: ``TRAIN_PADDING="square"``, every image resized into 512 x 512;
* ``crop800``: ``TorchvisionCOCO`` sizes (800 / 1333) with ``TRAIN_CROP_SIZE=800``.

Per canvas it runs, side by side from the same initial weights and batches (held in
memory, so the input pipeline is not timed), the plain step with the custom RoIAlign
op ("plain"), the plain step with the gather RoIAlign ("gather", what XLA compiles,
uncompiled) and the XLA-compiled step ("xla"). It prints, per mode, the first call
(tracing, plus the XLA compile for "xla"; through ``model.fit``), the median of the following steps, the
compile time (first call minus a step), the traces of ``train_step`` (1 = one
compile) and the losses of the first step, with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tiny_coco"
CANVASES = ("square512", "crop800")
MODES = ("plain", "gather", "xla")


def canvas_config(canvas: str, num_classes: int, backbone: str, batch: int, mode: str):
    from mrcnn.configs import TorchvisionCOCO

    settings = {"NUM_CLASSES": num_classes, "CLASS_NAMES": None, "BACKBONE": backbone, "IMAGES_PER_GPU": batch, "WARMUP_STEPS": 10,
                "TRAIN_FLIP_PROB": 0.5, "JIT_COMPILE": mode == "xla",
                "ROI_ALIGN_IMPLEMENTATION": "auto" if mode == "plain" else "gather"}
    if canvas == "square512":
        settings.update(IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=512, TRAIN_PADDING="square")
    else:
        settings.update(TRAIN_CROP_SIZE=800)
    return TorchvisionCOCO(**settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canvas", nargs="*", default=list(CANVASES), choices=CANVASES,
                        help="fixed training canvases to measure (default: %(default)s)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES,
                        help="steps to compare (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default: %(default)s)")
    parser.add_argument("--backbone", default="resnet50", help="backbone (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DATA, help="tiny_coco folder (default: %(default)s)")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"tiny_coco not found at {args.data} (see ../shared/datasets/README.md); pass --data")

    import warnings

    import keras
    import tensorflow as tf

    from mrcnn import MaskRCNN
    from mrcnn.data.coco import CocoDataset
    from mrcnn.data.pipeline import build_dataset

    warnings.simplefilter("ignore")

    class StepTimer(keras.callbacks.Callback):
        """Seconds of each step (the first includes tracing and the XLA compile); first loss."""

        def __init__(self):
            super().__init__()
            self.times, self.first_loss, self._start = [], None, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)
            if self.first_loss is None:
                self.first_loss = float(logs["loss"])

    dataset = CocoDataset(args.data / "annotations" / "instances_train2017.json", args.data / "train2017")
    for canvas in args.canvas:
        base = canvas_config(canvas, dataset.num_classes, args.backbone, args.batch, "plain")
        batches = list(build_dataset(dataset, base, training=True, seed=0).take(args.steps + 1))
        shape = tuple(batches[0]["images"].shape)
        stacked = {k: tf.stack([b[k] for b in batches]) for k in batches[0]}
        data = tf.data.Dataset.from_tensor_slices(stacked)
        print(f"\n{canvas}: {args.backbone}, images {shape}, {args.steps} timed steps", flush=True)
        print(f"{'mode':8} {'first call s':>12} {'s/step':>8} {'compile s':>10} {'traces':>6}  loss (step 1)")
        keras.utils.set_random_seed(0)
        initial = MaskRCNN(base).get_weights()
        for mode in args.modes:
            config = canvas_config(canvas, dataset.num_classes, args.backbone, args.batch, mode)
            model = MaskRCNN(config)
            model.set_weights(initial)
            model.compile()
            timer = StepTimer()
            load = os.getloadavg()[0]
            model.fit(data, epochs=1, steps_per_epoch=len(batches), verbose=0, callbacks=[timer])
            first, step = timer.times[0], statistics.median(timer.times[1:])
            print(f"{mode:8} {first:12.1f} {step:8.2f} {max(first - step, 0.0):10.1f} {model.train_step_traces:6d}  "
                  f"{timer.first_loss:.5f}  (load {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            del model
            keras.backend.clear_session()


if __name__ == "__main__":
    main()
