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

import difflib
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d")
NORMS = ("frozen_bn", "bn", "syncbn", "gn")
# FPN_NORM / HEAD_NORM: None = no norm (the convs have biases).
STAGE_NORMS = (None, "bn", "syncbn", "gn")
BOX_HEADS = ("2fc", "4conv1fc")
# The stage options matterport/Mask_RCNN's model needs (MatterportConfig, docs/matterport.md).
STEM_POOL_PADDINGS = ("symmetric", "same")
PROPOSAL_SELECTIONS = ("per_level", "global")
BOX_COORDINATE_FRAMES = ("pixels", "matterport")
ROI_POOLERS = ("roi_align", "crop_and_resize")
DETECTION_CLASS_RULES = ("per_class", "argmax")
INPUT_PADDINGS = ("normalized_zero", "raw_zero")
RESIZE_MODES = ("square", "pad32")
ROI_ALIGN_IMPLEMENTATIONS = ("auto", "portable", "custom", "gather")
MASK_CLASS_PICKS = ("batched", "flat")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine")
MIXED_PRECISIONS = (None, "float16", "bfloat16")
TRAINING_CONV_ALGORITHMS = ("auto", "direct", "winograd")


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


# Key of Config.to_dict() / config.json that records the config class ("module:qualname").
CONFIG_CLASS_KEY = "config_class"


def class_path(cls: type) -> str:
    """``"module:qualname"`` of a class (what config.json records)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_config_class(path: str) -> tuple[type[Config] | None, str | None]:
    """Import the Config subclass named ``"module:qualname"`` (``"module.Name"`` is
    accepted too, as older files wrote it): ``(cls, None)`` or ``(None, why not)``.

    Only importable modules are considered (nothing is executed from a file path); classes
    defined inside functions (``<locals>`` in the qualname) or in ``__main__`` are not
    importable by name.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep:
        module_name, _, qualname = path.rpartition(".")
    if not module_name or not qualname:
        return None, f"not of the form module:qualname: {path!r}"
    if "<locals>" in qualname or module_name == "__main__":
        return None, "defined in a function or in __main__"
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not importable"
        return None, f"{type(exc).__name__}: {exc}"
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None, f"module {module_name!r} has no {qualname!r}"
    if not (isinstance(obj, type) and issubclass(obj, Config)):
        return None, f"{path!r} is not a mrcnn.config.Config subclass"
    return obj, None


# matterport/Mask_RCNN Config fields this Config does not have, with what to use instead
# (docs/matterport.md has the field-by-field table). A subclass that sets one gets one
# warning with this advice when the class is defined (Config.__init_subclass__).
MATTERPORT_FIELDS: dict[str, str] = {
    "USE_MINI_MASK": "use MINI_MASK_SHAPE = None to turn mini-masks off (USE_MINI_MASK = False), "
                     "or a (h, w) shape to keep them on",
    "TRAIN_BN": "use BACKBONE_NORM: 'frozen_bn' (TRAIN_BN = False, the default), 'bn' (TRAIN_BN = None "
                "or True) or 'gn'",
    "BBOX_STD_DEV": "use BBOX_REG_WEIGHTS = 1 / BBOX_STD_DEV (matterport's (0.1, 0.1, 0.2, 0.2) is "
                    "(10, 10, 5, 5), the default)",
    "PRE_NMS_LIMIT": "use PRE_NMS_LIMIT_TRAINING / PRE_NMS_LIMIT_INFERENCE (per FPN level by default; "
                     "PROPOSAL_SELECTION = 'global' takes matterport's limit over all levels together)",
    "TOP_DOWN_PYRAMID_SIZE": "use FPN_CHANNELS",
    "FPN_CLASSIF_FC_LAYERS_SIZE": "use FPN_FC_LAYERS_SIZE",
    "RPN_ANCHOR_STRIDE": "anchors sit on every feature-map cell here (matterport's RPN_ANCHOR_STRIDE = 1); "
                         "there is no field for other strides",
    "COMPUTE_BACKBONE_SHAPE": "custom backbone callables are not supported; BACKBONE names one of "
                              + ", ".join(BACKBONES),
    "IMAGE_MIN_SCALE": "there is no minimum up-scaling; IMAGE_MIN_DIM / IMAGE_MAX_DIM decide the scale",
    "IMAGE_CHANNEL_COUNT": "images are always 3-channel RGB here (gray and RGBA are converted)",
    "IMAGE_META_SIZE": "there are no image metas here (image sizes travel as image_sizes)",
    "USE_RPN_ROIS": "the heads always train on the RPN's proposals here",
}


# matterport's LOSS_WEIGHTS keys -> this Config's loss names.
MATTERPORT_LOSS_NAMES: dict[str, str] = {
    "rpn_bbox_loss": "rpn_box_loss",
    "mrcnn_class_loss": "class_loss",
    "mrcnn_bbox_loss": "box_loss",
    "mrcnn_mask_loss": "mask_loss",
}


def _unknown_field_advice(cls: type, name: str) -> str | None:
    """Advice for an upper-case class attribute ``name`` of Config subclass ``cls`` that no
    Config field has: matterport's field name, or a close spelling of a known field (None:
    a user-defined field, allowed without a word)."""
    if name in MATTERPORT_FIELDS:
        return f"{name} is a matterport Config field that mrcnn ignores: {MATTERPORT_FIELDS[name]}"
    known = [k for k in dir(Config) if k.isupper() and not k.startswith("_")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    if close:
        return f"{name} is not a Config field and is ignored; did you mean {close[0]}?"
    return None


def _is_derived(cls: type, name: str) -> bool:
    """Whether ``name`` is computed by ``cls`` (a property anywhere in its MRO)."""
    return isinstance(inspect.getattr_static(cls, name, None), property)


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
    # norm; "syncbn": batch norm with statistics over all replicas of a tf.distribute
    # strategy (keras.layers.BatchNormalization(synchronized=True)); "gn": GroupNorm.
    BACKBONE_NORM: str = "frozen_bn"
    GROUP_NORM_GROUPS: int = 32
    # Where the stride-2 sits in a bottleneck: False = on the 3x3 conv (torchvision
    # "v1.5"), True = on the first 1x1 conv (MSRA/Caffe, keras.applications).
    STRIDE_IN_1X1: bool = False
    # Padding of the stem's 3x3 stride-2 max-pool: "symmetric" (one pixel on every side,
    # torchvision, Detectron2) or "same" (TensorFlow's: on an even input none before and one
    # after; matterport, keras.applications).
    STEM_POOL_PADDING: str = "symmetric"
    # Stages whose weights are not trained: 0 = none, 1 = the stem, 2 = stem + C2, ...
    # None = depends on the start (mrcnn.checkpoint.pretrained): 2 when the backbone comes from a
    # pretrained start (imagenet/coco; torchvision trainable_backbone_layers=3, Detectron2
    # FREEZE_AT=2), 0 from scratch.
    FREEZE_BACKBONE_STAGES: int | None = None
    # Width of the stem and of the first stage (ResNet: 64); a smaller value gives
    # a narrow network for CPU experiments.
    BACKBONE_BASE_WIDTH: int = 64

    # ----- FPN / RPN --------------------------------------------------------------
    FPN_CHANNELS: int = 256
    # Norm after each FPN conv (then without bias): None (v1), "bn", "syncbn" or "gn"
    # (torchvision maskrcnn_resnet50_fpn_v2: "bn"; Detectron2 new baselines: "syncbn").
    FPN_NORM: str | None = None
    # 3x3 conv + ReLU layers of the RPN head before its predictors: 1 (v1) or 2 (v2, LSJ).
    RPN_HEAD_CONVS: int = 1
    # Width of the RPN head's 3x3 conv(s); None = FPN_CHANNELS (torchvision, Detectron2).
    # matterport: 512.
    RPN_HEAD_CHANNELS: int | None = None
    # How the proposals are chosen: "per_level" (torchvision, Detectron2: the top
    # PRE_NMS_LIMIT_* anchors of each FPN level, NMS within each level, the best
    # POST_NMS_ROIS_* of all) or "global" (matterport: the top PRE_NMS_LIMIT_* anchors of
    # all levels together, one NMS over them).
    PROPOSAL_SELECTION: str = "per_level"
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
    # Box head: "2fc" (flatten -> 2 FC of FPN_FC_LAYERS_SIZE; v1, the paper) or "4conv1fc"
    # (4 x 3x3 conv of FPN_CHANNELS -> 1 FC; torchvision v2, Detectron2 new baselines).
    BOX_HEAD: str = "2fc"
    # Norm after each conv of the box ("4conv1fc") and mask heads: None, "bn", "syncbn"
    # (batch statistics of the valid RoIs, over all replicas) or "gn".
    HEAD_NORM: str | None = None
    # FPN level assignment k = floor(k0 + log2(sqrt(wh) / canonical_size)).
    ROI_CANONICAL_LEVEL: int = 4
    ROI_CANONICAL_SIZE: float = 224.0
    ROI_ALIGN_SAMPLING_RATIO: int = 2
    ROI_ALIGN_ALIGNED: bool = True
    # "auto" uses the custom C++/CUDA op when it is built, else stock TF ops
    # ("portable", crop_and_resize); "gather" samples with Gather and arithmetic only,
    # the form the ONNX, OpenVINO and LiteRT exports build (same numbers within 2e-5).
    ROI_ALIGN_IMPLEMENTATION: str = "auto"
    # "roi_align": RoIAlign with the ROI_ALIGN_* settings and the level rule
    # floor(k0 + log2(sqrt(wh) / canonical_size)) (torchvision, Detectron2).
    # "crop_and_resize": matterport's PyramidROIAlign: tf.image.crop_and_resize of the box
    # in the normalised frame (one bilinear sample per output cell, the outer cells' centres
    # on the box edges) and the level k0 + round(log2(sqrt(wh) / canonical_size)) with w, h
    # measured in units of the canvas / sqrt(canvas area) (ROI_ALIGN_* unused).
    ROI_POOLER: str = "roi_align"
    # Mask target: GT mask RoIAligned into the proposal, thresholded at this value.
    MASK_TARGET_THRESHOLD: float = 0.5
    # False drops the mask head (the paper's "keypoint-only" model); boxes and, when
    # NUM_KEYPOINTS > 0, keypoints are still predicted.
    MASK_HEAD: bool = True
    # How the mask of each detection's class is taken from the [K+1] channels: "batched"
    # (one tf.gather with batch_dims=2) or "flat" (a plain Gather on a flattened table,
    # the form the OpenVINO export builds); the values are the same.
    MASK_CLASS_PICK: str = "batched"

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
    # Candidates of the detection stage: "per_class" (every (RoI, foreground class) pair
    # scoring > DETECTION_MIN_CONFIDENCE: torchvision, Detectron2) or "argmax" (each RoI's
    # best class only, background included, kept when it is a foreground class scoring
    # >= DETECTION_MIN_CONFIDENCE: matterport). NMS per class in both.
    DETECTION_CLASS_RULE: str = "per_class"
    DETECTION_MIN_SIZE: float = 1e-2
    DETECTION_MASK_THRESHOLD: float = 0.5
    # The mask head and the mask paste run only for detections scoring at least
    # this (0 = every detection, which COCO evaluation needs); lower-scored ones
    # keep their box and score with an empty mask. `mrcnn detect --min-score`.
    DETECTION_MASK_MIN_SCORE: float = 0.0

    # ----- input ------------------------------------------------------------------
    # Resize so the short side is IMAGE_MIN_DIM without the long side passing
    # IMAGE_MAX_DIM, then pad: "square" to IMAGE_MAX_DIM x IMAGE_MAX_DIM (fixed
    # shapes, what training uses) or "pad32" to the next multiple of 32.
    # A tuple of sizes = multi-scale training (Detectron2 MIN_SIZE_TRAIN, "choice"):
    # one drawn per training image; inference uses the largest (mrcnn.data.augment).
    IMAGE_MIN_DIM: int | tuple[int, ...] = 800
    IMAGE_MAX_DIM: int = 1333
    IMAGE_RESIZE_MODE: str = "square"
    # Channel order the network expects. Images are always given as RGB; "BGR"
    # reverses the channels first (Detectron2/Caffe-trained weights).
    INPUT_CHANNEL_ORDER: str = "RGB"
    # What the padding around an image holds: "normalized_zero" (zero after the
    # MEAN_PIXEL/STD_PIXEL normalisation, i.e. the mean colour: torchvision, Detectron2) or
    # "raw_zero" (black before it: matterport's molded images).
    INPUT_PADDING: str = "normalized_zero"
    # The frame boxes live in inside the model: "pixels" (the pixel-edge frame: a box covers
    # [y1, y2) x [x1, x2); torchvision, Detectron2) or "matterport" (matterport's normalised
    # frame times (size - 1): anchors end one pixel in, (y1, x1, y2 - 1, x2 - 1); proposals
    # are clipped to the canvas and detections to the image, each minus one pixel; the
    # model's output boxes are given back in the pixel-edge frame, far edges plus one).
    BOX_COORDINATES: str = "pixels"
    # Mean and std in 0-255 pixel units, in INPUT_CHANNEL_ORDER (torchvision's
    # ImageNet statistics by default).
    MEAN_PIXEL: tuple[float, ...] = (123.675, 116.28, 103.53)
    STD_PIXEL: tuple[float, ...] = (58.395, 57.12, 57.375)
    TRAIN_FLIP_PROB: float = 0.5
    # Training scale jitter (lo, hi): the resize scale times a factor uniform in
    # [lo, hi] (torchvision ScaleJitter; LSJ = (0.1, 2.0) at 1024 square). None = off.
    TRAIN_SCALE_JITTER: tuple[float, float] | None = None
    # Random square crop of at most this side (network pixels) after the resize;
    # the training canvas is then this side rounded up to 32. None = no crop.
    TRAIN_CROP_SIZE: int | None = None
    # Padding of training batches: "batch" = each batch to its largest image (sides
    # multiples of 32), as torchvision/Detectron2; "square" = every image on the
    # IMAGE_SHAPE canvas (static shapes). Evaluation pads by IMAGE_RESIZE_MODE.
    TRAIN_PADDING: str = "batch"
    # With "batch" padding, batch landscape and portrait images apart (Detectron2's
    # AspectRatioGroupedDataset), so little of each batch is padding.
    ASPECT_RATIO_GROUPING: bool = True
    # User augmentation hook "package.module:function", fn(sample, seed) -> sample,
    # run on training samples before the built-in ones (mrcnn.data.augment).
    AUGMENT: str | None = None

    # ----- training ---------------------------------------------------------------
    # "sgd": torch's SGD (L2 weight decay added to the gradient, through momentum;
    # mrcnn.solver.optimizer.TorchSGD); "adamw": Keras AdamW (decoupled decay).
    OPTIMIZER: str = "sgd"
    # Learning rate for LR_REFERENCE_BATCH images per step (the paper: 0.02 for 16).
    # The rate used is LEARNING_RATE * BATCH_SIZE / LR_REFERENCE_BATCH (linear
    # scaling rule, Goyal et al. 2017): config.effective_lr(). None = no scaling.
    LEARNING_RATE: float = 0.02
    LR_REFERENCE_BATCH: int | None = 16
    LEARNING_MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 1e-4
    # Weight decay of normalisation gammas/betas (Detectron2 WEIGHT_DECAY_NORM = 0;
    # torchvision's reference decays them like everything else: set WEIGHT_DECAY).
    WEIGHT_DECAY_NORM: float = 0.0
    # Linear warm-up from the rate * WARMUP_FACTOR over WARMUP_STEPS steps, then
    # "step": x0.1 at each of LR_STEPS (global steps); LR_STEPS empty = at 2/3 and
    # 8/9 of the planned run when its length is known (TOTAL_STEPS, or epochs x
    # STEPS_PER_EPOCH given to make_optimizer), else constant. "cosine": half a
    # cosine from the rate down to 0 at the end of the run (needs its length).
    LR_SCHEDULE: str = "step"
    WARMUP_STEPS: int = 1000
    WARMUP_FACTOR: float = 0.001
    LR_STEPS: tuple[int, ...] = ()
    # Planned length of the run in global steps; None = not known in advance.
    TOTAL_STEPS: int | None = None
    GRADIENT_CLIP_NORM: float | None = None
    # Half-precision compute for the backbone, FPN and heads (Keras "mixed_float16" /
    # "mixed_bfloat16" policies: float32 variables); anchors, boxes, proposals, NMS,
    # RoIAlign, losses and detections stay float32 (mrcnn/layers/precision.py).
    # "float16" trains with dynamic loss scaling (keras LossScaleOptimizer).
    MIXED_PRECISION: str | None = None
    # How the training step computes the 3x3 stride-1 convolutions (FPN outputs, RPN
    # head, ResNet blocks, mask/keypoint heads): "winograd" (F(4x4, 3x3) in stock TF
    # ops: forward + backward 0.44-0.89x the direct time on a CPU for layers of >= 128
    # channels, relative error ~1.5e-5), "direct", or "auto" = Winograd for the layers
    # where it is faster (>= 128 channels, maps >= 14x14), in float32, on a host
    # without a GPU. Inference, validation and exports always use the direct
    # convolution (mrcnn/layers/conv.py).
    TRAINING_CONV_ALGORITHM: str = "auto"
    # Compile the training step with XLA (keras' jit_compile; docs/distributed.md, "XLA").
    # Needs a fixed training canvas (TRAIN_PADDING="square" or TRAIN_CROP_SIZE) and the
    # gather RoIAlign ("auto" picks it; XLA compiles neither the custom op nor
    # CropAndResize); the mask branch then runs on all its slots (static shapes).
    JIT_COMPILE: bool = False
    STEPS_PER_EPOCH: int = 1000
    VALIDATION_STEPS: int = 50
    # Reliability (docs/reliability.md). Back up weights + optimizer + data position
    # every N global steps (0 = only at epoch ends); 500 steps is ~5-10 min of a GPU run.
    BACKUP_EVERY_STEPS: int = 500
    # Keep the newest K epoch_NNN.weights.h5 files (plus the best by CHECKPOINT_MONITOR
    # when evaluation reports it); 0 keeps every epoch.
    CHECKPOINTS_TO_KEEP: int = 3
    # Log key that picks the "best" checkpoint (e.g. "val_segm_AP"), and "max"/"min".
    CHECKPOINT_MONITOR: str | None = "val_segm_AP"
    CHECKPOINT_MODE: str = "max"
    # A step with a non-finite loss is never applied; 0 = stop at the first one,
    # N > 0 = skip it and stop only after N + 1 in a row.
    SKIP_NONFINITE_STEPS: int = 0
    # A sample that cannot be loaded/validated during training: "raise" (stop,
    # naming its image id and path) or "skip" (replace it, count it, log its id).
    ON_BAD_SAMPLE: str = "raise"
    # Loss weights, keyed by the names reported as metrics.
    LOSS_WEIGHTS: dict[str, float] | None = None
    # Smooth-L1 beta of the box losses (torchvision 1/9 for both).
    RPN_BOX_LOSS_BETA: float = 1.0 / 9.0
    BOX_LOSS_BETA: float = 1.0 / 9.0

    BASE_LOSS_NAMES = ("rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Warn once per class about an upper-case attribute that looks like a mistake: a
        matterport field name or a close misspelling of a Config field (``_unknown_field_advice``).
        Other new upper-case attributes are user-defined fields: allowed, carried in to_dict()."""
        super().__init_subclass__(**kwargs)
        inherited = {k for base in cls.__mro__[1:] for k in vars(base)}
        for name in vars(cls):
            if name.isupper() and not name.startswith("_") and name not in inherited:
                advice = _unknown_field_advice(cls, name)
                if advice is not None:
                    warnings.warn(f"mrcnn: {cls.__qualname__}.{advice}", UserWarning, stacklevel=2)

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
            "DETECTION_MAX_INSTANCES", "IMAGE_MAX_DIM", "STEPS_PER_EPOCH",
            "VALIDATION_STEPS", "ROI_CANONICAL_LEVEL",
        ):
            positive_int(f)
        self._validate_keypoints(fail, positive_int)
        if not isinstance(self.MASK_HEAD_NUM_CONVS, int) or self.MASK_HEAD_NUM_CONVS < 0:
            fail("MASK_HEAD_NUM_CONVS", "must be an integer >= 0")
        if not isinstance(self.WARMUP_STEPS, int) or self.WARMUP_STEPS < 0:
            fail("WARMUP_STEPS", "must be an integer >= 0")
        for f in ("BACKUP_EVERY_STEPS", "CHECKPOINTS_TO_KEEP", "SKIP_NONFINITE_STEPS"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                fail(f, "must be an integer >= 0")
        if self.ON_BAD_SAMPLE not in ("raise", "skip"):
            fail("ON_BAD_SAMPLE", "must be 'raise' or 'skip'")
        if self.CHECKPOINT_MODE not in ("max", "min"):
            fail("CHECKPOINT_MODE", "must be 'max' or 'min'")
        if self.CHECKPOINT_MONITOR is not None and not isinstance(self.CHECKPOINT_MONITOR, str):
            fail("CHECKPOINT_MONITOR", "must be a log key (str) or None")
        if self.BACKBONE not in BACKBONES:
            fail("BACKBONE", f"unknown backbone; choose one of {BACKBONES}")
        if self.BACKBONE_NORM not in NORMS:
            fail("BACKBONE_NORM", f"choose one of {NORMS}")
        if self.BACKBONE_NORM == "gn" and self.BACKBONE_BASE_WIDTH % self.GROUP_NORM_GROUPS:
            fail("GROUP_NORM_GROUPS", "must divide BACKBONE_BASE_WIDTH")
        self._validate_architecture(fail)
        freeze = self.FREEZE_BACKBONE_STAGES
        if freeze is not None and (isinstance(freeze, bool) or not isinstance(freeze, int) or not 0 <= freeze <= 5):
            fail("FREEZE_BACKBONE_STAGES", "must be None (depends on the start) or in 0..5")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            fail("IMAGE_RESIZE_MODE", f"choose one of {RESIZE_MODES}")
        self._validate_augmentation(fail)
        if self.INPUT_CHANNEL_ORDER not in ("RGB", "BGR"):
            fail("INPUT_CHANNEL_ORDER", "must be 'RGB' or 'BGR'")
        if not 0.0 <= self.ANCHOR_OFFSET < 1.0:
            fail("ANCHOR_OFFSET", "must be in [0, 1) (a fraction of the stride)")
        if self.ROI_ALIGN_IMPLEMENTATION not in ROI_ALIGN_IMPLEMENTATIONS:
            fail("ROI_ALIGN_IMPLEMENTATION", f"choose one of {ROI_ALIGN_IMPLEMENTATIONS}")
        ratio = self.ROI_ALIGN_SAMPLING_RATIO
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 0:
            fail("ROI_ALIGN_SAMPLING_RATIO", "must be an integer >= 0 (0 = adaptive)")
        if ratio == 0 and self.ROI_ALIGN_IMPLEMENTATION in ("portable", "gather"):
            fail("ROI_ALIGN_SAMPLING_RATIO", "0 (adaptive) needs the custom op: "
                 "ROI_ALIGN_IMPLEMENTATION='custom' or 'auto'")
        if self.MASK_CLASS_PICK not in MASK_CLASS_PICKS:
            fail("MASK_CLASS_PICK", f"choose one of {MASK_CLASS_PICKS}")
        self._validate_jit(fail)
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
                  "DETECTION_MASK_THRESHOLD", "DETECTION_MASK_MIN_SCORE", "MASK_TARGET_THRESHOLD", "TRAIN_FLIP_PROB",
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
        self._validate_optimizer(fail)
        if self.GRADIENT_CLIP_NORM is not None and self.GRADIENT_CLIP_NORM <= 0:
            fail("GRADIENT_CLIP_NORM", "must be None or > 0")
        unknown = set(self.LOSS_WEIGHTS or {}) - set(self.LOSS_NAMES)
        if unknown:
            renamed = {k: MATTERPORT_LOSS_NAMES[k] for k in sorted(unknown) if k in MATTERPORT_LOSS_NAMES}
            hint = f" (matterport's names; here: {renamed})" if renamed else ""
            fail("LOSS_WEIGHTS", f"unknown loss names {sorted(unknown)}{hint}; known: {self.LOSS_NAMES}")

    def _validate_architecture(self, fail) -> None:
        """FPN_NORM, RPN_HEAD_CONVS, BOX_HEAD, HEAD_NORM (and their GroupNorm widths)."""
        for f in ("FPN_NORM", "HEAD_NORM"):
            if getattr(self, f) not in STAGE_NORMS:
                fail(f, f"choose one of {STAGE_NORMS}")
        if self.RPN_HEAD_CONVS not in (1, 2) or isinstance(self.RPN_HEAD_CONVS, bool):
            fail("RPN_HEAD_CONVS", "must be 1 or 2")
        if self.BOX_HEAD not in BOX_HEADS:
            fail("BOX_HEAD", f"choose one of {BOX_HEADS}")
        for f, choices in (("STEM_POOL_PADDING", STEM_POOL_PADDINGS), ("PROPOSAL_SELECTION", PROPOSAL_SELECTIONS),
                           ("BOX_COORDINATES", BOX_COORDINATE_FRAMES), ("ROI_POOLER", ROI_POOLERS),
                           ("DETECTION_CLASS_RULE", DETECTION_CLASS_RULES), ("INPUT_PADDING", INPUT_PADDINGS)):
            if getattr(self, f) not in choices:
                fail(f, f"choose one of {choices}")
        channels = self.RPN_HEAD_CHANNELS
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0):
            fail("RPN_HEAD_CHANNELS", "must be None (= FPN_CHANNELS) or a positive integer")
        if self.ROI_POOLER == "crop_and_resize" and self.JIT_COMPILE:
            fail("ROI_POOLER", "'crop_and_resize' has no XLA kernel; use JIT_COMPILE=False")
        if self.HEAD_NORM is not None and self.BOX_HEAD == "2fc":
            fail("HEAD_NORM", "needs BOX_HEAD='4conv1fc' (the 2fc box head has no conv to normalise)")
        gn = self.GROUP_NORM_GROUPS
        if self.FPN_NORM == "gn" and self.FPN_CHANNELS % gn:
            fail("GROUP_NORM_GROUPS", "must divide FPN_CHANNELS (FPN_NORM='gn')")
        if self.HEAD_NORM == "gn" and (self.FPN_CHANNELS % gn or self.MASK_HEAD_CONV_CHANNELS % gn):
            fail("GROUP_NORM_GROUPS", "must divide FPN_CHANNELS and MASK_HEAD_CONV_CHANNELS (HEAD_NORM='gn')")

    def _validate_augmentation(self, fail) -> None:
        sizes = self.IMAGE_MIN_DIM if isinstance(self.IMAGE_MIN_DIM, (tuple, list)) else (self.IMAGE_MIN_DIM,)
        if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sizes):
            fail("IMAGE_MIN_DIM", "must be a positive integer or a non-empty tuple of them")
        if max(sizes) > self.IMAGE_MAX_DIM:
            fail("IMAGE_MIN_DIM", f"must be <= IMAGE_MAX_DIM={self.IMAGE_MAX_DIM}")
        jitter = self.TRAIN_SCALE_JITTER
        if jitter is not None and (len(jitter) != 2 or not 0 < jitter[0] <= jitter[1]):
            fail("TRAIN_SCALE_JITTER", "must be None or (lo, hi) with 0 < lo <= hi")
        crop = self.TRAIN_CROP_SIZE
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 32):
            fail("TRAIN_CROP_SIZE", "must be None or an integer >= 32")
        if self.TRAIN_PADDING not in ("batch", "square"):
            fail("TRAIN_PADDING", "choose 'batch' or 'square'")
        if not isinstance(self.ASPECT_RATIO_GROUPING, bool):
            fail("ASPECT_RATIO_GROUPING", "must be True or False")
        if self.AUGMENT is not None and not callable(self.AUGMENT) and ":" not in str(self.AUGMENT):
            fail("AUGMENT", "must be None or 'package.module:function'")

    def _validate_jit(self, fail) -> None:
        if not isinstance(self.JIT_COMPILE, bool):
            fail("JIT_COMPILE", "must be True or False")
        if not self.JIT_COMPILE:
            return
        if self.ROI_ALIGN_IMPLEMENTATION in ("custom", "portable"):
            fail("ROI_ALIGN_IMPLEMENTATION", "JIT_COMPILE=True needs 'gather' or 'auto' (XLA has no kernel for "
                 "the custom op or CropAndResize)")
        if self.TRAIN_PADDING != "square" and self.TRAIN_CROP_SIZE is None:
            fail("TRAIN_PADDING", "JIT_COMPILE=True needs a fixed training canvas: TRAIN_PADDING='square' or "
                 "a TRAIN_CROP_SIZE (each batch shape would compile anew)")

    def roi_align_implementation(self) -> str:
        """The RoIAlign the model builds: ``ROI_ALIGN_IMPLEMENTATION``, with "auto" meaning
        "gather" under ``JIT_COMPILE`` (the one form XLA compiles)."""
        if self.JIT_COMPILE and self.ROI_ALIGN_IMPLEMENTATION == "auto":
            return "gather"
        return self.ROI_ALIGN_IMPLEMENTATION

    def _validate_optimizer(self, fail) -> None:
        if self.OPTIMIZER not in OPTIMIZERS:
            fail("OPTIMIZER", f"choose one of {OPTIMIZERS}")
        if self.MIXED_PRECISION not in MIXED_PRECISIONS:
            fail("MIXED_PRECISION", f"choose one of {MIXED_PRECISIONS}")
        if self.TRAINING_CONV_ALGORITHM not in TRAINING_CONV_ALGORITHMS:
            fail("TRAINING_CONV_ALGORITHM", f"choose one of {TRAINING_CONV_ALGORITHMS}")
        if self.LR_SCHEDULE not in LR_SCHEDULES:
            fail("LR_SCHEDULE", f"choose one of {LR_SCHEDULES}")
        ref = self.LR_REFERENCE_BATCH
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref <= 0):
            fail("LR_REFERENCE_BATCH", "must be None or a positive integer")
        total = self.TOTAL_STEPS
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total <= 0):
            fail("TOTAL_STEPS", "must be None or a positive integer")
        if not isinstance(self.WEIGHT_DECAY_NORM, (int, float)) or self.WEIGHT_DECAY_NORM < 0:
            fail("WEIGHT_DECAY_NORM", "must be a number >= 0")
        if self.OPTIMIZER == "adamw" and self.WEIGHT_DECAY_NORM not in (0, self.WEIGHT_DECAY):
            fail("WEIGHT_DECAY_NORM", "AdamW decays norm parameters either not at all (0) or as "
                 "everything else (= WEIGHT_DECAY)")

    def effective_lr(self) -> float:
        """The base learning rate used: LEARNING_RATE x BATCH_SIZE / LR_REFERENCE_BATCH.

        BATCH_SIZE is the global batch (IMAGES_PER_GPU x GPU_COUNT); with
        LR_REFERENCE_BATCH None, LEARNING_RATE itself.
        """
        if self.LR_REFERENCE_BATCH is None:
            return float(self.LEARNING_RATE)
        return float(self.LEARNING_RATE) * self.BATCH_SIZE / float(self.LR_REFERENCE_BATCH)

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
        """All upper-case fields (derived ones included) as plain Python values, plus
        ``"config_class"``: the ``"module:qualname"`` of the class (see :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        for key in sorted(dir(self)):
            if key.isupper() and not key.startswith("_"):
                value = getattr(self, key)
                if callable(value):
                    continue
                out[key] = list(value) if isinstance(value, tuple) else value
        out[CONFIG_CLASS_KEY] = self.class_path()
        return out

    def class_path(self) -> str:
        """``"module:qualname"`` of this config's class, as recorded in config.json (a config
        rebuilt as a plain Config from an unimportable class keeps the original path)."""
        return self.__dict__.get("_recorded_class") or class_path(type(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, values: dict[str, Any], config_class: str | None = None) -> Config:
        """Inverse of ``to_dict``: rebuild the recorded config class with the saved fields.

        The class is ``config_class`` or else ``values["config_class"]`` (``"module:qualname"``).
        When it can be imported and is ``cls`` or a subclass of it, that class is
        instantiated with the saved fields; its derived fields (properties such as
        ``BATCH_SIZE``) are recomputed, not read back. Otherwise ``cls`` is used, and saved
        fields ``cls`` does not define (a subclass's own fields) are carried on the instance
        as plain attributes, with a warning naming the class and the fields.
        """
        values = dict(values)
        recorded = config_class or values.pop(CONFIG_CLASS_KEY, None)
        values.pop(CONFIG_CLASS_KEY, None)
        target, why = cls, None
        if recorded:
            found, why = resolve_config_class(recorded)
            if found is not None and issubclass(found, cls):
                target, why = found, None
            elif found is not None:
                why = None  # importable but unrelated to cls: cls was asked for explicitly
        fields, extra = {}, {}
        for k, v in values.items():
            if _is_derived(target, k) or k in ("LOSS_NAMES", "BASE_LOSS_NAMES"):
                continue
            if isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            (fields if hasattr(target, k) else extra)[k] = v
        if extra:
            where = f"config class {recorded!r} is not importable ({why})" if why else (
                f"{target.__name__} does not define them")
            warnings.warn(
                f"mrcnn: {where}; building a {target.__name__} that carries the extra fields "
                f"{sorted(extra)} as plain values (properties and checks of the original class are lost)",
                UserWarning, stacklevel=2,
            )
        config = target.__new__(target)
        config.__dict__.update(extra)
        if recorded and why:
            # Written back out as it came in, so the file still names the original class.
            config.__dict__["_recorded_class"] = recorded
        target.__init__(config, **fields)
        return config

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
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        # The file may import modules beside it (as `python file.py` would let it): its
        # folder is on sys.path while it runs.
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        except ImportError as exc:
            raise ValueError(f"{path}: {type(exc).__name__}: {exc} (imported with {folder} on sys.path)") from exc
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
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
