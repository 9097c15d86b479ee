"""The ``mrcnn`` command line (also ``python -m mrcnn``): a thin layer over the library.

    mrcnn train    --config CFG --dataset DS --out DIR [--epochs N] [--weights FILE | --init imagenet:FILE|coco:FILE]
    mrcnn detect   --config CFG --weights FILE --out DIR IMAGE|FOLDER|GLOB [...]
    mrcnn evaluate --config CFG --weights FILE --dataset DS [--json-out FILE]
    mrcnn data show --config CFG --dataset DS --out DIR [--count N] [--subset train|val]
    mrcnn export   --config CFG --weights FILE --output DIR
    mrcnn convert-weights --from torchvision|detectron2|matterport CHECKPOINT --out FILE.weights.h5
    mrcnn build-ops [--force]
    mrcnn data convert --dataset DS --out DIR [--shards N]
    mrcnn data-service dispatcher|worker --port P

CFG is ``module:ConfigClass`` (e.g. ``mrcnn.data.synthetic:ShapesDemoConfig``),
``file.py:ConfigClass`` (imported with its folder on ``sys.path``) or a ``config.json``
written by training. DS is ``shapes`` (synthetic; sizes from
``--train-images N``/``--val-images N``), ``coco`` (``--annotations FILE --images DIR``,
per subset ``--train-annotations``/``--train-image-dir`` and the ``--val-`` forms) or
``module:function`` where ``function(subset)`` returns a prepared ``mrcnn.Dataset``
for "train"/"val", or ``records:PATTERN`` (TFRecord shards written by ``mrcnn data
convert``; validation records with ``--val-records PATTERN``).

Exit status: 0 done; 2 an error (one line on stderr: the file, image id, field and the
fix); ``detect`` 1 when some images could not be read (each reported and skipped; the
others' results are in detections.json).
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
    if spec.startswith("records:"):
        from mrcnn.data.records import RecordDataset

        pattern = spec.split(":", 1)[1]
        if subset == "val":
            # Records of the training set are no validation set: only --val-records gives one.
            pattern = getattr(args, "val_records", None)
            if not pattern:
                return None
        try:
            return RecordDataset(pattern)
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(f"--dataset {spec}: {exc}") from None
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
        try:
            return CocoDataset(ann, images)
        except (ValueError, KeyError, TypeError) as exc:  # a malformed file: its own message names it
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CLIError(detail if type(exc) is ValueError else f"{ann}: {type(exc).__name__}: {detail}") from None
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


def cmd_data_convert(args: argparse.Namespace) -> int:
    from mrcnn.data.loader import BadSampleError
    from mrcnn.data.records_write import write_records

    if args.dataset.startswith("records:"):
        raise CLIError("--dataset records:... is already records; convert a coco or module:function dataset")
    dataset = load_dataset(args, args.subset)
    try:
        summary = write_records(dataset, args.out, num_shards=args.shards or None, skip_bad=args.skip_bad)
    except (FileExistsError, BadSampleError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(summary.text())
    return 0


def cmd_data_service(args: argparse.Namespace) -> int:
    from mrcnn.engine import data_service

    try:
        if args.role == "dispatcher":
            server = data_service.start_dispatcher(args.port, work_dir=args.work_dir,
                                                   worker_timeout_s=args.worker_timeout)
        else:
            server = data_service.start_worker(args.dispatcher, args.port, host=args.host)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"tf.data service {args.role} serving on port {args.port} (Ctrl-C stops it)", flush=True)
    data_service.serve_until_signal(server)
    return 0


def weights_class_count(path: str) -> int | None:
    """NUM_CLASSES of the model that wrote the ``.weights.h5`` at ``path`` (from its box
    head's class-score bias), or None when the file has no such entry."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            found: list[int] = []

            def visit(name: str, obj: Any) -> None:
                if not found and name.endswith("box_head/cls_score/vars/1") and hasattr(obj, "shape"):
                    found.append(int(obj.shape[0]))

            f.visititems(visit)
    except (OSError, ImportError):
        return None
    return found[0] if found else None


def with_class_names(config: Config, dataset: Any) -> Config:
    """``config`` with ``CLASS_NAMES`` from ``dataset.class_names`` when the config has none
    and the dataset has exactly NUM_CLASSES classes, so that the run's config.json names
    them for ``detect``, the export's labels.txt and the metrics."""
    names = list(getattr(dataset, "class_names", None) or [])
    if config.CLASS_NAMES is None and len(names) == config.NUM_CLASSES:
        config.CLASS_NAMES = tuple(str(n) for n in names)
    return config


def _build_model(config: Config, weights: str | None):
    from mrcnn.engine.runs import build_model

    if weights and not os.path.exists(weights):
        raise CLIError(f"weights file not found: {weights}")
    try:
        return build_model(config, weights or None)
    except (ValueError, OSError) as exc:
        classes = weights_class_count(weights) if weights else None
        if classes is not None and classes != config.NUM_CLASSES:
            raise CLIError(
                f"{weights} was trained with NUM_CLASSES={classes} but the config has "
                f"NUM_CLASSES={config.NUM_CLASSES}: use the config of the run that wrote it "
                f"(its config.json), or start training from it with --init coco:{weights} "
                "(re-initialises the class-specific predictors)") from None
        lines = str(exc).strip().splitlines()
        raise CLIError(f"{weights} does not fit this config ({config.BACKBONE}, NUM_CLASSES="
                       f"{config.NUM_CLASSES}): {lines[0] if lines else type(exc).__name__}") from None


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
    if args.input_timeout < 0:
        raise CLIError(f"--input-timeout must be 0 (wait for ever) or a number of seconds, got {args.input_timeout:g}")
    if distribute.worker_info(strategy).num_workers > 1 and args.max_minutes:
        raise CLIError("--max-minutes with several workers: each would stop at its own step; use --epochs")
    config = distribute.scale_config(config, strategy)  # GPU_COUNT = replicas: BATCH_SIZE is the global batch
    config = _start_config(config, args)
    print(distribute.describe(config, strategy), flush=True)
    train, val = load_dataset(args, "train"), load_dataset(args, "val")
    config = with_class_names(config, train)
    resume = "restart" if args.restart else ("require" if args.resume else "auto")
    from mrcnn.data.records import RecordDataset

    records = isinstance(train, RecordDataset)  # checked sample by sample when written
    input_fn = None
    if args.data_service:
        from mrcnn.data.pipeline import build_dataset

        if not records:
            raise CLIError("--data-service needs --dataset records:PATTERN (write them with `mrcnn data "
                           "convert`): a Python Dataset cannot run on data workers")

        def input_fn(seed: int, start_element: int):
            # The service's dynamic sharding has no global order: a resume starts fresh batches.
            return build_dataset(train, config, training=True, seed=seed, data_service=args.data_service)
    try:
        result = run_training(
            lambda: _start_model(config, args), train, config, args.out, args.epochs,
            args.steps_per_epoch or config.STEPS_PER_EPOCH, val_dataset=val, val_steps=args.val_steps,
            eval_every=args.eval_every, max_minutes=args.max_minutes, input_timeout=args.input_timeout,
            seed=args.seed, resume=resume,
            check=None if args.check == "none" or records else args.check, write_config=True,
            strategy=strategy, input_fn=input_fn, verbose=args.verbose, force=args.force,
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


def __getattr__(name: str) -> Any:
    # mask_to_rle / mask_to_polygons: documented here (docs/api.md), at home in
    # mrcnn.ops.mask_formats; resolved on first use so that `mrcnn --help` needs no TensorFlow.
    if name in ("mask_to_rle", "mask_to_polygons"):
        from mrcnn.ops import mask_formats

        return getattr(mask_formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detection_records(result: dict[str, Any], keep, class_names: list[str],
                      polygons: bool = False) -> list[dict[str, Any]]:
    """JSON-ready detections of one image from a ``model.detect`` result.

    Each record: ``box_yxyx`` (y1, x1, y2, x2 pixels), ``bbox`` (COCO x, y, w, h),
    ``class_id``, ``class_name``, ``score``; with a mask head ``mask_area`` and
    ``segmentation`` (COCO RLE) and, with ``polygons``, ``polygons``; with a keypoint
    head ``keypoints`` [[x, y, score], ...].
    """
    import numpy as np

    from mrcnn.ops.mask_formats import box_mask_to_rle, mask_to_polygons, mask_to_rle

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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def expand_image_inputs(inputs: list[str]) -> list[str]:
    """``mrcnn detect``'s inputs -> image files, in order: a file as given; a folder ->
    its image files (by extension, sorted, not recursive); a pattern with ``*``, ``?``
    or ``[`` -> the matching files (sorted; ``**`` recurses). CLIError for an input that
    does not exist or matches nothing."""
    import glob

    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise CLIError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise CLIError(f"no file matches {item}")
            paths += found
        else:
            raise CLIError(f"image not found: {item}")
    return paths


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mrcnn.fileio import write_json
    from mrcnn.visualize import draw_instances, save_image

    config = load_config(args.config)
    paths = expand_image_inputs(args.images)  # fail before building the model
    # Detections below --min-score are not reported: their masks need not be computed.
    config.DETECTION_MASK_MIN_SCORE = max(0.0, min(float(args.min_score), 1.0))
    model = _build_model(config, args.weights)
    names = list(config.CLASS_NAMES or [str(i) for i in range(config.NUM_CLASSES)])
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "detections.json")
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    empty: list[str] = []
    bar = tqdm(list(zip(paths, output_names(paths))), desc="detect", unit="img")
    try:
        for path, out_name in bar:
            try:
                image = _read_image(path)
            except CLIError as exc:  # one bad file must not cost the others their results
                bar.write(f"mrcnn detect: skipped {path}: {str(exc).removeprefix(f'cannot read image {path}: ')}",
                          file=sys.stderr)
                skipped.append(path)
                continue
            # Box-format masks: memory follows the instances, not the image (tiles of a slide).
            r = model.detect([image], mask_format="box", tile_size=args.tile, tile_overlap=args.tile_overlap)[0]
            r["image_shape"] = image.shape[:2]
            keep = r["scores"] >= args.min_score
            if not keep.any():
                best = float(r["scores"].max()) if len(r["scores"]) else None
                hint = (f"the best score was {best:.3f} ({names[int(r['class_ids'][r['scores'].argmax()])]}): "
                        f"lower --min-score to see it" if best is not None
                        else f"the model found nothing above DETECTION_MIN_CONFIDENCE={config.DETECTION_MIN_CONFIDENCE}")
                bar.write(f"{path}: no detection at --min-score {args.min_score}; {hint}", file=sys.stderr)
                empty.append(path)
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
    finally:  # an error or Ctrl-C still leaves the results of the images that ran
        bar.close()
        write_json(json_path, json_ready(records))
    print(f"wrote {len(records)} images and detections.json to {args.out}"
          + (f"; {len(empty)} with no detection at --min-score {args.min_score}" if empty else ""))
    if skipped:
        print(f"mrcnn detect: {len(skipped)} of {len(paths)} image(s) could not be read and were skipped "
              f"(listed above); exit status 1", file=sys.stderr)
        return 1
    return 0


def _evaluation_key(args: argparse.Namespace, config: Config) -> str:
    """What makes two ``mrcnn evaluate`` runs the same evaluation, so that the second may reuse
    the ``--results-out`` partial file the first left when it was killed: the weights file (path,
    size, modification time), the config and every other flag."""
    import hashlib
    import json

    stat = os.stat(args.weights)
    flags = {k: v for k, v in sorted(vars(args).items())
             if not callable(v) and k not in ("json_out", "results_out")}
    blob = json.dumps([os.path.abspath(args.weights), stat.st_size, stat.st_mtime_ns, config.to_json(), flags],
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_class_count(dataset: Any, config: Config, flag: str = "--dataset") -> None:
    from mrcnn.data.check import ClassCountError, check_class_count

    try:
        check_class_count(dataset, config)
    except ClassCountError as exc:
        raise CLIError(f"{flag} {exc}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrcnn.evaluate import evaluate_dataset, format_metrics

    config = load_config(args.config)
    if args.dataset.startswith("records:"):
        raise CLIError("evaluate reads images and annotations through a Dataset (COCO metrics need the "
                       "annotation file): use --dataset coco or module:function, not records")
    dataset = load_dataset(args, "val")
    _check_class_count(dataset, config, f"--dataset {args.dataset}:")
    model = _build_model(config, args.weights)
    image_ids = list(dataset.image_ids)[: args.limit] if args.limit else None
    try:
        metrics = evaluate_dataset(model.detect, dataset, image_ids=image_ids, batch_size=config.BATCH_SIZE,
                                   json_out=args.results_out, resume_key=_evaluation_key(args, config))
    except (OSError, ValueError) as exc:
        # A file that does not decode (truncated JPEG, not an image) or a malformed annotation:
        # the loaders' messages name the image id, its file and the field.
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else type(exc).__name__
        fix = ("; fix or replace the file, or remove the image from the annotations"
               if isinstance(exc, OSError) else "")
        raise CLIError(f"{detail}{fix}") from None
    print(format_metrics(metrics))
    if args.json_out:
        from mrcnn.fileio import write_json

        # Only the IoU types the model has (no "segm" without a mask head), per-class AP
        # ({"bbox": {class name: AP}, ...}); strict JSON.
        summary = {k: metrics[k] for k in ("bbox", "segm", "keypoints", "per_class") if k in metrics}
        write_json(args.json_out, json_ready(summary))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """``mrcnn data show``: N training samples drawn as the model receives them."""
    import numpy as np

    from mrcnn.data.check import DatasetCheckError
    from mrcnn.data.health import DataHealth
    from mrcnn.data.loader import BadSampleError, expand_mini_masks
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.visualize import draw_instances, save_image

    if args.count < 1:
        raise CLIError(f"--count must be >= 1, got {args.count}")
    config = load_config(args.config)
    dataset = load_dataset(args, args.subset)
    _check_class_count(dataset, config, f"--dataset {args.dataset}:")
    names = list(config.CLASS_NAMES or dataset.class_names)
    training = args.subset == "train"
    os.makedirs(args.out, exist_ok=True)
    import tensorflow as tf

    health = DataHealth()
    try:
        stream = build_dataset(dataset, config, training=training, batch_size=1, seed=args.seed,
                               repeat=training, check="all" if args.count >= len(dataset.image_ids) else False,
                               health=health)
        written = 0
        for batch in stream.take(args.count):
            sample = {k: v.numpy()[0] for k, v in batch.items()}
            h, w = (int(v) for v in sample["image_sizes"])
            image = np.clip(sample["images"][:h, :w], 0, 255).astype(np.uint8)
            valid = sample["gt_class_ids"] != 0
            boxes, class_ids = sample["gt_boxes"][valid], sample["gt_class_ids"][valid]
            masks = sample["gt_masks"][valid]
            if config.MINI_MASK_SHAPE is not None:  # mini masks in their box frame
                masks = expand_mini_masks(masks, boxes, h, w)
            else:
                masks = np.transpose(masks, (1, 2, 0))[:h, :w].astype(bool)
            keypoints = sample["gt_keypoints"][valid] - [0.5, 0.5, 0.0] if "gt_keypoints" in sample else None
            drawn = draw_instances(image, boxes, masks, class_ids, names, keypoints=keypoints,
                                   skeleton=config.KEYPOINT_SKELETON)
            save_image(os.path.join(args.out, f"sample_{written:03d}.png"), drawn)
            written += 1
    except (DatasetCheckError, BadSampleError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
    except tf.errors.OpError as exc:
        bad = health.first_bad_sample
        raise CLIError(str(bad) if bad is not None else str(exc).strip().splitlines()[0]) from None
    print(f"wrote {written} {args.subset} sample(s) as the model sees them (resize"
          f"{', flip and augmentation' if training else ''}) to {args.out}")
    return 0


def _run_export(args: argparse.Namespace) -> str | list[str]:
    """``mrcnn export``: a SavedModel (default) or a runtime file (--format)."""
    from mrcnn.export import runtimes, saved_model
    from mrcnn.export.formats import MissingRuntimeError

    if args.format != "saved_model":
        try:
            paths = runtimes.export_model_from_files(
                args.weights, args.config, args.output, args.format, overwrite=args.overwrite
            )
        except MissingRuntimeError as err:
            raise CLIError(str(err)) from err
        print(f"{args.format} model written to {', '.join(paths)} (class names in labels.txt)")
        return paths
    if args.max_pixels < 0:
        raise CLIError(f"--max-pixels must be >= 0 (0 = no limit), got {args.max_pixels}")
    path = saved_model.export_from_files(
        args.weights, args.config, args.output, args.version, overwrite=args.overwrite,
        max_pixels=args.max_pixels or None,
    )
    print(f"SavedModel written to {path}")
    print(f"signatures: {saved_model.SIGNATURE_IMAGE} (uint8 images), "
          f"{saved_model.SIGNATURE_ENCODED} (JPEG/PNG bytes)")
    return path


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
    try:
        if args.quantize != "none" or args.calibration is not None:
            _export_int8(args)
        else:
            _run_export(args)
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
    print(f"checkpoint: {report['model']}")
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
        p.add_argument("--dataset", required=True,
                       help="shapes | coco | module:function | records:PATTERN (TFRecords of `mrcnn data convert`)")
        p.add_argument("--annotations", help="COCO instances JSON (--dataset coco)")
        p.add_argument("--images", help="COCO image folder (--dataset coco)")
        # The shapes counts have their own dest: "train_images" would read like the COCO folder.
        p.add_argument("--train-images", dest="shapes_train_count", type=int, default=2000,
                       help="shapes: number of training images")
        p.add_argument("--val-images", dest="shapes_val_count", type=int, default=100,
                       help="shapes: number of validation images")
        p.add_argument("--val-annotations", help="COCO: validation annotations (default --annotations)")
        p.add_argument("--val-image-dir", help="COCO: validation image folder (default --images)")
        p.add_argument("--val-records", help="records: validation TFRecords PATTERN (default none: no "
                                             "validation loss)")

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
    p.add_argument("--input-timeout", type=float, default=0, metavar="SECONDS",
                   help="exit with status 5 when a training step waits longer than this for its input (a "
                        "dead --data-service worker, a hung file system), so a scheduler restarts the run "
                        "and it resumes from its newest backup; 0 = wait for ever")
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
    p.add_argument("--data-service", default=None, metavar="grpc://HOST:PORT",
                   help="run the input pipeline on tf.data service workers (needs --dataset records:...; "
                        "docs/distributed.md); default: in this process")
    p.set_defaults(func=cmd_train)

    defaults = argparse.ArgumentDefaultsHelpFormatter  # every default shown in --help
    p = sub.add_parser("data-service", help="start a tf.data service dispatcher or worker (docs/distributed.md)")
    p.add_argument("role", choices=("dispatcher", "worker"))
    p.add_argument("--port", type=int, required=True, help="port to serve on")
    p.add_argument("--dispatcher", default="localhost:5050",
                   help="worker: the dispatcher's HOST:PORT (default localhost:5050)")
    p.add_argument("--host", default="localhost",
                   help="worker: the host name the dispatcher and trainers reach this worker at (default localhost)")
    p.add_argument("--work-dir", default=None,
                   help="dispatcher: folder for its journal, so a restarted dispatcher resumes its jobs "
                        "(default none: in memory)")
    p.add_argument("--worker-timeout", type=float, default=30.0,
                   help="dispatcher: seconds without a heartbeat before a worker counts as lost (default 30)")
    p.set_defaults(func=cmd_data_service)

    p = sub.add_parser("detect", help="detect instances in image files", formatter_class=defaults,
                       description="Detect instances in images: one PNG with the detections drawn per "
                                   "image and detections.json (written for every image that ran; an "
                                   "unreadable image is reported and skipped, exit status 1).")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True, help="folder for PNGs and detections.json")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="draw/report detections at or above this; masks are computed only for them "
                        "(DETECTION_MASK_MIN_SCORE)")
    p.add_argument("--tile", type=int, default=None, metavar="T",
                   help="run on overlapping T x T tiles and merge across seams (large images); "
                        "None = whole images")
    p.add_argument("--tile-overlap", type=int, default=128, metavar="O",
                   help="tile overlap in pixels (instances smaller than it are seen whole)")
    p.add_argument("--polygons", action="store_true",
                   help="also write each mask's outline as COCO polygons in detections.json")
    p.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns "
                                             "('photos/*.jpg', quoted; '**' recurses)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="COCO bbox/segm metrics with pycocotools", formatter_class=defaults)
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    dataset_args(p)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    p.add_argument("--json-out", help="write {'bbox': ..., 'segm': ..., 'per_class': {'bbox': {name: AP}, ...}} "
                                      "here (strict JSON)")
    p.add_argument("--results-out", help="write detections in COCO results format here (a killed run leaves "
                   "FILE.partial; the same command reuses the images it finished)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="dataset tools: look at a dataset before training, convert it to TFRecords")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("convert", help="write a dataset as TFRecord shards (TF Object Detection API fields)")
    dataset_args(q)
    q.add_argument("--out", required=True, help="folder for the shards and records.json")
    q.add_argument("--shards", type=int, default=0, help="number of shard files (default 0 = one per 256 images)")
    q.add_argument("--subset", choices=("train", "val"), default="train",
                   help="which subset of --dataset to convert (module:function datasets; default train)")
    q.add_argument("--skip-bad", action="store_true",
                   help="skip images the loader rejects (listed in the summary) instead of stopping")
    q.set_defaults(func=cmd_data_convert)

    p = data_sub.add_parser("show", formatter_class=defaults,
                            help="draw N samples with masks, boxes and class names as the model sees them",
                            description="Write OUT/sample_NNN.png: N samples of --subset after the input "
                                        "pipeline (resize, and for train the flip and augmentation), with "
                                        "their ground-truth masks, boxes and class names.")
    p.add_argument("--config", required=True)
    dataset_args(p)
    p.add_argument("--train-annotations", help="COCO: training annotations (default --annotations)")
    p.add_argument("--train-image-dir", help="COCO: training image folder (default --images)")
    p.add_argument("--out", required=True, help="folder for the pictures")
    p.add_argument("--count", type=int, default=8, help="number of samples")
    p.add_argument("--subset", choices=("train", "val"), default="train",
                   help="train: with flips and augmentation, as training sees it; val: resize only")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle, flips and augmentation")
    p.set_defaults(func=cmd_data_show)

    p = sub.add_parser("export", help="SavedModel for TF Serving (stock TF ops only), ONNX, OpenVINO, LiteRT")
    from mrcnn.export.formats import FORMATS
    from mrcnn.export.saved_model import DEFAULT_MAX_PIXELS

    p.add_argument("--weights", required=True, help="trained weights (.weights.h5)")
    p.add_argument("--config", required=True, help="MODULE:CLASS, FILE.py:CLASS or a config JSON (Config.to_dict())")
    p.add_argument("--output", required=True, help="base directory; writes OUTPUT/VERSION/")
    p.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    p.add_argument("--no-version-dir", dest="version", action="store_const", const=None,
                   help="write the SavedModel directly into OUTPUT (no version folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument(
        "--format", default="saved_model", choices=FORMATS,
        help="saved_model (TF Serving, default): OUTPUT/VERSION/; onnx: OUTPUT/model.onnx; "
        "openvino: OUTPUT/model.xml + model.bin; litert: OUTPUT/model.tflite (docs/serving.md)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
        help=f"SavedModel: refuse requests with more than this many pixels (H * W), encoded "
        f"images before decoding (default {DEFAULT_MAX_PIXELS}; 0 = no limit)",
    )
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

    p = sub.add_parser("convert-weights", help="torchvision/Detectron2/matterport checkpoint -> Keras weights")
    p.add_argument("--from", dest="source", required=True, choices=("torchvision", "detectron2", "matterport"),
                   help="checkpoint format")
    p.add_argument("checkpoint", help="torchvision .pth, Detectron2 .pkl/.pth or matterport Keras 2 .h5 file")
    p.add_argument("--out", required=True, help="output Keras weights, FILE.weights.h5")
    p.add_argument("--config", default=None,
                   help="module:Class or config.json (default: the preset of the checkpoint's model, "
                        "recognised from its keys: mrcnn.configs.TorchvisionCOCO / TorchvisionCOCOv2 / "
                        "Detectron2COCO / Detectron2LSJ, BACKBONE=resnet101 for an R101 checkpoint; "
                        "matterport: mrcnn.configs.MatterportConfig with the file's backbone and NUM_CLASSES)")
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
