"""Mask R-CNN on COCO with the paper's 1x schedule (torchvision / Detectron2 recipe).

::

    python samples/coco/coco.py train --annotations annotations/instances_train2017.json \
        --images train2017 --out runs/coco --imagenet-weights resnet50-0676ba61.pth
    python samples/coco/coco.py evaluate --annotations annotations/instances_val2017.json \
        --images val2017 --weights runs/coco/final.weights.h5 --json-out runs/coco/val.json

:class:`CocoConfig` is the 1x schedule: 16 images per step (``GPU_COUNT x
IMAGES_PER_GPU`` = 8 x 2), SGD lr 0.02 with momentum 0.9 and weight decay 1e-4,
linear warm-up over 1000 steps from lr x 0.001, lr x 0.1 at steps 60k and 80k,
90k steps (``STEPS_PER_EPOCH x EPOCHS`` = 1000 x 90), images resized to short
side 800 / long side <= 1333 and padded to a multiple of 32, frozen batch norm
and the stem + C2 frozen (``FREEZE_BACKBONE_STAGES=2``, torchvision's
``trainable_backbone_layers=3``), ResNet-50-FPN from ImageNet weights.

With fewer images per step, :meth:`CocoConfig.for_batch_size` applies the
linear scaling rule (Goyal et al. 2017): lr x B/16 and every step count x 16/B,
so the schedule covers the same number of images.

ImageNet weights: ``--imagenet-weights FILE`` (a torchvision ``.pth``, read
without torch by :mod:`mrcnn.weights`); without it the official file is
downloaded, which fails here (no internet) with a message saying where to put it.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mrcnn.config import Config  # noqa: E402

PAPER_BATCH_SIZE = 16


class CocoConfig(Config):
    """The 1x schedule of Mask R-CNN R-50-FPN on COCO (80 classes + background)."""

    NAME = "coco"
    NUM_CLASSES = 1 + 80

    # 16 images per step.
    GPU_COUNT = 8
    IMAGES_PER_GPU = 2

    BACKBONE = "resnet50"
    BACKBONE_NORM = "frozen_bn"
    STRIDE_IN_1X1 = False  # torchvision ImageNet weights
    FREEZE_BACKBONE_STAGES = 2  # stem + C2 (trainable_backbone_layers=3)

    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1333
    IMAGE_RESIZE_MODE = "pad32"

    LEARNING_RATE = 0.02
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 1e-4
    WARMUP_STEPS = 1000
    WARMUP_FACTOR = 0.001
    LR_STEPS = (60000, 80000)
    STEPS_PER_EPOCH = 1000
    # Not a Config field of the base class: epochs of STEPS_PER_EPOCH (90k steps).
    EPOCHS: int = 90

    @property
    def TOTAL_STEPS(self) -> int:  # noqa: N802
        return self.STEPS_PER_EPOCH * self.EPOCHS

    def validate(self) -> None:
        super().validate()
        if isinstance(self.EPOCHS, bool) or not isinstance(self.EPOCHS, int) or self.EPOCHS <= 0:
            raise ValueError(f"Config.EPOCHS={self.EPOCHS!r}: must be a positive integer")

    def for_batch_size(self, images_per_gpu: int, gpu_count: int) -> CocoConfig:
        """The same schedule for another global batch, by the linear scaling rule.

        lr x B/16; warm-up, LR_STEPS and the total number of steps x 16/B (the
        total is kept by scaling STEPS_PER_EPOCH, EPOCHS unchanged).
        """
        batch = int(images_per_gpu) * int(gpu_count)
        factor = PAPER_BATCH_SIZE / batch
        values = self.to_dict()
        values.pop("TOTAL_STEPS", None)
        values.update(
            IMAGES_PER_GPU=int(images_per_gpu),
            GPU_COUNT=int(gpu_count),
            LEARNING_RATE=self.LEARNING_RATE / factor,
            WARMUP_STEPS=int(round(self.WARMUP_STEPS * factor)),
            LR_STEPS=tuple(int(round(s * factor)) for s in self.LR_STEPS),
            STEPS_PER_EPOCH=max(1, int(round(self.STEPS_PER_EPOCH * factor))),
        )
        return type(self).from_dict(values)


def make_config(overrides: dict[str, Any] | None = None,
                config_file: str | os.PathLike | None = None) -> CocoConfig:
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, encoding="utf-8") as f:
            values = json.load(f)
    values.update(overrides or {})
    values.pop("TOTAL_STEPS", None)
    return CocoConfig.from_dict(values) if values else CocoConfig()


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[key.strip()] = raw
    return values


def _strategy(gpu_count: int):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpu_count > 1:
        if len(gpus) < gpu_count:
            raise ValueError(
                f"GPU_COUNT={gpu_count} but {len(gpus)} GPU(s) visible: pass --gpus {len(gpus) or 1} "
                "(the lr and schedule are rescaled to the smaller batch)"
            )
        return tf.distribute.MirroredStrategy([g.name for g in gpus[:gpu_count]])
    return tf.distribute.get_strategy()


def cmd_train(args: argparse.Namespace) -> str:

    from mrcnn.data.coco import CocoDataset
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.model import MaskRCNN
    from mrcnn.training import default_callbacks
    from mrcnn.weights import (
        ImageNetWeightsUnavailable,
        download_imagenet_weights,
        load_imagenet_backbone,
    )

    config = make_config(args.set, args.config)
    if args.gpus is not None or args.images_per_gpu is not None:
        config = config.for_batch_size(
            args.images_per_gpu or config.IMAGES_PER_GPU, args.gpus or config.GPU_COUNT
        )
    weights_file = args.imagenet_weights
    if weights_file is None and args.weights is None:
        try:
            weights_file = download_imagenet_weights(config.BACKBONE)
        except ImageNetWeightsUnavailable as exc:
            raise SystemExit(f"coco.py train: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json(), encoding="utf-8")

    dataset = CocoDataset(args.annotations, args.images)
    print(f"{len(dataset)} images, {dataset.num_classes - 1} classes; "
          f"batch {config.BATCH_SIZE}, lr {config.LEARNING_RATE}, {config.TOTAL_STEPS} steps")
    with _strategy(config.GPU_COUNT).scope():
        model = MaskRCNN(config)
        if args.weights is not None:
            model.load_weights(args.weights)
        else:
            report = load_imagenet_backbone(model, weights_file)
            print(f"ImageNet backbone: {report['loaded']} arrays from {weights_file}")
        model.compile()
    data = build_dataset(dataset, config, training=True, seed=args.seed)
    callbacks = default_callbacks(str(out))
    if args.max_minutes is not None:
        from samples.nucleus.nucleus import TimeBudget, TrainClock

        callbacks.append(TimeBudget(TrainClock(), args.max_minutes, str(out / "final.weights.h5")))
    model.fit(data, epochs=args.epochs or config.EPOCHS, steps_per_epoch=config.STEPS_PER_EPOCH,
              callbacks=callbacks, verbose=2)
    final = out / "final.weights.h5"
    if not final.exists():
        model.save_weights(str(final))
    return str(final)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mrcnn.data.coco import CocoDataset
    from mrcnn.evaluate import evaluate_dataset, format_metrics
    from mrcnn.model import MaskRCNN

    config_file = args.config
    if config_file is None:
        candidate = Path(args.weights).resolve().parent / "config.json"
        config_file = candidate if candidate.is_file() else None
    config = make_config(args.set, config_file)
    dataset = CocoDataset(args.annotations, args.images)
    ids = dataset.image_ids if args.limit is None else dataset.image_ids[: args.limit]
    model = MaskRCNN(config)
    model.load_weights(args.weights)
    metrics = evaluate_dataset(model.detect, dataset, image_ids=ids, batch_size=1,
                               json_out=args.results_out)
    print(format_metrics(metrics))
    result = {
        t: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics[t].items()}
        for t in ("bbox", "segm")
    }
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coco.py", description="Mask R-CNN on COCO (1x schedule).")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--annotations", required=True, help="COCO instances JSON")
        p.add_argument("--images", required=True, help="folder of the JSON's file_name entries")
        p.add_argument("--config", default=None, help="a config.json written by train")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a CocoConfig field (Python literal), repeatable")

    t = sub.add_parser("train", help="train from ImageNet weights")
    common(t)
    t.add_argument("--out", required=True)
    t.add_argument("--imagenet-weights", default=None,
                   help="local torchvision ResNet .pth (default: download, which needs internet)")
    t.add_argument("--weights", default=None, help="resume from a Mask R-CNN .weights.h5 instead")
    t.add_argument("--gpus", type=int, default=None, help="GPUs to use (rescales lr/schedule, see for_batch_size)")
    t.add_argument("--images-per-gpu", type=int, default=None)
    t.add_argument("--epochs", type=int, default=None, help="default: EPOCHS (90 x 1000 steps)")
    t.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    t.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="COCO bbox/segm metrics")
    common(e)
    e.add_argument("--weights", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--json-out", default=None, help="write {'bbox': {...}, 'segm': {...}} here")
    e.add_argument("--results-out", default=None, help="detections as COCO results JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.set = _parse_set(args.set)
        for name in ("annotations",):
            if not Path(getattr(args, name)).is_file():
                raise FileNotFoundError(f"--{name} {getattr(args, name)!r} does not exist")
        if not Path(args.images).is_dir():
            raise FileNotFoundError(f"--images {args.images!r} is not a folder")
        for name in ("weights", "imagenet_weights", "config"):
            value = getattr(args, name, None)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {value!r} does not exist")
        make_config(args.set, args.config)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    return {"train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    main()
