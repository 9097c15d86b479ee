"""The ``mrcnn`` command line (also ``python -m mrcnn``): a thin layer over the library.

    mrcnn train    --config CFG --dataset DS --out DIR [--epochs N] [--weights FILE]
    mrcnn detect   --config CFG --weights FILE --out DIR IMAGE [IMAGE ...]
    mrcnn evaluate --config CFG --weights FILE --dataset DS [--json-out FILE]
    mrcnn export   --config CFG --weights FILE --output DIR
    mrcnn convert-weights --from torchvision|detectron2 CHECKPOINT --out FILE.weights.h5
    mrcnn build-ops [--force]

CFG is ``module:ConfigClass`` (e.g. ``mrcnn.data.synthetic:ShapesDemoConfig``) or
a ``config.json`` written by training. DS is ``shapes`` (synthetic), ``coco``
(with ``--annotations``/``--images``) or ``module:function`` where
``function(subset)`` returns a prepared ``mrcnn.Dataset`` for "train"/"val".
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from mrcnn import config as config_module
from mrcnn.config import Config


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def load_config(spec: str) -> Config:
    """``module:Class``, ``file.py:Class`` or a config.json -> a Config (CLIError if not)."""
    try:
        return config_module.load_config(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(f"--config {spec}: {exc}") from exc


def _import_object(spec: str, flag: str) -> Any:
    if ":" not in spec:
        raise CLIError(f"{flag} must be 'module:name' or a .json file, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"{flag}: cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attr):
        raise CLIError(f"{flag}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def load_dataset(args: argparse.Namespace, subset: str):
    """Build the Dataset named by ``--dataset`` for ``subset`` ("train" or "val")."""
    spec = args.dataset
    if spec == "shapes":
        from mrcnn.data.synthetic import ShapesDataset

        ds = ShapesDataset()
        count = args.train_images if subset == "train" else args.val_images
        ds.load_shapes(count, seed=1 if subset == "train" else 2)
        return ds
    if spec == "coco":
        from mrcnn.data.coco import CocoDataset

        ann = getattr(args, f"{subset}_annotations", None) or args.annotations
        images = getattr(args, f"{subset}_images", None) or args.images
        if not ann or not images:
            raise CLIError("--dataset coco needs --annotations FILE and --images DIR")
        for path in (ann, images):
            if not os.path.exists(path):
                raise CLIError(f"not found: {path}")
        return CocoDataset(ann, images)
    factory = _import_object(spec, "--dataset")
    return factory(subset)


def _build_model(config: Config, weights: str | None):
    from mrcnn.model import MaskRCNN

    model = MaskRCNN(config)
    if weights:
        if not os.path.exists(weights):
            raise CLIError(f"weights file not found: {weights}")
        model.load_weights(weights)
    return model


def cmd_train(args: argparse.Namespace) -> int:
    import keras

    from mrcnn.callbacks import CocoEvaluationCallback, TimeBudget
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.training import default_callbacks

    config = load_config(args.config)
    train, val = load_dataset(args, "train"), load_dataset(args, "val")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(config.to_json())
    model = _build_model(config, args.weights)
    model.compile()
    callbacks: list[keras.callbacks.Callback] = default_callbacks(args.out)
    if args.eval_every:
        callbacks.insert(0, CocoEvaluationCallback(val, every_n_epochs=args.eval_every,
                                                   log_dir=os.path.join(args.out, "logs")))
    if args.max_minutes:
        callbacks.append(TimeBudget(args.max_minutes))
    model.fit(
        build_dataset(train, config, training=True),
        validation_data=build_dataset(val, config, training=False, repeat=True) if args.val_steps else None,
        validation_steps=args.val_steps or None,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch or config.STEPS_PER_EPOCH,
        callbacks=callbacks,
        verbose=2,
    )
    final = os.path.join(args.out, "final.weights.h5")
    model.save_weights(final)
    print(f"weights: {final}")
    return 0


def _read_image(path: str):
    from skimage import io

    from mrcnn.data.loader import sanitize_image

    try:
        return sanitize_image(io.imread(path), ref=path)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read image {path}: {exc}") from exc


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mrcnn.visualize import draw_instances, save_image

    config = load_config(args.config)
    model = _build_model(config, args.weights)
    names = list(config.CLASS_NAMES or [str(i) for i in range(config.NUM_CLASSES)])
    os.makedirs(args.out, exist_ok=True)
    records = []
    for path in tqdm(args.images, desc="detect", unit="img"):
        image = _read_image(path)
        r = model.detect([image])[0]
        keep = r["scores"] >= args.min_score
        drawn = draw_instances(image, r["rois"][keep], r["masks"][..., keep], r["class_ids"][keep],
                               names, r["scores"][keep])
        stem = os.path.splitext(os.path.basename(path))[0]
        save_image(os.path.join(args.out, f"{stem}.png"), drawn)
        records.append({
            "image": path,
            "detections": [
                {"box_yxyx": [round(float(v), 2) for v in box], "class_id": int(c),
                 "class_name": names[int(c)], "score": round(float(s), 4),
                 "mask_area": int(r["masks"][..., i].sum())}
                for i, (box, c, s) in enumerate(zip(r["rois"], r["class_ids"], r["scores"])) if keep[i]
            ],
        })
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump(records, f, indent=2)
    print(f"wrote {len(records)} images and detections.json to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrcnn.evaluate import evaluate_dataset, format_metrics

    config = load_config(args.config)
    dataset = load_dataset(args, "val")
    model = _build_model(config, args.weights)
    image_ids = list(dataset.image_ids)[: args.limit] if args.limit else None
    metrics = evaluate_dataset(model.detect, dataset, image_ids=image_ids, batch_size=config.BATCH_SIZE,
                               json_out=args.results_out)
    print(format_metrics(metrics))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"bbox": metrics["bbox"], "segm": metrics["segm"]}, f, indent=2)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mrcnn import export

    try:
        export.run(args)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


def cmd_build_ops(args: argparse.Namespace) -> int:
    from mrcnn.ops import custom_roi_align

    path = custom_roi_align.build(force=args.force, verbose=True)
    print(f"custom RoIAlign op library: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrcnn", description="Mask R-CNN for Keras 3 / TensorFlow")
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_args(p):
        p.add_argument("--dataset", required=True, help="shapes | coco | module:function")
        p.add_argument("--annotations", help="COCO instances JSON (--dataset coco)")
        p.add_argument("--images", help="COCO image folder (--dataset coco)")
        p.add_argument("--train-images", type=int, default=2000, help="shapes: training images")
        p.add_argument("--val-images", type=int, default=100, help="shapes: validation images")

    p = sub.add_parser("train", help="train with model.fit")
    p.add_argument("--config", required=True)
    dataset_args(p)
    p.add_argument("--val-annotations")
    p.add_argument("--train-annotations")
    p.add_argument("--out", required=True, help="checkpoints, logs and backups go here")
    p.add_argument("--weights", help="initial weights (.weights.h5)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=0)
    p.add_argument("--val-steps", type=int, default=0, help="validation-loss steps per epoch")
    p.add_argument("--eval-every", type=int, default=0, help="COCO-evaluate every N epochs")
    p.add_argument("--max-minutes", type=float, default=0, help="stop cleanly after this long")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("detect", help="detect instances in image files")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="folder for PNGs and detections.json")
    p.add_argument("--min-score", type=float, default=0.5, help="draw/report detections above this")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="COCO bbox/segm metrics with pycocotools")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    dataset_args(p)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    p.add_argument("--json-out", help="write {'bbox': ..., 'segm': ...} here")
    p.add_argument("--results-out", help="write detections in COCO results format here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="SavedModel for TF Serving (stock TF ops only)")
    from mrcnn import export

    export.add_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert-weights", help="torchvision/Detectron2 checkpoint -> Keras weights")
    from mrcnn import convert

    convert.add_arguments(p)
    p.set_defaults(func=convert.run_convert)

    p = sub.add_parser("build-ops", help="(re)build the custom RoIAlign op")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"mrcnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
