"""The demo: train Mask R-CNN on synthetic shapes, evaluate it with COCO metrics.

    python -m samples.shapes.demo --out runs/demo --minutes 8

Writes under ``--out``: ``metrics.json`` (pycocotools bbox and segm numbers on a
held-out synthetic set), ``detections.png`` (drawn detections on held-out
images), ``weights.weights.h5`` (the trained weights), ``config.json`` and
TensorBoard logs. Everything is generated locally: no downloads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import mrcnn  # noqa: F401 - first: its import hooks quiet TensorFlow's start-up (mrcnn._env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # TF/Keras' absl warnings: not actionable here

    import keras

    from mrcnn.data.pipeline import build_dataset
    from mrcnn.data.synthetic import ShapesDataset, ShapesDemoConfig
    from mrcnn.engine import default_callbacks
    from mrcnn.evaluate import evaluate_dataset, format_metrics
    from mrcnn.fileio import json_ready, write_json, write_text
    from mrcnn.model import MaskRCNN
    from mrcnn.visualize import draw_grid, draw_instances, save_image

    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    config = ShapesDemoConfig()
    write_text(os.path.join(args.out, "config.json"), config.to_json())

    train = ShapesDataset()
    train.load_shapes(args.train_images, seed=args.seed + 1)
    val = ShapesDataset()
    val.load_shapes(args.val_images, seed=args.seed + 2)  # disjoint seed: images never trained on

    model = MaskRCNN(config)
    model.compile()
    # The run folder hands the resume position to the input (a second start resumes at the step).
    train_ds = build_dataset(train, config, training=True, seed=args.seed, run_dir=args.out)
    print(f"[demo] training {config.BACKBONE} Mask R-CNN on {len(train)} synthetic images "
          f"for {args.minutes:g} min (batch {config.BATCH_SIZE}, {config.IMAGE_SHAPE[0]} px)", flush=True)
    epochs = 10_000  # the time budget ends training
    start = time.time()
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=config.STEPS_PER_EPOCH,
        callbacks=default_callbacks(args.out, config=config, checkpoint_every_epoch=False,
                                    max_minutes=args.minutes),
        verbose=2,
        shuffle=False,  # build_dataset shuffles; Keras warns about shuffle=True with tf.data
    )
    train_minutes = (time.time() - start) / 60
    weights_path = os.path.join(args.out, "weights.weights.h5")
    model.save_weights(weights_path)
    print(f"[demo] trained {int(model.optimizer.iterations.numpy())} steps in {train_minutes:.1f} min; "
          f"weights -> {weights_path}", flush=True)

    print(f"[demo] evaluating on {len(val)} held-out images", flush=True)
    metrics = evaluate_dataset(model.detect, val, batch_size=config.BATCH_SIZE, progress=True)
    print(format_metrics(metrics))
    summary = {"bbox": metrics["bbox"], "segm": metrics["segm"],
               "train_minutes": round(train_minutes, 2),
               "train_steps": int(model.optimizer.iterations.numpy())}
    # Strict JSON: undefined metrics (NaN) are written as null.
    write_json(os.path.join(args.out, "metrics.json"), json_ready(summary))

    images = [val.load_image(i) for i in range(6)]
    panels = []
    zoom = 3  # 128 px images are too small to read labels on
    for image, r in zip(images, model.detect(images)):
        keep = r["scores"] >= 0.5
        big = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
        masks = r["masks"][..., keep].repeat(zoom, axis=0).repeat(zoom, axis=1)
        panels.append(draw_instances(big, r["rois"][keep] * zoom, masks, r["class_ids"][keep],
                                     val.class_names, r["scores"][keep]))
    save_image(os.path.join(args.out, "detections.png"), draw_grid(panels, cols=3))
    ap50 = (metrics["bbox"]["AP50"], metrics["segm"]["AP50"])
    print(f"[demo] bbox AP50 {ap50[0]:.3f}  segm AP50 {ap50[1]:.3f}  -> {args.out}/metrics.json, "
          f"{args.out}/detections.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
