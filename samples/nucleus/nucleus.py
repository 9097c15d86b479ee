"""Nucleus instance segmentation on the 2018 Data Science Bowl layout.

The model user's path: subclass :class:`~mrcnn.config.Config` and
:class:`~mrcnn.data.dataset.Dataset` for a dataset in its own format, then train,
evaluate and draw detections from the command line::

    python samples/nucleus/nucleus.py train --dataset ../shared/datasets/nuclei --out runs/nucleus \
        --max-minutes 30
    python samples/nucleus/nucleus.py evaluate --dataset ../shared/datasets/nuclei --subset val \
        --weights runs/nucleus/final.weights.h5 --json-out runs/nucleus/val_metrics.json
    python samples/nucleus/nucleus.py detect --dataset some/folder --weights runs/nucleus/final.weights.h5 \
        --out runs/nucleus/overlays

Layout (as the original release)::

    DIR/stage1_train/<id>/images/<id>.png     RGBA (alpha dropped)
    DIR/stage1_train/<id>/masks/<m>.png       one binary PNG (0/255) per instance

``--dataset`` may name the ``stage1_train`` folder itself or its parent.

Split: an image is in "val" when the first 8 bytes of SHA-256(image id), read as
a fraction of 2**64, fall below ``VAL_FRACTION`` (10%); otherwise in "train".
The split depends on nothing but the id, so it is stable across machines, file
orders and dataset versions (adding images never moves an old one).

Scale and crops (see :class:`NucleusConfig`): at inference every image is resized
so that its long side is 512 (``IMAGE_MIN_DIM = IMAGE_MAX_DIM = 512``,
"pad32"): the 256x256 images, which hold most of the data and the smallest
nuclei, are enlarged x2, the 1000+ px ones shrunk, so nuclei land at roughly
10-60 px. Training sees the same scale (times a small jitter) but only a random
256x256 window of it: :meth:`NucleusDataset.enable_random_crops` makes
``load_image`` return an original-resolution crop of side ``256 / scale``, which
the standard pipeline (square 256 inputs) then resizes by exactly ``scale``. A
256 crop costs a quarter of a 512 image, so the CPU sees four times as many
training steps for the same nuclei size.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make `mrcnn` / `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mrcnn.config import Config  # noqa: E402
from mrcnn.data.dataset import Dataset  # noqa: E402

SOURCE = "nucleus"
CLASS_NAMES: tuple[str, ...] = ("BG", "nucleus")
VAL_FRACTION = 0.1
SUBSETS = ("train", "val", "all")
STAGE_DIR = "stage1_train"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Where the shared copy of the data lives, relative to the repository root.
DEFAULT_DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "nuclei"


# ----- configuration -----------------------------------------------------------------------
class NucleusConfig(Config):
    """Settings for nuclei: one class, small and many objects, CPU-sized network.

    This is the inference / evaluation configuration; :meth:`training_config`
    derives the training one (256x256 random crops at the same object scale).
    Both build the same network, so weights move freely between them.

    Choices (see the module docstring for the scale):

    * Anchors 8..128 px on P2..P6: nuclei are ~10-60 px at the chosen scale,
      the default 32..512 would leave the smallest without a positive anchor.
    * Up to 400 instances per image (the densest image has 375) for both the
      ground truth and the detections; 1000 proposals after NMS.
    * From scratch: GroupNorm (batch norm statistics of 2 crops are useless),
      ResNet-18 at half width (32..256 channels), 64-channel FPN and mask head,
      256-unit box head: about 10x less compute than ResNet-50-FPN, so a
      2-core CPU trains a few thousand crops in 30 minutes.
    * AdamW (lr 1e-3, 100 warm-up steps, gradient clipping at norm 5): reaches a
      usable detector in far fewer steps than SGD from scratch.
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

    LEARNING_RATE = 1e-3
    WEIGHT_DECAY = 1e-4
    WARMUP_STEPS = 100
    WARMUP_FACTOR = 0.01
    LR_STEPS = ()
    GRADIENT_CLIP_NORM = 5.0
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 10

    # ----- nucleus-specific fields ----------------------------------------------------
    # Side of the square random training crops, in network-input pixels.
    TRAIN_CROP_SIZE: int = 256
    # Training scale = inference scale x a log-uniform factor from this range.
    TRAIN_SCALE_JITTER: tuple[float, float] = (0.8, 1.25)
    # "adamw" or "sgd" (mrcnn.training.make_optimizer).
    OPTIMIZER: str = "adamw"

    def validate(self) -> None:
        super().validate()
        if isinstance(self.TRAIN_CROP_SIZE, bool) or not isinstance(self.TRAIN_CROP_SIZE, int) \
                or self.TRAIN_CROP_SIZE < 32:
            raise ValueError(f"Config.TRAIN_CROP_SIZE={self.TRAIN_CROP_SIZE!r}: must be an integer >= 32")
        jitter = tuple(self.TRAIN_SCALE_JITTER)
        if len(jitter) != 2 or not 0 < jitter[0] <= jitter[1]:
            raise ValueError(
                f"Config.TRAIN_SCALE_JITTER={self.TRAIN_SCALE_JITTER!r}: need (low, high) with 0 < low <= high"
            )
        if self.OPTIMIZER not in ("adamw", "sgd"):
            raise ValueError(f"Config.OPTIMIZER={self.OPTIMIZER!r}: choose 'adamw' or 'sgd'")

    def training_config(self) -> NucleusConfig:
        """The same network with square ``TRAIN_CROP_SIZE`` inputs (for the crops)."""
        values = self.to_dict()
        values.update(
            IMAGE_MIN_DIM=self.TRAIN_CROP_SIZE,
            IMAGE_MAX_DIM=self.TRAIN_CROP_SIZE,
            IMAGE_RESIZE_MODE="square",
        )
        return type(self).from_dict(values)


def make_config(
    overrides: dict[str, Any] | None = None, config_file: str | os.PathLike | None = None
) -> NucleusConfig:
    """NucleusConfig from an optional saved ``config.json`` plus field overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, encoding="utf-8") as f:
            values = json.load(f)
    values.update(overrides or {})
    return NucleusConfig.from_dict(values) if values else NucleusConfig()


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


def read_rgb(path: str | os.PathLike, ref: str | None = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB from an image file (alpha dropped, gray replicated)."""
    from mrcnn.data.loader import sanitize_image

    ref = ref or f"image {str(path)!r}"
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            array = np.asarray(im)
    except (OSError, SyntaxError) as exc:
        raise OSError(f"{ref}: cannot read {str(path)!r}: {exc}") from exc
    if array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = array[:, :, 0]
    return sanitize_image(array, ref)


# ----- dataset -------------------------------------------------------------------------------
class NucleusDataset(Dataset):
    """The DSB 2018 layout as a :class:`~mrcnn.data.dataset.Dataset` (class 1 = nucleus).

    ``load_mask`` decodes each instance PNG once and keeps it in memory, cut to
    its bounding box (the whole training set is a few tens of MB that way), so
    repeated epochs do not re-read ~25,000 PNG files.

    With :meth:`enable_random_crops` the dataset serves random windows for
    training: each ``load_image(i)`` draws a new window and ``load_mask(i)``
    returns the masks of the window last drawn for image ``i`` *by the same
    thread* (the order in which :func:`mrcnn.data.loader.load_instance` calls
    them, in whatever thread tf.data runs it). Without crops both return the
    full image.
    """

    def __init__(self) -> None:
        super().__init__()
        self._instances: dict[int, tuple[tuple[int, int], list[tuple[int, int, np.ndarray]]]] = {}
        self._crop: tuple[int, int, tuple[float, float]] | None = None
        self._rng = np.random.default_rng(0)
        self._rng_lock = threading.Lock()
        self._local = threading.local()

    def load_nucleus(
        self,
        dataset_dir: str | os.PathLike,
        subset: str = "all",
        val_fraction: float = VAL_FRACTION,
        limit: int | None = None,
    ) -> NucleusDataset:
        """Register the images of ``subset`` ("train", "val" or "all") and prepare().

        Args:
            dataset_dir: the ``stage1_train`` folder or its parent.
            subset: see the module docstring for the split rule.
            val_fraction: share of ids that go to "val".
            limit: keep only the first ``limit`` ids (sorted) of the subset.
        Returns:
            self (prepared).
        """
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

    # ----- random crops ---------------------------------------------------------------
    def enable_random_crops(
        self,
        crop_size: int,
        long_side: int,
        scale_jitter: Sequence[float] = (1.0, 1.0),
        seed: int | None = None,
    ) -> None:
        """Serve random windows that become ``crop_size`` squares at scale ``long_side / max(H, W)``.

        The window is ``round(crop_size / scale)`` original pixels square (cut to
        the image), so a pipeline with square ``crop_size`` inputs resizes it by
        ``scale`` (times the jitter, log-uniform in ``scale_jitter``): the
        nuclei have the size they have at inference with ``long_side`` inputs.
        """
        low, high = float(scale_jitter[0]), float(scale_jitter[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_jitter {scale_jitter!r}: need 0 < low <= high")
        self._crop = (int(crop_size), int(long_side), (low, high))
        self._rng = np.random.default_rng(seed)

    def disable_random_crops(self) -> None:
        self._crop = None

    def _draw_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        assert self._crop is not None
        crop_size, long_side, (low, high) = self._crop
        with self._rng_lock:
            u = self._rng.random(3)
        jitter = math.exp(math.log(low) + u[0] * (math.log(high) - math.log(low)))
        scale = long_side / max(height, width) * jitter
        side = max(1, int(round(crop_size / scale)))
        ch, cw = min(side, height), min(side, width)
        y0 = min(int(u[1] * (height - ch + 1)), height - ch)
        x0 = min(int(u[2] * (width - cw + 1)), width - cw)
        return y0, x0, ch, cw

    def _windows(self) -> dict[int, tuple[int, int, int, int]]:
        windows = getattr(self._local, "windows", None)
        if windows is None:
            windows = self._local.windows = {}
        return windows

    # ----- loaders --------------------------------------------------------------------
    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB, alpha dropped (a random window when crops are on)."""
        info = self.image_info[image_id]
        image = read_rgb(info["path"], f"image {image_id} ({info['id']})")
        if self._crop is not None:
            y0, x0, ch, cw = window = self._draw_window(*image.shape[:2])
            self._windows()[int(image_id)] = window
            image = np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw])
        return image

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
        window = self._windows().get(int(image_id)) if self._crop is not None else None
        y0, x0, ch, cw = window if window is not None else (0, 0, height, width)
        out: list[np.ndarray] = []
        for iy, ix, sub in instances:
            if self._crop is not None and window is not None:
                # Keep only instances that touch the window (others would be empty).
                if iy >= y0 + ch or ix >= x0 + cw or iy + sub.shape[0] <= y0 or ix + sub.shape[1] <= x0:
                    continue
            canvas = np.zeros((ch, cw), bool)
            ty0, tx0 = max(iy, y0), max(ix, x0)
            ty1, tx1 = min(iy + sub.shape[0], y0 + ch), min(ix + sub.shape[1], x0 + cw)
            if ty1 > ty0 and tx1 > tx0:
                canvas[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = sub[ty0 - iy : ty1 - iy, tx0 - ix : tx1 - ix]
            if window is not None and not canvas.any():
                continue  # the box touches the window but the mask does not
            out.append(canvas)
        masks = np.stack(out, axis=-1) if out else np.zeros((ch, cw, 0), bool)
        return masks, np.ones((masks.shape[-1],), np.int32)

    def image_reference(self, image_id: int) -> str:
        return str(self.image_info[image_id]["path"])


# ----- model helpers -------------------------------------------------------------------------
def make_optimizer(config: NucleusConfig):
    """AdamW (or the project's SGD) with the Config's warm-up/step schedule and clipping."""
    import keras

    from mrcnn.training import WarmupStepDecay
    from mrcnn.training import make_optimizer as make_sgd

    if config.OPTIMIZER == "sgd":
        return make_sgd(config)
    schedule = WarmupStepDecay(
        config.LEARNING_RATE, config.WARMUP_STEPS, config.WARMUP_FACTOR, config.LR_STEPS
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=config.WEIGHT_DECAY or None,
        global_clipnorm=config.GRADIENT_CLIP_NORM,
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return optimizer


def build_model(config: Config, weights: str | os.PathLike | None = None):
    from mrcnn.model import MaskRCNN

    model = MaskRCNN(config)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        try:
            model.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"cannot load {str(path)!r} into this network ({exc}). Was it trained with another "
                "configuration? Pass the run's config.json with --config (it is found automatically "
                "next to the weights or one folder up)."
            ) from exc
    return model


class TrainClock:
    """Training wall time in minutes, not counting the periods spent in ``paused()``."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._paused = 0.0

    def start(self) -> None:
        if self._start is None:
            self._start = time.monotonic()

    def minutes(self) -> float:
        if self._start is None:
            return 0.0
        return (time.monotonic() - self._start - self._paused) / 60.0

    class _Pause:
        def __init__(self, clock: TrainClock) -> None:
            self.clock = clock

        def __enter__(self) -> None:
            self.t0 = time.monotonic()

        def __exit__(self, *exc: Any) -> None:
            self.clock._paused += time.monotonic() - self.t0

    def paused(self) -> TrainClock._Pause:
        return TrainClock._Pause(self)


def _callback_base():
    import keras

    return keras.callbacks.Callback


class TimeBudget(_callback_base()):
    """Stop ``fit`` at the end of the first batch after ``max_minutes`` of training
    time, and save the weights to ``final_path`` when training ends (for any reason).
    Also prints a progress line every ``log_every`` steps."""

    def __init__(self, clock: TrainClock, max_minutes: float | None, final_path: str,
                 log_every: int = 20) -> None:
        super().__init__()
        self.clock = clock
        self.max_minutes = max_minutes
        self.final_path = final_path
        self.log_every = log_every
        self.step = 0
        self.stopped_by_budget = False

    def on_train_begin(self, logs=None):
        self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        minutes = self.clock.minutes()
        if self.log_every and self.step % self.log_every == 0:
            parts = " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())
            print(f"[step {self.step} | {minutes:.2f} min] {parts}", flush=True)
        if self.max_minutes is not None and minutes >= self.max_minutes:
            if not self.stopped_by_budget:
                print(f"Time budget of {self.max_minutes} min reached after {self.step} steps: stopping.",
                      flush=True)
            self.stopped_by_budget = True
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        os.makedirs(os.path.dirname(self.final_path) or ".", exist_ok=True)
        self.model.save_weights(self.final_path)
        print(f"Saved final weights ({self.step} steps, {self.clock.minutes():.2f} min) to "
              f"{self.final_path}", flush=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class APCurve(_callback_base()):
    """Validation AP50 against training minutes, written to ``path`` as JSON.

    Evaluates every ``every_minutes`` of training time (checked at batch ends)
    and once more when training ends, on ``image_ids`` of ``dataset`` with an
    inference-configured copy of the model. The time spent evaluating is paused
    on ``clock``, so it counts neither in the curve nor against the budget.
    """

    def __init__(self, clock: TrainClock, dataset: Dataset, image_ids: Sequence[int],
                 infer_config: Config, path: str, every_minutes: float | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.dataset = dataset
        self.image_ids = [int(i) for i in image_ids]
        self.infer_config = infer_config
        self.path = path
        self.every_minutes = every_minutes
        self.points: list[dict[str, Any]] = []
        self._last_eval = 0.0
        self._step = 0
        self._last_step_evaluated = -1
        self._infer_model = None

    def on_train_begin(self, logs=None):
        self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_minutes and self.clock.minutes() - self._last_eval >= self.every_minutes:
            self.evaluate()

    def on_train_end(self, logs=None):
        if self._last_step_evaluated != self._step:
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        from mrcnn.evaluate import evaluate_dataset

        minutes = self.clock.minutes()
        with self.clock.paused():
            t0 = time.monotonic()
            if self._infer_model is None:
                self._infer_model = build_model(self.infer_config)
            self._infer_model.set_weights(self.model.get_weights())
            metrics = evaluate_dataset(
                self._infer_model.detect, self.dataset, image_ids=self.image_ids, batch_size=1,
                progress=False, max_detections=self.infer_config.DETECTION_MAX_INSTANCES,
            )
            point = {
                "minutes": round(minutes, 3),
                "step": self._step,
                "AP50": metrics["segm"]["AP50"],
                "segm_AP": metrics["segm"]["AP"],
                "bbox_AP50": metrics["bbox"]["AP50"],
                "eval_seconds": round(time.monotonic() - t0, 1),
            }
            self.points.append(_finite(point))
            self._write()
        self._last_eval = minutes
        self._last_step_evaluated = self._step
        print(f"[val AP curve] {minutes:.2f} min, step {self._step}: segm AP50={point['AP50']:.4f} "
              f"bbox AP50={point['bbox_AP50']:.4f} ({point['eval_seconds']} s on "
              f"{len(self.image_ids)} images)", flush=True)
        return point

    def _write(self) -> None:
        payload = {
            "metric": "segm AP50 on the validation images listed, against training minutes",
            "val_images": [self.dataset.image_info[i]["id"] for i in self.image_ids],
            "points": self.points,
        }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, self.path)


# ----- commands ------------------------------------------------------------------------------
def _config_for_weights(args: argparse.Namespace) -> NucleusConfig:
    """Config from --config, else a config.json beside the weights (or one folder up)."""
    config_file = getattr(args, "config", None)
    weights = getattr(args, "weights", None)
    if config_file is None and weights:
        here = Path(weights).resolve().parent
        for candidate in (here / "config.json", here.parent / "config.json"):
            if candidate.is_file():
                config_file = candidate
                print(f"Using the run's configuration {candidate}")
                break
    return make_config(args.set, config_file)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from mrcnn.data.pipeline import build_dataset
    from mrcnn.training import default_callbacks

    config = make_config(args.set, args.config)
    train_config = config.training_config()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json(), encoding="utf-8")

    train_ds = NucleusDataset().load_nucleus(args.dataset, "train")
    val_ds = NucleusDataset().load_nucleus(args.dataset, "val")
    if len(train_ds) == 0:
        raise ValueError(f"no training images in {args.dataset!r}")
    train_ds.enable_random_crops(
        config.TRAIN_CROP_SIZE, config.IMAGE_MAX_DIM, config.TRAIN_SCALE_JITTER, seed=args.seed
    )
    print(f"{len(train_ds)} training images, {len(val_ds)} validation images "
          f"(split: SHA-256 of the id, {VAL_FRACTION:.0%} val)")

    keras.utils.set_random_seed(args.seed)
    model = build_model(train_config, args.weights)
    model.compile(optimizer=make_optimizer(train_config))
    data = build_dataset(train_ds, train_config, training=True, seed=args.seed)

    clock = TrainClock()
    callbacks = default_callbacks(str(out))
    callbacks.append(TimeBudget(clock, args.max_minutes, str(out / "final.weights.h5"),
                                log_every=args.log_every))
    curve = None
    n_val = min(args.val_images, len(val_ds))
    if n_val > 0:
        # A fixed, spread-out subset of the val split keeps the periodic evaluation cheap.
        ids = np.linspace(0, len(val_ds) - 1, n_val).round().astype(int)
        curve = APCurve(clock, val_ds, sorted(set(ids.tolist())), config, str(out / "ap_curve.json"),
                        every_minutes=args.eval_every_minutes)
        callbacks.append(curve)

    epochs = args.epochs if args.epochs is not None else (10**6 if args.max_minutes else 20)
    model.fit(data, epochs=epochs, steps_per_epoch=train_config.STEPS_PER_EPOCH,
              callbacks=callbacks, verbose=2)
    return {"final_weights": str(out / "final.weights.h5"),
            "curve": curve.points if curve is not None else []}


def _write_json(path: str | os.PathLike, payload: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from mrcnn.evaluate import evaluate_dataset, format_metrics

    config = _config_for_weights(args)
    dataset = NucleusDataset().load_nucleus(args.dataset, args.subset, limit=args.limit)
    if len(dataset) == 0:
        raise ValueError(f"no images in subset {args.subset!r} of {args.dataset!r}")
    model = build_model(config, args.weights)
    metrics = evaluate_dataset(model.detect, dataset, batch_size=1, progress=not args.quiet,
                               json_out=args.results_out, max_detections=config.DETECTION_MAX_INSTANCES)
    print(f"{len(dataset)} images ({args.subset}) of {args.dataset}")
    print(format_metrics(metrics, per_class=False))
    result = _finite({"bbox": metrics["bbox"], "segm": metrics["segm"]})
    if args.json_out:
        _write_json(args.json_out, result)
        print(f"Wrote {args.json_out}")
    return result


def list_images(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(name, path) of the images to run on: the DSB layout, or any folder of image files."""
    try:
        stage_dir = find_stage_dir(folder)
    except ValueError:
        root = Path(folder)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(
                f"{str(root)!r} has neither the DSB layout nor image files ({', '.join(IMAGE_SUFFIXES)})"
            ) from None
        return [(p.stem, p) for p in files]
    return [(i, stage_dir / i / "images" / f"{i}.png") for i in list_image_ids(stage_dir)]


def cmd_detect(args: argparse.Namespace) -> list[str]:
    from mrcnn.visualize import draw_instances, save_image

    config = _config_for_weights(args)
    images = list_images(args.dataset)
    if args.limit is not None:
        images = images[: args.limit]
    model = build_model(config, args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, path in images:
        image = read_rgb(path)
        r = model.detect([image], batch_size=1)[0]
        keep = r["scores"] >= args.min_score
        overlay = draw_instances(
            image, r["rois"][keep] if args.boxes else None, r["masks"][:, :, keep],
            r["class_ids"][keep], CLASS_NAMES, r["scores"][keep] if args.boxes else None,
        )
        target = out / f"{name}.png"
        save_image(target, overlay)
        written.append(str(target))
        print(f"{name}: {int(keep.sum())} nuclei (score >= {args.min_score}) -> {target}", flush=True)
    return written


# ----- command line --------------------------------------------------------------------------
def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set BACKBONE=resnet34")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        values[key.strip()] = value
    return values


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
    t.add_argument("--eval-every-minutes", type=float, default=3.0,
                   help="validation AP50 every this many training minutes (and at the end)")
    t.add_argument("--val-images", type=int, default=16,
                   help="validation images used for the AP curve (0 = no curve)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=20, help="print losses every N steps (0 = never)")

    e = sub.add_parser("evaluate", help="COCO bbox/segm metrics on every image of --dataset")
    common(e, weights_required=True)
    e.add_argument("--subset", choices=SUBSETS, default="all",
                   help="which images of --dataset: all (default), or the train / val split")
    e.add_argument("--limit", type=int, default=None, help="only the first N images (sorted ids)")
    e.add_argument("--json-out", default=None, help="write {'bbox': {...}, 'segm': {...}} here")
    e.add_argument("--results-out", default=None, help="write the detections as COCO results JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("detect", help="PNG overlays of the detections")
    common(d, weights_required=True)
    d.add_argument("--out", required=True, help="folder for <name>.png overlays")
    d.add_argument("--limit", type=int, default=None, help="only the first N images")
    d.add_argument("--min-score", type=float, default=0.5, help="draw detections scoring at least this")
    d.add_argument("--boxes", action="store_true", help="also draw boxes and score labels")
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.set = _parse_set(args.set)
        if args.command in ("train", "evaluate"):
            find_stage_dir(args.dataset)
        elif not Path(args.dataset).is_dir():
            raise FileNotFoundError(f"dataset folder {args.dataset!r} does not exist")
        if args.config is not None and not Path(args.config).is_file():
            raise FileNotFoundError(f"--config {args.config!r} does not exist")
        if args.weights is not None and not Path(args.weights).is_file():
            raise FileNotFoundError(f"--weights {args.weights!r} does not exist")
        make_config(args.set, args.config)  # invalid overrides fail here, before any work
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "detect": cmd_detect}
    return commands[args.command](args)


if __name__ == "__main__":
    main()
