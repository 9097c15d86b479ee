"""The ``mrcnn`` command line (also ``python -m mrcnn``): a thin layer over the library.

    mrcnn train    --config CFG --dataset DS --out DIR [--epochs N] [--weights FILE | --init imagenet:FILE|coco:FILE]
    mrcnn detect   --config CFG --weights FILE --out DIR IMAGE [IMAGE ...]
    mrcnn evaluate --config CFG --weights FILE --dataset DS [--json-out FILE]
    mrcnn export   --config CFG --weights FILE --output DIR
    mrcnn convert-weights --from torchvision|detectron2 CHECKPOINT --out FILE.weights.h5
    mrcnn build-ops [--force]

CFG is ``module:ConfigClass`` (e.g. ``mrcnn.data.synthetic:ShapesDemoConfig``) or
a ``config.json`` written by training. DS is ``shapes`` (synthetic; sizes from
``--train-images N``/``--val-images N``), ``coco`` (``--annotations FILE --images DIR``,
per subset ``--train-annotations``/``--train-image-dir`` and the ``--val-`` forms) or
``module:function`` where ``function(subset)`` returns a prepared ``mrcnn.Dataset``
for "train"/"val".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from mrcnn import config as config_module
from mrcnn.config import Config
from mrcnn.fileio import json_ready  # noqa: F401 - documented here (docs/api.md)


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
        count = args.shapes_train_count if subset == "train" else args.shapes_val_count
        ds.load_shapes(count, seed=1 if subset == "train" else 2)
        return ds
    if spec == "coco":
        from mrcnn.data.coco import CocoDataset

        # Per-subset flags (train only has both) win over the shared --annotations/--images.
        ann = getattr(args, f"{subset}_annotations", None) or args.annotations
        images = getattr(args, f"{subset}_image_dir", None) or args.images
        if not ann or not images:
            raise CLIError("--dataset coco needs --annotations FILE and --images DIR")
        if not os.path.isfile(ann):
            raise CLIError(f"COCO annotations file not found: {ann}")
        if not os.path.isdir(images):
            raise CLIError(f"COCO image folder not found: {images}")
        return CocoDataset(ann, images)
    factory = _import_object(spec, "--dataset")
    try:
        dataset = factory(subset)
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory: say which one failed
        raise CLIError(f"--dataset {spec}: {spec}({subset!r}) raised {type(exc).__name__}: {exc}") from exc
    from mrcnn.data.dataset import Dataset

    if not isinstance(dataset, Dataset):
        raise CLIError(f"--dataset {spec}: {spec}({subset!r}) returned {type(dataset).__name__}, "
                       "not a prepared mrcnn.Dataset")
    return dataset


def _build_model(config: Config, weights: str | None):
    from mrcnn.engine.runs import build_model

    try:
        return build_model(config, weights or None)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _start_config(config: Config, args: argparse.Namespace) -> Config:
    """``--init``: check the start (frozen_bn needs loaded weights) and resolve the frozen stages."""
    from mrcnn.checkpoint import pretrained

    if args.init and args.weights:
        raise CLIError("--init and --weights both set: --weights FILE loads a whole model of this config, "
                       "--init a pretrained start; use one")
    try:
        return pretrained.config_for_start(config, args.init, weights_loaded=bool(args.weights))
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None


def _start_model(config: Config, args: argparse.Namespace):
    """The model for ``mrcnn train``: ``--weights`` as before, else the ``--init`` start, with its report."""
    from mrcnn.checkpoint import pretrained

    if args.weights:
        return _build_model(config, args.weights)
    model = _build_model(config, None)
    try:
        report = pretrained.initialize(model, args.init)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(f"--init {args.init}: {exc}") from None
    print(report.summary(), flush=True)
    return model


def cmd_train(args: argparse.Namespace) -> int:
    # Resumable, locked, atomic: see mrcnn.engine.runner.run_training and docs/reliability.md.
    from mrcnn.data.check import DatasetCheckError
    from mrcnn.data.loader import BadSampleError
    from mrcnn.engine.callbacks import NonFiniteLossError
    from mrcnn.engine.runlock import RunLockedError
    from mrcnn.engine.runner import ResumeError, run_training

    config = load_config(args.config)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    from mrcnn.engine import distribute

    try:  # before anything runs TensorFlow: multi-worker sets up the cluster
        strategy = distribute.make_strategy(args.strategy)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if distribute.worker_info(strategy).num_workers > 1 and args.max_minutes:
        raise CLIError("--max-minutes with several workers: each would stop at its own step; use --epochs")
    config = distribute.scale_config(config, strategy)  # GPU_COUNT = replicas: BATCH_SIZE is the global batch
    config = _start_config(config, args)
    print(distribute.describe(config, strategy), flush=True)
    train, val = load_dataset(args, "train"), load_dataset(args, "val")
    resume = "restart" if args.restart else ("require" if args.resume else "auto")
    try:
        result = run_training(
            lambda: _start_model(config, args), train, config, args.out, args.epochs,
            args.steps_per_epoch or config.STEPS_PER_EPOCH, val_dataset=val, val_steps=args.val_steps,
            eval_every=args.eval_every, max_minutes=args.max_minutes, seed=args.seed, resume=resume,
            check=None if args.check == "none" else args.check, write_config=True, strategy=strategy,
            verbose=args.verbose, force=args.force,
        )
    except (RunLockedError, ResumeError, BadSampleError, DatasetCheckError) as exc:
        raise CLIError(str(exc)) from None
    except NonFiniteLossError as exc:
        print(f"mrcnn train: error: {exc}", file=sys.stderr)
        return 3
    except distribute.PEER_FAILURES as exc:
        if not distribute.is_peer_failure(exc, strategy):
            raise
        print(f"mrcnn train: error: lost another worker ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
              f"start all workers again to resume from {os.path.join(args.out, 'backup')}", file=sys.stderr)
        return 4
    if result.signum is not None:
        return 128 + int(result.signum)
    if result.final_weights:
        print(f"weights: {result.final_weights}")
    return 0


def _read_image(path: str):
    from PIL import Image
    from skimage import io

    from mrcnn.data.loader import sanitize_image

    try:
        return sanitize_image(io.imread(path), ref=path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # the bomb error is no OSError
        raise CLIError(f"cannot read image {path}: {exc}") from exc


def output_names(paths: list[str]) -> list[str]:
    """One PNG file name per input image: its stem, then ``stem-2.png``, ``stem-3.png``, ...
    for later inputs with the same stem (compared case-insensitively, for macOS/Windows)."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, k = f"{stem}.png", 2
        while name.lower() in used:
            name, k = f"{stem}-{k}.png", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def mask_to_rle(mask) -> dict[str, Any]:
    """bool [H, W] -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed
    format, what ``pycocotools.mask.decode`` and COCO results files take)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask, tolerance: float = 1.0) -> list[list[float]]:
    """bool [H, W] -> outlines as COCO polygons ``[x1, y1, x2, y2, ...]`` (pixel corners:
    the contour of the mask's pixel squares, simplified to within ``tolerance`` pixels)."""
    import numpy as np
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)  # closes contours that touch the border
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance) - 1.0  # undo the pad
        if len(contour) < 3:
            continue
        # find_contours gives (row, col) of pixel centres; +0.5 puts them on pixel edges.
        xy = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1)
        polygons.append([round(float(v), 2) for v in xy.ravel()])
    return polygons


def detection_records(result: dict[str, Any], keep, class_names: list[str],
                      polygons: bool = False) -> list[dict[str, Any]]:
    """JSON-ready detections of one image from a ``model.detect`` result.

    Each record: ``box_yxyx`` (y1, x1, y2, x2 pixels), ``bbox`` (COCO x, y, w, h),
    ``class_id``, ``class_name``, ``score``; with a mask head ``mask_area`` and
    ``segmentation`` (COCO RLE) and, with ``polygons``, ``polygons``; with a keypoint
    head ``keypoints`` [[x, y, score], ...].
    """
    import numpy as np

    records = []
    for i in np.flatnonzero(keep):
        y1, x1, y2, x2 = (float(v) for v in result["rois"][i])
        c = int(result["class_ids"][i])
        record: dict[str, Any] = {
            "box_yxyx": [round(v, 2) for v in (y1, x1, y2, x2)],
            "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
            "class_id": c,
            "class_name": class_names[c] if 0 <= c < len(class_names) else str(c),
            "score": round(float(result["scores"][i]), 4),
        }
        if "masks" in result and "mask_offsets" in result:  # box format: crop + offset
            from mrcnn.ops.mask_formats import box_mask_to_rle

            crop, (oy, ox) = result["masks"][i], result["mask_offsets"][i]
            record["mask_area"] = int(crop.sum())
            record["segmentation"] = box_mask_to_rle(crop, (oy, ox), result["image_shape"])
            if polygons:
                record["polygons"] = [[v + (ox if k % 2 == 0 else oy) for k, v in enumerate(poly)]
                                      for poly in mask_to_polygons(crop)]
        elif "masks" in result:
            mask = result["masks"][..., i]
            record["mask_area"] = int(mask.sum())
            record["segmentation"] = mask_to_rle(mask)
            if polygons:
                record["polygons"] = mask_to_polygons(mask)
        if "keypoints" in result:
            record["keypoints"] = [[round(float(x), 2), round(float(y), 2), round(float(sc), 4)]
                                   for x, y, sc in result["keypoints"][i]]
        records.append(record)
    return records


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mrcnn.fileio import write_json
    from mrcnn.visualize import draw_instances, save_image

    config = load_config(args.config)
    for path in args.images:  # fail before building the model
        if not os.path.isfile(path):
            raise CLIError(f"image not found: {path}")
    # Detections below --min-score are not reported: their masks need not be computed.
    config.DETECTION_MASK_MIN_SCORE = max(0.0, min(float(args.min_score), 1.0))
    model = _build_model(config, args.weights)
    names = list(config.CLASS_NAMES or [str(i) for i in range(config.NUM_CLASSES)])
    os.makedirs(args.out, exist_ok=True)
    records = []
    for path, out_name in tqdm(list(zip(args.images, output_names(args.images))), desc="detect", unit="img"):
        image = _read_image(path)
        # Box-format masks: memory follows the instances, not the image (tiles of a slide).
        r = model.detect([image], mask_format="box", tile_size=args.tile, tile_overlap=args.tile_overlap)[0]
        r["image_shape"] = image.shape[:2]
        keep = r["scores"] >= args.min_score
        drawn = draw_instances(
            image, r["rois"][keep], [m for m, k in zip(r["masks"], keep) if k] if "masks" in r else None,
            r["class_ids"][keep], names, r["scores"][keep],
            keypoints=r["keypoints"][keep] if "keypoints" in r else None,
            skeleton=config.KEYPOINT_SKELETON,
            mask_offsets=r["mask_offsets"][keep] if "masks" in r else None,
        )
        save_image(os.path.join(args.out, out_name), drawn)
        records.append({
            "image": path,
            "output": out_name,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "detections": detection_records(r, keep, names, polygons=args.polygons),
        })
    write_json(os.path.join(args.out, "detections.json"), json_ready(records))
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
        from mrcnn.fileio import write_json

        # Only the IoU types the model has (no "segm" without a mask head); strict JSON.
        summary = {k: metrics[k] for k in ("bbox", "segm", "keypoints") if k in metrics}
        write_json(args.json_out, json_ready(summary))
    return 0


def _export_int8(args: argparse.Namespace) -> None:
    """``mrcnn export --quantize int8``: calibrate on ``--calibration`` (the train subset of a
    ``--dataset`` form) and write the quantized ONNX / OpenVINO files (mrcnn.export.quantize)."""
    from mrcnn.export.formats import MissingRuntimeError
    from mrcnn.export.quantize import CalibrationImages, check_quantize_args
    from mrcnn.export.runtimes import export_model_from_files

    check_quantize_args(args.format, args.quantize, args.calibration)
    spec = argparse.Namespace(
        dataset=args.calibration, annotations=args.annotations, images=args.images,
        shapes_train_count=args.calibration_images, shapes_val_count=0,
    )
    images = CalibrationImages(load_dataset(spec, "train"), args.calibration_images)
    print(f"calibrating on {len(images)} images of {args.calibration}")
    try:
        paths = export_model_from_files(args.weights, args.config, args.output, args.format,
                                        overwrite=args.overwrite, quantize="int8", calibration=images)
    except MissingRuntimeError as err:
        raise CLIError(str(err)) from err
    print(f"{args.format} int8 model written to {', '.join(paths)} (class names in labels.txt)")


def cmd_export(args: argparse.Namespace) -> int:
    from mrcnn.export import saved_model as export

    try:
        if args.quantize != "none" or args.calibration is not None:
            _export_int8(args)
        else:
            export.run(args)
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        # Bad config/weights/output folder (ValueError, OSError), a full disk, a missing
        # optional converter (ImportError), an op the target format lacks, a TF error while
        # tracing or saving (tf.errors.OpError): the first line of the message, no traceback.
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else "(no message)"
        prefix = "" if type(exc) is ValueError else f"{type(exc).__name__}: "
        raise CLIError(f"{prefix}{detail}") from exc
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    """``mrcnn convert-weights``: :func:`mrcnn.checkpoint.convert.convert`; errors are one line."""
    import pickle

    from mrcnn.checkpoint.convert import ConversionError, convert

    config = load_config(args.config) if args.config else None
    try:
        report = convert(args.checkpoint, args.out, args.source, config)
    except (ConversionError, FileNotFoundError, ValueError, pickle.UnpicklingError) as exc:
        raise CLIError(str(exc)) from None
    print(f"converted {len(report['keys'])} tensors ({report['assigned']} Keras weights, "
          f"{len(report['ignored'])} ignored) for {report['config']} -> {report['out']}")
    return 0


def cmd_build_ops(args: argparse.Namespace) -> int:
    from mrcnn.ops import custom_roi_align

    try:
        path = custom_roi_align.build(force=args.force, verbose=True)
    except custom_roi_align.BuildError as exc:
        raise CLIError(str(exc)) from exc
    print(f"custom RoIAlign op library: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrcnn", description="Mask R-CNN for Keras 3 / TensorFlow")
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_args(p):
        p.add_argument("--dataset", required=True, help="shapes | coco | module:function")
        p.add_argument("--annotations", help="COCO instances JSON (--dataset coco)")
        p.add_argument("--images", help="COCO image folder (--dataset coco)")
        # The shapes counts have their own dest: "train_images" would read like the COCO folder.
        p.add_argument("--train-images", dest="shapes_train_count", type=int, default=2000,
                       help="shapes: number of training images")
        p.add_argument("--val-images", dest="shapes_val_count", type=int, default=100,
                       help="shapes: number of validation images")
        p.add_argument("--val-annotations", help="COCO: validation annotations (default --annotations)")
        p.add_argument("--val-image-dir", help="COCO: validation image folder (default --images)")

    p = sub.add_parser("train", help="train with model.fit",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="module:Class, file.py:Class or a run's config.json")
    dataset_args(p)
    p.add_argument("--train-annotations", help="COCO: training annotations (default --annotations)")
    p.add_argument("--train-image-dir", help="COCO: training image folder (default --images)")
    p.add_argument("--out", required=True, help="checkpoints, logs and backups go here")
    p.add_argument("--weights", help="initial weights (.weights.h5)")
    p.add_argument("--init", default=None, metavar="imagenet:FILE|coco:FILE|none",
                   help="pretrained start (torchvision .pth, Detectron2 .pkl or .weights.h5): the backbone "
                        "(imagenet) or everything but the class-specific predictors (coco); docs/weights.md")
    p.add_argument("--epochs", type=int, default=10, help="the planned epochs (more continue a finished run)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="steps per epoch (0: Config.STEPS_PER_EPOCH)")
    p.add_argument("--val-steps", type=int, default=0, help="validation-loss steps per epoch")
    p.add_argument("--eval-every", type=int, default=0, help="COCO-evaluate every N epochs")
    p.add_argument("--max-minutes", type=float, default=0, help="stop cleanly after this long")
    p.add_argument("--resume", action="store_true", help="resume the run in --out (error if there is none)")
    p.add_argument("--restart", action="store_true",
                   help="start fresh; the previous run's files move to OUT/previous-<time>/")
    p.add_argument("--seed", type=int, default=None, help="data/initialisation seed of a fresh run")
    p.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    p.add_argument("--strategy", choices=("auto", "one-device", "mirrored", "multi-worker"), default="auto",
                   help="tf.distribute strategy: auto = all GPUs when several; multi-worker reads TF_CONFIG "
                        "(docs/distributed.md)")
    p.add_argument("--check", choices=("none", "sample", "all"), default="sample",
                   help="pre-flight data check: a random sample of 200 images, all, or none")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0 quiet, 1 a progress bar per step with ETA, 2 one line per epoch (logs)")
    p.add_argument("--force", action="store_true",
                   help="resume even though the config differs from the run's config.json (the changes are "
                        "listed); without it such a resume is refused")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("detect", help="detect instances in image files")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="folder for PNGs and detections.json")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="draw/report detections at or above this; masks are computed only for them "
                        "(DETECTION_MASK_MIN_SCORE)")
    p.add_argument("--tile", type=int, default=None, metavar="T",
                   help="run on overlapping T x T tiles and merge across seams (large images)")
    p.add_argument("--tile-overlap", type=int, default=128, metavar="O",
                   help="tile overlap in pixels (default 128; instances smaller than it are seen whole)")
    p.add_argument("--polygons", action="store_true",
                   help="also write each mask's outline as COCO polygons in detections.json")
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
    from mrcnn.export import saved_model as export

    export.add_arguments(p)
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="onnx/openvino: post-training int8 (convolutions and fully connected layers; "
                        "RoIAlign, box decoding and NMS stay float32), calibrated on --calibration "
                        "(default none)")
    p.add_argument("--calibration", default=None, metavar="DATASET",
                   help="--quantize int8: calibration images from this dataset's train subset "
                        "(shapes | coco | module:function, as --dataset)")
    p.add_argument("--calibration-images", type=int, default=300,
                   help="--quantize int8: number of calibration images (a seeded sample; default 300)")
    p.add_argument("--annotations", help="--calibration coco: COCO instances JSON")
    p.add_argument("--images", help="--calibration coco: COCO image folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert-weights", help="torchvision/Detectron2 checkpoint -> Keras weights")
    p.add_argument("--from", dest="source", required=True, choices=("torchvision", "detectron2"),
                   help="checkpoint format")
    p.add_argument("checkpoint", help="torchvision .pth or Detectron2 .pkl/.pth file")
    p.add_argument("--out", required=True, help="output Keras weights, FILE.weights.h5")
    p.add_argument("--config", default=None,
                   help="module:Class or config.json (default: mrcnn.configs.TorchvisionCOCO / Detectron2COCO)")
    p.set_defaults(func=cmd_convert_weights)

    p = sub.add_parser("build-ops", help="(re)build the custom RoIAlign op")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_ops)
    return parser


def version_string() -> str:
    """``mrcnn X (TensorFlow Y, Keras Z)`` from the installed distributions (no TF import)."""
    from importlib import metadata

    import mrcnn

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"mrcnn {mrcnn.__version__} (TensorFlow {dist('tensorflow')}, Keras {dist('keras')})"


def _quiet_python_logging() -> None:
    # absl's Python logger (used by TF/Keras for e.g. "Compiled the loaded model, but the
    # compiled metrics have yet to be built") prints WARNING lines a CLI user cannot act on.
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _quiet_python_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"mrcnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
