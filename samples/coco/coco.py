"""Mask R-CNN on COCO with the paper's 1x schedule (torchvision / Detectron2 recipe).

::

    python samples/coco/coco.py train --annotations annotations/instances_train2017.json \
        --images train2017 --out runs/coco --imagenet-weights resnet50-0676ba61.pth
    python samples/coco/coco.py evaluate --annotations annotations/instances_val2017.json \
        --images val2017 --weights runs/coco/final.weights.h5 --json-out runs/coco/val.json

:class:`CocoConfig` is the 1x schedule: 16 images per step (``GPU_COUNT x
IMAGES_PER_GPU`` = 8 x 2), torch-semantics SGD at lr 0.02 per 16 images with
momentum 0.9 and L2 weight decay 1e-4 (not on norm parameters), linear warm-up
over 1000 steps from lr x 0.001, 90k steps (``TOTAL_STEPS``) with lr x 0.1 at 2/3
and 8/9 of them (60k and 80k, :func:`mrcnn.solver.optimizer.auto_lr_steps`), short side
drawn from 640..800 (Detectron2's ``MIN_SIZE_TRAIN``; 800 at inference), long
side <= 1333, padded to a multiple of 32, frozen batch norm and the stem + C2
frozen (``FREEZE_BACKBONE_STAGES=2``, torchvision's ``trainable_backbone_layers=3``),
ResNet-50-FPN from ImageNet weights.

With fewer images per step, :meth:`CocoConfig.for_batch_size` applies the
linear scaling rule (Goyal et al. 2017): the rate follows the batch by itself
(``Config.effective_lr()``: LEARNING_RATE x B/16) and every step count is
multiplied by 16/B, so the schedule covers the same number of images.

ImageNet weights: ``--imagenet-weights FILE`` (a torchvision ``.pth``, read
without torch by :mod:`mrcnn.checkpoint.imagenet`); without it the official file is
downloaded, which fails here (no internet) with a message saying where to put it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mrcnn.config import Config  # noqa: E402
from mrcnn.engine.runs import find_run_config, make_config, parse_set  # noqa: E402
from mrcnn.fileio import json_ready, write_json  # noqa: E402

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

    IMAGE_MIN_DIM = (640, 672, 704, 736, 768, 800)
    IMAGE_MAX_DIM = 1333
    IMAGE_RESIZE_MODE = "pad32"

    OPTIMIZER = "sgd"
    LEARNING_RATE = 0.02  # per LR_REFERENCE_BATCH = 16 images
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 1e-4
    WARMUP_STEPS = 1000
    WARMUP_FACTOR = 0.001
    TOTAL_STEPS = 90000  # LR_STEPS empty: decays at 2/3 and 8/9 = 60k, 80k
    STEPS_PER_EPOCH = 1000

    def for_batch_size(self, images_per_gpu: int, gpu_count: int) -> CocoConfig:
        """The same schedule for another global batch, by the linear scaling rule.

        The rate scales by itself (effective_lr); warm-up, LR_STEPS, TOTAL_STEPS and
        STEPS_PER_EPOCH are multiplied by 16/B (the number of epochs is unchanged).
        """
        batch = int(images_per_gpu) * int(gpu_count)
        factor = PAPER_BATCH_SIZE / batch
        values = self.to_dict()
        values.update(
            IMAGES_PER_GPU=int(images_per_gpu),
            GPU_COUNT=int(gpu_count),
            WARMUP_STEPS=int(round(self.WARMUP_STEPS * factor)),
            LR_STEPS=tuple(int(round(s * factor)) for s in self.LR_STEPS),
            TOTAL_STEPS=int(round(self.TOTAL_STEPS * factor)),
            STEPS_PER_EPOCH=max(1, int(round(self.STEPS_PER_EPOCH * factor))),
        )
        return type(self).from_dict(values)


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

    from mrcnn.checkpoint.backups import save_weights_file
    from mrcnn.checkpoint.imagenet import (
        ImageNetWeightsUnavailable,
        download_imagenet_weights,
        load_imagenet_backbone,
    )
    from mrcnn.data.coco import CocoDataset
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.engine import default_callbacks, make_optimizer
    from mrcnn.fileio import write_text
    from mrcnn.model import MaskRCNN

    config = make_config(CocoConfig, args.set, args.config)
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
    write_text(out / "config.json", config.to_json())

    dataset = CocoDataset(args.annotations, args.images)
    epochs = args.epochs or math.ceil(config.TOTAL_STEPS / config.STEPS_PER_EPOCH)
    print(f"{len(dataset)} images, {dataset.num_classes - 1} classes; batch {config.BATCH_SIZE}, "
          f"{epochs} epochs x {config.STEPS_PER_EPOCH} steps")
    with _strategy(config.GPU_COUNT).scope():
        model = MaskRCNN(config)
        if args.weights is not None:
            model.load_weights(args.weights)
        else:
            report = load_imagenet_backbone(model, weights_file)
            print(f"ImageNet backbone: {report['loaded']} arrays from {weights_file}")
        model.compile(optimizer=make_optimizer(config, epochs=epochs))
    # The run folder hands the resume position to the input: the same command resumes at the step.
    data = build_dataset(dataset, config, training=True, seed=args.seed, run_dir=out)
    callbacks = default_callbacks(out, config=config, epochs=epochs, max_minutes=args.max_minutes or 0.0)
    model.fit(data, epochs=epochs, steps_per_epoch=config.STEPS_PER_EPOCH, callbacks=callbacks, verbose=2)
    final = out / "final.weights.h5"
    save_weights_file(model, final)  # atomic; model variables only (the resume state is in backup/)
    return str(final)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mrcnn.data.coco import CocoDataset
    from mrcnn.evaluate import evaluate_dataset, format_metrics
    from mrcnn.model import MaskRCNN

    config = make_config(CocoConfig, args.set, args.config or find_run_config(args.weights))
    dataset = CocoDataset(args.annotations, args.images)
    ids = dataset.image_ids if args.limit is None else dataset.image_ids[: args.limit]
    model = MaskRCNN(config)
    model.load_weights(args.weights)
    metrics = evaluate_dataset(model.detect, dataset, image_ids=ids, batch_size=1,
                               json_out=args.results_out)
    print(format_metrics(metrics))
    result = {t: metrics[t] for t in ("bbox", "segm")}
    if args.json_out:
        write_json(args.json_out, json_ready(result))
    return json_ready(result)


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
    t.add_argument("--epochs", type=int, default=None, help="default: TOTAL_STEPS / STEPS_PER_EPOCH (90)")
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
        args.set = parse_set(args.set)
        for name in ("annotations",):
            if not Path(getattr(args, name)).is_file():
                raise FileNotFoundError(f"--{name} {getattr(args, name)!r} does not exist")
        if not Path(args.images).is_dir():
            raise FileNotFoundError(f"--images {args.images!r} is not a folder")
        for name in ("weights", "imagenet_weights", "config"):
            value = getattr(args, name, None)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {value!r} does not exist")
        make_config(CocoConfig, args.set, args.config)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    return {"train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    main()
