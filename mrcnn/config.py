"""Configuration: one class of upper-case fields, validated in one place.

Users subclass :class:`Config` and override fields as class attributes::

    class ShapesConfig(Config):
        NAME = "shapes"
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128

Defaults follow the Mask R-CNN paper and torchvision's ``maskrcnn_resnet50_fpn``
(see ``docs/design.md`` for where and why the project departs from them).
Coordinates everywhere are (y1, x1, y2, x2) in pixels of the network input unless
a docstring says otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d")
NORMS = ("frozen_bn", "bn", "gn")
RESIZE_MODES = ("square", "pad32")
ROI_ALIGN_IMPLEMENTATIONS = ("auto", "portable", "custom")


def flip_map_from_names(names) -> tuple[tuple[int, int], ...]:
    """Left/right pairs of keypoint names: "left_x" <-> "right_x" (also "l_"/"r_" and
    suffixes "_left"/"_right", "_l"/"_r"), as 0-based index pairs."""
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    swaps = (("left_", "right_"), ("l_", "r_"))
    suffixes = (("_left", "_right"), ("_l", "_r"))
    pairs = []
    for i, n in enumerate(names):
        for a, b in swaps:
            if n.startswith(a) and b + n[len(a):] in index:
                pairs.append((i, index[b + n[len(a):]]))
        for a, b in suffixes:
            if n.endswith(a) and n[: -len(a)] + b in index:
                pairs.append((i, index[n[: -len(a)] + b]))
    return tuple(dict.fromkeys(pairs))


class Config:
    """Every setting of the model, the data pipeline and training.

    Class attributes are the defaults; a subclass overrides them, and keyword
    arguments to the constructor override both (handy in tests and notebooks).
    ``validate()`` runs at construction and raises ``ValueError`` naming the field.
    """

    # ----- identity ---------------------------------------------------------------
    NAME: str = "mrcnn"
    # Number of classes including the background (class 0).
    NUM_CLASSES: int = 1 + 80
    # Optional class names, index 0 = "BG"; used for display and export.
    CLASS_NAMES: tuple[str, ...] | None = None

    # ----- batching ---------------------------------------------------------------
    # Images per replica (GPU/CPU device); the global batch is this x replicas.
    IMAGES_PER_GPU: int = 2
    GPU_COUNT: int = 1

    # ----- backbone ---------------------------------------------------------------
    BACKBONE: str = "resnet50"
    # "frozen_bn": affine constants (for pretrained weights); "bn": trainable batch
    # norm; "gn": GroupNorm (training from scratch).
    BACKBONE_NORM: str = "frozen_bn"
    GROUP_NORM_GROUPS: int = 32
    # Where the stride-2 sits in a bottleneck: False = on the 3x3 conv (torchvision
    # "v1.5"), True = on the first 1x1 conv (MSRA/Caffe, keras.applications).
    STRIDE_IN_1X1: bool = False
    # Stages whose weights are not trained: 0 = none, 1 = the stem, 2 = stem + C2, ...
    # torchvision trains C3-C5 from ImageNet weights (trainable_backbone_layers=3).
    FREEZE_BACKBONE_STAGES: int = 0
    # Width of the stem and of the first stage (ResNet: 64); a smaller value gives
    # a narrow network for CPU experiments.
    BACKBONE_BASE_WIDTH: int = 64

    # ----- FPN / RPN --------------------------------------------------------------
    FPN_CHANNELS: int = 256
    # Strides of P2..P6.
    BACKBONE_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
    # One anchor size per level P2..P6 (pixels of the network input).
    RPN_ANCHOR_SCALES: tuple[int, ...] = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
    # torchvision rounds the base anchors to integers, uses no offset and takes a
    # level's stride as input_size // grid_size; Detectron2 does not round, has an
    # OFFSET setting (default 0.0) and uses the nominal BACKBONE_STRIDES.
    ROUND_ANCHORS: bool = True
    ANCHOR_OFFSET: float = 0.0
    ANCHOR_STRIDE_FROM_GRID: bool = True
    RPN_POSITIVE_IOU: float = 0.7
    RPN_NEGATIVE_IOU: float = 0.3
    RPN_TRAIN_ANCHORS_PER_IMAGE: int = 256
    RPN_POSITIVE_RATIO: float = 0.5
    RPN_NMS_THRESHOLD: float = 0.7
    # Per-level top-k before NMS and total kept after it, in training / inference.
    PRE_NMS_LIMIT_TRAINING: int = 2000
    PRE_NMS_LIMIT_INFERENCE: int = 1000
    POST_NMS_ROIS_TRAINING: int = 2000
    POST_NMS_ROIS_INFERENCE: int = 1000
    RPN_BBOX_STD_DEV: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # weights 1/std
    PROPOSAL_MIN_SIZE: float = 1e-3

    # ----- RoI heads --------------------------------------------------------------
    TRAIN_ROIS_PER_IMAGE: int = 512
    ROI_POSITIVE_RATIO: float = 0.25
    ROI_POSITIVE_IOU: float = 0.5
    # Box coder weights of the box head (torchvision (10, 10, 5, 5)).
    BBOX_REG_WEIGHTS: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    POOL_SIZE: int = 7
    MASK_POOL_SIZE: int = 14
    MASK_SHAPE: tuple[int, int] = (28, 28)
    FPN_FC_LAYERS_SIZE: int = 1024
    MASK_HEAD_CONV_CHANNELS: int = 256
    MASK_HEAD_NUM_CONVS: int = 4
    # FPN level assignment k = floor(k0 + log2(sqrt(wh) / canonical_size)).
    ROI_CANONICAL_LEVEL: int = 4
    ROI_CANONICAL_SIZE: float = 224.0
    ROI_ALIGN_SAMPLING_RATIO: int = 2
    ROI_ALIGN_ALIGNED: bool = True
    # "auto" uses the custom C++/CUDA op when it is built, else stock TF ops.
    ROI_ALIGN_IMPLEMENTATION: str = "auto"
    # Mask target: GT mask RoIAligned into the proposal, thresholded at this value.
    MASK_TARGET_THRESHOLD: float = 0.5
    # False drops the mask head (the paper's "keypoint-only" model); boxes and, when
    # NUM_KEYPOINTS > 0, keypoints are still predicted.
    MASK_HEAD: bool = True

    # ----- keypoints (Keypoint R-CNN, paper section 5; docs/keypoints.md) -----------
    # Number of keypoints per instance; 0 turns the keypoint head off.
    NUM_KEYPOINTS: int = 0
    # Optional names, one per keypoint (COCO: "nose", "left_eye", ...).
    KEYPOINT_NAMES: tuple[str, ...] | None = None
    # Pairs (i, j) of 0-based keypoint indices swapped by a horizontal flip. None
    # derives them from KEYPOINT_NAMES ("left_x" <-> "right_x"); without names no
    # keypoint is swapped (the coordinates are still mirrored).
    KEYPOINT_FLIP_MAP: tuple[tuple[int, int], ...] | None = None
    # Pairs (i, j) of 0-based keypoint indices joined when drawing (display only).
    KEYPOINT_SKELETON: tuple[tuple[int, int], ...] | None = None
    KEYPOINT_POOL_SIZE: int = 14
    # Heatmap side; the head upsamples the pooled grid x4 (transposed conv x2, bilinear x2).
    KEYPOINT_HEATMAP_SIZE: int = 56
    KEYPOINT_HEAD_CONV_CHANNELS: int = 512
    KEYPOINT_HEAD_NUM_CONVS: int = 8

    # ----- ground truth -----------------------------------------------------------
    MAX_GT_INSTANCES: int = 100
    # GT masks travel through the input pipeline resized into their box at this
    # shape (memory: 56x56 instead of the full image per instance); None keeps
    # full-image masks (exact, memory-hungry).
    MINI_MASK_SHAPE: tuple[int, int] | None = (56, 56)

    # ----- detection (inference) --------------------------------------------------
    DETECTION_MIN_CONFIDENCE: float = 0.05
    DETECTION_NMS_THRESHOLD: float = 0.5
    DETECTION_MAX_INSTANCES: int = 100
    DETECTION_MIN_SIZE: float = 1e-2
    DETECTION_MASK_THRESHOLD: float = 0.5

    # ----- input ------------------------------------------------------------------
    # Resize so the short side is IMAGE_MIN_DIM without the long side passing
    # IMAGE_MAX_DIM, then pad: "square" to IMAGE_MAX_DIM x IMAGE_MAX_DIM (fixed
    # shapes, what training uses) or "pad32" to the next multiple of 32.
    IMAGE_MIN_DIM: int = 800
    IMAGE_MAX_DIM: int = 1333
    IMAGE_RESIZE_MODE: str = "square"
    # Channel order the network expects. Images are always given as RGB; "BGR"
    # reverses the channels first (Detectron2/Caffe-trained weights).
    INPUT_CHANNEL_ORDER: str = "RGB"
    # Mean and std in 0-255 pixel units, in INPUT_CHANNEL_ORDER (torchvision's
    # ImageNet statistics by default).
    MEAN_PIXEL: tuple[float, ...] = (123.675, 116.28, 103.53)
    STD_PIXEL: tuple[float, ...] = (58.395, 57.12, 57.375)
    TRAIN_FLIP_PROB: float = 0.5

    # ----- training ---------------------------------------------------------------
    LEARNING_RATE: float = 0.02
    LEARNING_MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 1e-4
    # Linear warm-up from LEARNING_RATE * WARMUP_FACTOR over WARMUP_STEPS steps,
    # then x0.1 at each of LR_STEPS (global steps). Empty = constant after warm-up.
    WARMUP_STEPS: int = 1000
    WARMUP_FACTOR: float = 0.001
    LR_STEPS: tuple[int, ...] = ()
    GRADIENT_CLIP_NORM: float | None = None
    STEPS_PER_EPOCH: int = 1000
    VALIDATION_STEPS: int = 50
    # Loss weights, keyed by the names reported as metrics.
    LOSS_WEIGHTS: dict[str, float] | None = None
    # Smooth-L1 beta of the box losses (torchvision 1/9 for both).
    RPN_BOX_LOSS_BETA: float = 1.0 / 9.0
    BOX_LOSS_BETA: float = 1.0 / 9.0

    BASE_LOSS_NAMES = ("rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss")

    def __init__(self, **overrides: Any) -> None:
        for key, value in overrides.items():
            if not key.isupper() or not hasattr(type(self), key):
                raise ValueError(f"Config has no field {key!r}")
            setattr(self, key, value)
        self.validate()

    # ----- derived ----------------------------------------------------------------
    @property
    def BATCH_SIZE(self) -> int:  # noqa: N802 - matterport-familiar name
        return self.IMAGES_PER_GPU * self.GPU_COUNT

    @property
    def IMAGE_SHAPE(self) -> tuple[int, int, int]:  # noqa: N802
        """Padded network input shape of the "square" mode: [S, S, 3], S divisible by 32."""
        side = int(math.ceil(self.IMAGE_MAX_DIM / 32.0) * 32)
        return (side, side, 3)

    @property
    def RPN_BBOX_WEIGHTS(self) -> tuple[float, ...]:  # noqa: N802
        return tuple(1.0 / s for s in self.RPN_BBOX_STD_DEV)

    @property
    def LOSS_NAMES(self) -> tuple[str, ...]:  # noqa: N802
        """Names of the losses reported as metrics: mask_loss with the mask head,
        keypoint_loss with the keypoint head."""
        names = self.BASE_LOSS_NAMES
        if self.MASK_HEAD:
            names = (*names, "mask_loss")
        if self.NUM_KEYPOINTS:
            names = (*names, "keypoint_loss")
        return names

    def keypoint_flip_permutation(self) -> tuple[int, ...]:
        """perm with perm[i] = the keypoint that becomes keypoint i after a horizontal flip."""
        pairs = self.KEYPOINT_FLIP_MAP
        if pairs is None:
            pairs = flip_map_from_names(self.KEYPOINT_NAMES or ())
        perm = list(range(self.NUM_KEYPOINTS))
        for i, j in pairs:
            perm[i], perm[j] = j, i
        return tuple(perm)

    def loss_weights(self) -> dict[str, float]:
        weights = dict.fromkeys(self.LOSS_NAMES, 1.0)
        weights.update(self.LOSS_WEIGHTS or {})
        return weights

    # ----- validation -------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with an impossible value."""

        def fail(field: str, why: str) -> None:
            raise ValueError(f"Config.{field}={getattr(self, field)!r}: {why}")

        def positive_int(field: str) -> None:
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                fail(field, "must be a positive integer")

        def fraction(field: str, low_open: bool = False) -> None:
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not (0 <= v <= 1) or (low_open and v == 0):
                fail(field, "must be a number in [0, 1]" if not low_open else "must be in (0, 1]")

        if not isinstance(self.NAME, str) or not self.NAME:
            fail("NAME", "must be a non-empty string")
        positive_int("NUM_CLASSES")
        if self.NUM_CLASSES < 2:
            fail("NUM_CLASSES", "must be >= 2 (background + at least one class)")
        if self.CLASS_NAMES is not None and len(self.CLASS_NAMES) != self.NUM_CLASSES:
            fail("CLASS_NAMES", f"must have NUM_CLASSES={self.NUM_CLASSES} entries")
        for f in (
            "IMAGES_PER_GPU", "GPU_COUNT", "GROUP_NORM_GROUPS", "BACKBONE_BASE_WIDTH",
            "FPN_CHANNELS", "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT_TRAINING",
            "PRE_NMS_LIMIT_INFERENCE", "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
            "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE", "MASK_POOL_SIZE", "FPN_FC_LAYERS_SIZE",
            "MASK_HEAD_CONV_CHANNELS", "MAX_GT_INSTANCES",
            "DETECTION_MAX_INSTANCES", "IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "STEPS_PER_EPOCH",
            "VALIDATION_STEPS", "ROI_CANONICAL_LEVEL",
        ):
            positive_int(f)
        self._validate_keypoints(fail, positive_int)
        if not isinstance(self.MASK_HEAD_NUM_CONVS, int) or self.MASK_HEAD_NUM_CONVS < 0:
            fail("MASK_HEAD_NUM_CONVS", "must be an integer >= 0")
        if not isinstance(self.WARMUP_STEPS, int) or self.WARMUP_STEPS < 0:
            fail("WARMUP_STEPS", "must be an integer >= 0")
        if self.BACKBONE not in BACKBONES:
            fail("BACKBONE", f"unknown backbone; choose one of {BACKBONES}")
        if self.BACKBONE_NORM not in NORMS:
            fail("BACKBONE_NORM", f"choose one of {NORMS}")
        if self.BACKBONE_NORM == "gn" and self.BACKBONE_BASE_WIDTH % self.GROUP_NORM_GROUPS:
            fail("GROUP_NORM_GROUPS", "must divide BACKBONE_BASE_WIDTH")
        if not 0 <= self.FREEZE_BACKBONE_STAGES <= 5:
            fail("FREEZE_BACKBONE_STAGES", "must be in 0..5")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            fail("IMAGE_RESIZE_MODE", f"choose one of {RESIZE_MODES}")
        if self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            fail("IMAGE_MIN_DIM", f"must be <= IMAGE_MAX_DIM={self.IMAGE_MAX_DIM}")
        if self.INPUT_CHANNEL_ORDER not in ("RGB", "BGR"):
            fail("INPUT_CHANNEL_ORDER", "must be 'RGB' or 'BGR'")
        if not 0.0 <= self.ANCHOR_OFFSET < 1.0:
            fail("ANCHOR_OFFSET", "must be in [0, 1) (a fraction of the stride)")
        if self.ROI_ALIGN_IMPLEMENTATION not in ROI_ALIGN_IMPLEMENTATIONS:
            fail("ROI_ALIGN_IMPLEMENTATION", f"choose one of {ROI_ALIGN_IMPLEMENTATIONS}")
        ratio = self.ROI_ALIGN_SAMPLING_RATIO
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 0:
            fail("ROI_ALIGN_SAMPLING_RATIO", "must be an integer >= 0 (0 = adaptive)")
        if ratio == 0 and self.ROI_ALIGN_IMPLEMENTATION == "portable":
            fail("ROI_ALIGN_SAMPLING_RATIO", "0 (adaptive) needs the custom op: "
                 "ROI_ALIGN_IMPLEMENTATION='custom' or 'auto'")
        if len(self.BACKBONE_STRIDES) != 5 or list(self.BACKBONE_STRIDES) != sorted(self.BACKBONE_STRIDES):
            fail("BACKBONE_STRIDES", "must list the 5 increasing strides of P2..P6")
        if len(self.RPN_ANCHOR_SCALES) != 5 or any(s <= 0 for s in self.RPN_ANCHOR_SCALES):
            fail("RPN_ANCHOR_SCALES", "must give 5 positive sizes, one per level P2..P6")
        if not self.RPN_ANCHOR_RATIOS or any(r <= 0 for r in self.RPN_ANCHOR_RATIOS):
            fail("RPN_ANCHOR_RATIOS", "must be a non-empty list of positive ratios")
        if not 0 < self.RPN_NEGATIVE_IOU <= self.RPN_POSITIVE_IOU <= 1:
            fail("RPN_NEGATIVE_IOU", "need 0 < RPN_NEGATIVE_IOU <= RPN_POSITIVE_IOU <= 1")
        for f in ("RPN_POSITIVE_RATIO", "ROI_POSITIVE_RATIO", "ROI_POSITIVE_IOU",
                  "RPN_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE", "DETECTION_NMS_THRESHOLD",
                  "DETECTION_MASK_THRESHOLD", "MASK_TARGET_THRESHOLD", "TRAIN_FLIP_PROB",
                  "WARMUP_FACTOR"):
            fraction(f)
        for f in ("BBOX_REG_WEIGHTS", "RPN_BBOX_STD_DEV"):
            v = getattr(self, f)
            if len(v) != 4 or any(w <= 0 for w in v):
                fail(f, "must be 4 positive numbers")
        for f in ("MEAN_PIXEL", "STD_PIXEL"):
            if len(getattr(self, f)) != 3:
                fail(f, "must have 3 values (R, G, B)")
        if any(s <= 0 for s in self.STD_PIXEL):
            fail("STD_PIXEL", "must be positive")
        if len(self.MASK_SHAPE) != 2 or tuple(self.MASK_SHAPE) != (2 * self.MASK_POOL_SIZE,) * 2:
            fail("MASK_SHAPE", "must be (2*MASK_POOL_SIZE, 2*MASK_POOL_SIZE): the head upsamples x2")
        if self.MINI_MASK_SHAPE is not None and (
            len(self.MINI_MASK_SHAPE) != 2 or min(self.MINI_MASK_SHAPE) <= 0
        ):
            fail("MINI_MASK_SHAPE", "must be None or two positive sizes")
        for f in ("LEARNING_RATE", "LEARNING_MOMENTUM", "WEIGHT_DECAY"):
            if getattr(self, f) < 0:
                fail(f, "must be >= 0")
        if self.LEARNING_RATE == 0:
            fail("LEARNING_RATE", "must be > 0")
        if list(self.LR_STEPS) != sorted(self.LR_STEPS) or any(s <= 0 for s in self.LR_STEPS):
            fail("LR_STEPS", "must be increasing positive step numbers")
        if self.GRADIENT_CLIP_NORM is not None and self.GRADIENT_CLIP_NORM <= 0:
            fail("GRADIENT_CLIP_NORM", "must be None or > 0")
        unknown = set(self.LOSS_WEIGHTS or {}) - set(self.LOSS_NAMES)
        if unknown:
            fail("LOSS_WEIGHTS", f"unknown loss names {sorted(unknown)}; known: {self.LOSS_NAMES}")

    def _validate_keypoints(self, fail, positive_int) -> None:
        if not isinstance(self.MASK_HEAD, bool):
            fail("MASK_HEAD", "must be True or False")
        k = self.NUM_KEYPOINTS
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            fail("NUM_KEYPOINTS", "must be an integer >= 0 (0 = no keypoint head)")
        for f in ("KEYPOINT_POOL_SIZE", "KEYPOINT_HEATMAP_SIZE", "KEYPOINT_HEAD_CONV_CHANNELS"):
            positive_int(f)
        if not isinstance(self.KEYPOINT_HEAD_NUM_CONVS, int) or self.KEYPOINT_HEAD_NUM_CONVS < 0:
            fail("KEYPOINT_HEAD_NUM_CONVS", "must be an integer >= 0")
        if self.KEYPOINT_HEATMAP_SIZE != 4 * self.KEYPOINT_POOL_SIZE:
            fail("KEYPOINT_HEATMAP_SIZE", "must be 4*KEYPOINT_POOL_SIZE: the head upsamples x4")
        if self.KEYPOINT_NAMES is not None:
            names = list(self.KEYPOINT_NAMES)
            if len(names) != k or len(set(names)) != len(names):
                fail("KEYPOINT_NAMES", f"must be NUM_KEYPOINTS={k} distinct names")
        for f in ("KEYPOINT_FLIP_MAP", "KEYPOINT_SKELETON"):
            pairs = getattr(self, f)
            if pairs is None:
                continue
            try:
                ok = all(len(p) == 2 and all(isinstance(i, int) and 0 <= i < k for i in p) for p in pairs)
            except TypeError:
                ok = False
            if not ok:
                fail(f, f"must be pairs (i, j) of keypoint indices in 0..{k - 1}")
        if self.KEYPOINT_FLIP_MAP is not None:
            seen = [i for p in self.KEYPOINT_FLIP_MAP for i in p]
            if len(seen) != len(set(seen)) or any(i == j for i, j in self.KEYPOINT_FLIP_MAP):
                fail("KEYPOINT_FLIP_MAP", "each keypoint may appear in at most one pair, with a partner other than itself")
        if not self.MASK_HEAD and k == 0:
            fail("MASK_HEAD", "a model without mask head needs NUM_KEYPOINTS > 0 (else it is a plain detector)")

    # ----- logging ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All upper-case fields (derived ones included) as plain Python values."""
        out = {}
        for key in sorted(dir(self)):
            if key.isupper() and not key.startswith("_"):
                value = getattr(self, key)
                if callable(value):
                    continue
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Inverse of ``to_dict`` (derived fields are ignored)."""
        derived = {k for k, v in vars(Config).items() if isinstance(v, property)}
        fields = {}
        for k, v in values.items():
            if k in derived or k in ("LOSS_NAMES", "BASE_LOSS_NAMES"):
                continue
            if isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            fields[k] = v
        return cls(**fields)

    def display(self) -> None:
        print("Configuration:")
        for key, value in self.to_dict().items():
            print(f"  {key:30} {value}")
        print()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(NAME={self.NAME!r}, NUM_CLASSES={self.NUM_CLASSES})"


def load_config(spec: str | Config) -> Config:
    """A Config from ``"package.module:ClassName"``, ``"path/to/file.py:ClassName"`` or
    a JSON file of ``Config.to_dict()`` (e.g. a run's config.json); a Config is returned as is.

    Raises ValueError (or FileNotFoundError) saying what is wrong with ``spec``.
    """
    if isinstance(spec, Config):
        return spec
    if spec.endswith(".json"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"config file not found: {spec}")
        try:
            return Config.from_dict(json.loads(Path(spec).read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{spec}: not valid JSON ({exc})") from exc
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"config must be MODULE:CLASS, FILE.py:CLASS or FILE.json, got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())  # let "samples.x:Cfg" work from the project root
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        raise ValueError(f"{spec!r} is not a mrcnn.config.Config subclass")
    return cls()
