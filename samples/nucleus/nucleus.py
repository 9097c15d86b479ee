"""Nucleus instance segmentation on the 2018 Data Science Bowl layout.

The model user's path: subclass :class:`~mrcnn.config.Config` and
:class:`~mrcnn.data.dataset.Dataset` for a dataset in its own format; everything
else (augmentation, optimiser, time budget, evaluation curve) is the library's::

    python samples/nucleus/nucleus.py train --dataset ../shared/datasets/nuclei --out runs/nucleus \
        --max-minutes 30
    python samples/nucleus/nucleus.py evaluate --dataset ../shared/datasets/nuclei --subset val \
        --weights runs/nucleus/final.weights.h5 --json-out runs/nucleus/val_metrics.json
    mrcnn detect --config runs/nucleus/config.json --weights runs/nucleus/final.weights.h5 \
        --out runs/nucleus/overlays IMAGE.png ...      # the library's CLI, no sample code

Layout (as the original release)::

    DIR/stage1_train/<id>/images/<id>.png     RGBA (alpha dropped)
    DIR/stage1_train/<id>/masks/<m>.png       one binary PNG (0/255) per instance

``--dataset`` may name the ``stage1_train`` folder itself or its parent.

Split: an image is in "val" when the first 8 bytes of SHA-256(image id), read as
a fraction of 2**64, fall below ``VAL_FRACTION`` (10%); otherwise in "train".
The split depends on nothing but the id, so it is stable across machines, file
orders and dataset versions (adding images never moves an old one).

Scale and crops: every image is resized to a long side of 512 ("pad32"), so the
256x256 images (most of the data, the smallest nuclei) are enlarged x2 and nuclei
land at 10-60 px. Training sees that scale times a jitter and a random 256x256
window of it (``TRAIN_SCALE_JITTER``, ``TRAIN_CROP_SIZE``: the pipeline's
augmentation stage, :mod:`mrcnn.data.augment`): a quarter of the compute of a
512 image for the same nuclei size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make `mrcnn` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mrcnn.config import Config  # noqa: E402
from mrcnn.data.dataset import Dataset, read_rgb_file  # noqa: E402
from mrcnn.engine.runs import build_model, find_run_config, make_config, parse_set  # noqa: E402
from mrcnn.fileio import json_ready, write_json  # noqa: E402

SOURCE = "nucleus"
CLASS_NAMES: tuple[str, ...] = ("BG", "nucleus")
VAL_FRACTION = 0.1
SUBSETS = ("train", "val", "all")
STAGE_DIR = "stage1_train"


# ----- configuration -----------------------------------------------------------------------
class NucleusConfig(Config):
    """Settings for nuclei: one class, small and many objects, CPU-sized network.

    * Anchors 8..128 px on P2..P6: nuclei are ~10-60 px at the chosen scale,
      the default 32..512 would leave the smallest without a positive anchor.
    * Up to 400 instances per image (the densest image has 375) for both the
      ground truth and the detections; 1000 proposals after NMS.
    * From scratch: GroupNorm (batch norm statistics of 2 crops are useless),
      ResNet-18 at half width (32..256 channels), 64-channel FPN and mask head,
      256-unit box head: about 10x less compute than ResNet-50-FPN, so a
      2-core CPU trains a few thousand crops in 30 minutes.
    * AdamW at 1e-3 for the batch of 2 (LEARNING_RATE is per 16 images, so
      8e-3), 100 warm-up steps, gradient clipping at norm 5: from scratch it
      reaches a usable detector in far fewer steps than SGD. The library
      default (torch-semantics SGD) is ``--set OPTIMIZER='sgd'``.
    """

    NAME = "nucleus"
    NUM_CLASSES = 1 + 1
    CLASS_NAMES = CLASS_NAMES
    IMAGES_PER_GPU = 2

    BACKBONE = "resnet18"
    BACKBONE_NORM = "gn"
    GROUP_NORM_GROUPS = 8
    BACKBONE_BASE_WIDTH = 32
    FPN_CHANNELS = 64

    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    PRE_NMS_LIMIT_TRAINING = 1000
    POST_NMS_ROIS_TRAINING = 1000
    PRE_NMS_LIMIT_INFERENCE = 1000
    POST_NMS_ROIS_INFERENCE = 1000

    TRAIN_ROIS_PER_IMAGE = 256
    ROI_POSITIVE_RATIO = 0.33
    FPN_FC_LAYERS_SIZE = 256
    MASK_HEAD_CONV_CHANNELS = 64
    MASK_HEAD_NUM_CONVS = 2

    MAX_GT_INSTANCES = 400
    MINI_MASK_SHAPE = (28, 28)
    DETECTION_MAX_INSTANCES = 400
    DETECTION_MIN_CONFIDENCE = 0.05

    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    IMAGE_RESIZE_MODE = "pad32"
    TRAIN_CROP_SIZE = 256
    TRAIN_SCALE_JITTER = (0.8, 1.25)

    OPTIMIZER = "adamw"
    LEARNING_RATE = 8e-3  # per 16 images: 1e-3 at IMAGES_PER_GPU = 2
    WEIGHT_DECAY = 1e-4
    WARMUP_STEPS = 100
    WARMUP_FACTOR = 0.01
    GRADIENT_CLIP_NORM = 5.0
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 10


# ----- files and split -----------------------------------------------------------------------
def _has_layout(folder: Path) -> bool:
    try:
        children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return False
    return any((c / "images" / f"{c.name}.png").is_file() for c in children)


def find_stage_dir(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``<id>/images/<id>.png``: ``dataset_dir`` or its ``stage1_train``.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it exists but has neither layout.
    """
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"dataset path {str(root)!r} is not a folder")
    if _has_layout(root / STAGE_DIR):
        return root / STAGE_DIR
    if _has_layout(root):
        return root
    raise ValueError(
        f"dataset folder {str(root)!r} is not in the 2018 Data Science Bowl layout: expected "
        f"<dir>/<id>/images/<id>.png with instance masks in <dir>/<id>/masks/*.png, where <dir> "
        f"is the folder given or its {STAGE_DIR!r} subfolder"
    )


def list_image_ids(stage_dir: str | os.PathLike) -> list[str]:
    """Sorted ids ``<id>`` of the folders that have ``images/<id>.png``."""
    stage_dir = Path(stage_dir)
    return sorted(
        c.name for c in stage_dir.iterdir()
        if c.is_dir() and not c.name.startswith(".") and (c / "images" / f"{c.name}.png").is_file()
    )


def split_of(image_id: str, val_fraction: float = VAL_FRACTION) -> str:
    """'val' or 'train' from a hash of the id alone (deterministic, order-independent)."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if fraction < val_fraction else "train"


# ----- dataset -------------------------------------------------------------------------------
class NucleusDataset(Dataset):
    """The DSB 2018 layout as a :class:`~mrcnn.data.dataset.Dataset` (class 1 = nucleus).

    ``load_mask`` decodes each instance PNG once and keeps it in memory, cut to
    its bounding box (the whole training set is a few tens of MB that way), so
    repeated epochs do not re-read ~25,000 PNG files.
    """

    def __init__(self) -> None:
        super().__init__()
        self._instances: dict[int, tuple[tuple[int, int], list[tuple[int, int, np.ndarray]]]] = {}

    def load_nucleus(
        self,
        dataset_dir: str | os.PathLike,
        subset: str = "all",
        val_fraction: float = VAL_FRACTION,
        limit: int | None = None,
    ) -> NucleusDataset:
        """Register the images of ``subset`` ("train", "val" or "all"; the split rule is in the
        module docstring) of ``dataset_dir`` (``stage1_train`` or its parent), at most ``limit``
        (sorted ids), and prepare(); returns self."""
        if subset not in SUBSETS:
            raise ValueError(f"subset {subset!r}: choose one of {SUBSETS}")
        stage_dir = find_stage_dir(dataset_dir)
        ids = [i for i in list_image_ids(stage_dir)
               if subset == "all" or split_of(i, val_fraction) == subset]
        if limit is not None:
            ids = ids[: max(int(limit), 0)]
        self.add_class(SOURCE, 1, "nucleus")
        for image_id in ids:
            folder = stage_dir / image_id
            self.add_image(
                SOURCE, image_id=image_id, path=str(folder / "images" / f"{image_id}.png"),
                mask_dir=str(folder / "masks"),
            )
        self.prepare()
        return self

    # ----- loaders --------------------------------------------------------------------
    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB, alpha dropped."""
        info = self.image_info[image_id]
        return read_rgb_file(info["path"], f"image {image_id} ({info['id']})")

    def _load_instances(self, image_id: int) -> tuple[tuple[int, int], list[tuple[int, int, np.ndarray]]]:
        cached = self._instances.get(image_id)
        if cached is not None:
            return cached
        info = self.image_info[image_id]
        with Image.open(info["path"]) as im:
            width, height = im.size
        mask_dir = Path(info["mask_dir"])
        files = sorted(p for p in mask_dir.glob("*.png")) if mask_dir.is_dir() else []
        instances = []
        for path in files:
            try:
                with Image.open(path) as im:
                    array = np.asarray(im)
            except (OSError, SyntaxError) as exc:
                raise OSError(f"mask {str(path)!r} of image {info['id']!r}: cannot read: {exc}") from exc
            if array.shape[:2] != (height, width):
                raise ValueError(
                    f"mask {str(path)!r} is {array.shape[1]}x{array.shape[0]} (WxH) but its image "
                    f"{str(info['path'])!r} is {width}x{height}"
                )
            if array.ndim == 3:
                array = array[:, :, 0] if array.shape[2] in (1, 2) else array[:, :, :3].max(axis=2)
            mask = array > 0
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                instances.append((0, 0, np.zeros((0, 0), bool)))
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            instances.append((int(y0), int(x0), np.ascontiguousarray(mask[y0:y1, x0:x1])))
        result = ((height, width), instances)
        self._instances[image_id] = result
        return result

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(bool [H, W, N], int32 [N] of ones): one instance per PNG in ``masks/``, sorted by name.

        Raises ValueError naming the file when a mask PNG's size differs from the image's.
        """
        (height, width), instances = self._load_instances(int(image_id))
        masks = np.zeros((height, width, len(instances)), bool)
        for k, (y0, x0, sub) in enumerate(instances):
            masks[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1], k] = sub
        return masks, np.ones((len(instances),), np.int32)


# ----- commands ------------------------------------------------------------------------------
def config_for_weights(args: argparse.Namespace) -> NucleusConfig:
    """NucleusConfig from --config, else the run's config.json beside --weights, plus --set."""
    config_file = args.config or find_run_config(args.weights)
    if args.config is None and config_file is not None:
        print(f"Using the run's configuration {config_file}")
    return make_config(NucleusConfig, args.set, config_file)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from mrcnn.checkpoint.backups import save_weights_file
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.engine import default_callbacks, make_optimizer
    from mrcnn.engine.callbacks import TimeBudget
    from mrcnn.engine.runs import MetricCurve
    from mrcnn.fileio import write_text

    config = make_config(NucleusConfig, args.set, args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.json", config.to_json())
    train_ds = NucleusDataset().load_nucleus(args.dataset, "train")
    val_ds = NucleusDataset().load_nucleus(args.dataset, "val")
    if len(train_ds) == 0:
        raise ValueError(f"no training images in {args.dataset!r}")
    print(f"{len(train_ds)} training images, {len(val_ds)} validation images "
          f"(split: SHA-256 of the id, {VAL_FRACTION:.0%} val)")

    keras.utils.set_random_seed(args.seed)
    model = build_model(config, args.weights)
    # With a time budget the run's length in steps is unknown: no automatic decay steps.
    model.compile(optimizer=make_optimizer(config, epochs=args.epochs))
    budget = TimeBudget(args.max_minutes if args.max_minutes is not None else float("inf"))
    callbacks = [budget]  # after default_callbacks' own (see mrcnn.engine.hooks)
    n_val = min(args.val_images, len(val_ds))
    curve = None
    if n_val > 0:
        # A fixed, spread-out subset of the val split keeps the periodic evaluation cheap.
        ids = sorted(set(np.linspace(0, len(val_ds) - 1, n_val).round().astype(int).tolist()))
        curve = MetricCurve(val_ds, out / "ap_curve.json", budget, image_ids=ids, batch_size=1,
                            every_n_epochs=args.eval_every_epochs,
                            max_detections=config.DETECTION_MAX_INSTANCES)
        callbacks.append(curve)
    epochs = args.epochs if args.epochs is not None else (10**6 if args.max_minutes else 20)
    # The run folder hands the resume position to the input: the same command resumes at the step.
    model.fit(build_dataset(train_ds, config, training=True, seed=args.seed, run_dir=out), epochs=epochs,
              steps_per_epoch=config.STEPS_PER_EPOCH, verbose=2,
              callbacks=default_callbacks(out, config=config, epochs=epochs, callbacks=callbacks))
    save_weights_file(model, out / "final.weights.h5")  # atomic; model variables only
    print(f"Saved {out / 'final.weights.h5'} after {budget.elapsed_minutes():.2f} training minutes")
    return {"final_weights": str(out / "final.weights.h5"), "curve": curve.points if curve else []}


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mrcnn.evaluate import evaluate_dataset, format_metrics

    config = config_for_weights(args)
    dataset = NucleusDataset().load_nucleus(args.dataset, args.subset, limit=args.limit)
    if len(dataset) == 0:
        raise ValueError(f"no images in subset {args.subset!r} of {args.dataset!r}")
    model = build_model(config, args.weights)
    metrics = evaluate_dataset(model.detect, dataset, batch_size=1, progress=not args.quiet,
                               json_out=args.results_out, max_detections=config.DETECTION_MAX_INSTANCES)
    print(f"{len(dataset)} images ({args.subset}) of {args.dataset}")
    print(format_metrics(metrics, per_class=False))
    result = json_ready({"bbox": metrics["bbox"], "segm": metrics["segm"]})
    if args.json_out:
        write_json(args.json_out, json_ready(result))
        print(f"Wrote {args.json_out}")
    return result


# ----- command line --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nucleus.py", description="Mask R-CNN on nuclei (2018 Data Science Bowl layout)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, weights_required: bool) -> None:
        p.add_argument("--dataset", required=True,
                       help="the stage1_train folder (<id>/images/<id>.png, <id>/masks/*.png) or its parent")
        p.add_argument("--weights", required=weights_required,
                       help="a .weights.h5 file of this network (e.g. OUT/final.weights.h5)")
        p.add_argument("--config", default=None,
                       help="a config.json written by train (default: the one beside --weights)")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a NucleusConfig field (Python literal), repeatable")

    t = sub.add_parser("train", help="train on the train split, checkpoints and logs under --out")
    common(t, weights_required=False)
    t.add_argument("--out", required=True, help="output folder (checkpoints, logs, final.weights.h5)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly after this much training time (evaluation excluded)")
    t.add_argument("--epochs", type=int, default=None,
                   help="epochs of STEPS_PER_EPOCH steps (default: unlimited with --max-minutes, else 20)")
    t.add_argument("--eval-every-epochs", type=int, default=1,
                   help="validation AP every this many epochs (and at a budget stop)")
    t.add_argument("--val-images", type=int, default=16,
                   help="validation images used for the AP curve (0 = no curve)")
    t.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="COCO bbox/segm metrics on every image of --dataset")
    common(e, weights_required=True)
    e.add_argument("--subset", choices=SUBSETS, default="all",
                   help="which images of --dataset: all (default), or the train / val split")
    e.add_argument("--limit", type=int, default=None, help="only the first N images (sorted ids)")
    e.add_argument("--json-out", default=None, help="write {'bbox': {...}, 'segm': {...}} here")
    e.add_argument("--results-out", default=None, help="write the detections as COCO results JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.set = parse_set(args.set)
        find_stage_dir(args.dataset)
        for flag in ("config", "weights"):
            value = getattr(args, flag)
            if value is not None and not Path(value).is_file():
                raise FileNotFoundError(f"--{flag} {value!r} does not exist")
        make_config(NucleusConfig, args.set, args.config)  # invalid overrides fail here, before any work
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    commands = {"train": cmd_train, "evaluate": cmd_evaluate}
    return commands[args.command](args)


if __name__ == "__main__":
    main()
