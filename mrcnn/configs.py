"""Presets for COCO-trained weights converted from torchvision and Detectron2.

Each preset carries every convention the source model was trained with, so that
weights written by ``mrcnn convert-weights`` (see :mod:`mrcnn.checkpoint.convert` and
``docs/weights.md``) give the source model's detections::

    mrcnn convert-weights --from torchvision maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out tv.weights.h5
    mrcnn detect --config mrcnn.configs:TorchvisionCOCO --weights tv.weights.h5 --out out/ image.jpg

Class ids: ``TorchvisionCOCO`` has torchvision's 91 slots (index = COCO category
id, with "N/A" for the ten unused ids); ``Detectron2COCO`` has 81 (background +
the 80 categories in increasing category-id order). :data:`TORCHVISION_CATEGORY_IDS`
and :data:`DETECTRON2_CATEGORY_IDS` map a predicted class id to the COCO
category id (for writing COCO results).

The class names and category-id maps are module constants, not Config fields:
a preset adds no field of its own, so its ``config.json`` loads back as a plain
:class:`~mrcnn.config.Config`.
"""

from __future__ import annotations

from mrcnn.config import Config

# torchvision's COCO_V1 category list (index = COCO category id; "N/A" = unused id).
TORCHVISION_COCO_CLASS_NAMES: tuple[str, ...] = (
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Predicted class id -> COCO category id (None for background and the "N/A" slots).
TORCHVISION_CATEGORY_IDS: tuple[int | None, ...] = tuple(
    None if (i == 0 or name == "N/A") else i for i, name in enumerate(TORCHVISION_COCO_CLASS_NAMES)
)

# Detectron2's contiguous ids: the 80 COCO categories in increasing id order.
DETECTRON2_CATEGORY_IDS: tuple[int | None, ...] = (None,) + tuple(
    i for i in TORCHVISION_CATEGORY_IDS if i is not None
)
DETECTRON2_COCO_CLASS_NAMES: tuple[str, ...] = ("BG",) + tuple(
    TORCHVISION_COCO_CLASS_NAMES[i] for i in DETECTRON2_CATEGORY_IDS[1:]
)




class _COCOInference(Config):
    """What both presets share: R50-FPN, 800/1333 per-image padding to /32, frozen BN."""

    BACKBONE = "resnet50"
    BACKBONE_NORM = "frozen_bn"
    BACKBONE_BASE_WIDTH = 64
    FPN_CHANNELS = 256
    BACKBONE_STRIDES = (4, 8, 16, 32, 64)
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = (0.5, 1.0, 2.0)
    RPN_NMS_THRESHOLD = 0.7
    RPN_BBOX_STD_DEV = (1.0, 1.0, 1.0, 1.0)
    PRE_NMS_LIMIT_INFERENCE = 1000
    POST_NMS_ROIS_INFERENCE = 1000
    BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = (28, 28)
    FPN_FC_LAYERS_SIZE = 1024
    MASK_HEAD_CONV_CHANNELS = 256
    MASK_HEAD_NUM_CONVS = 4
    ROI_CANONICAL_LEVEL = 4
    ROI_CANONICAL_SIZE = 224.0
    DETECTION_MIN_CONFIDENCE = 0.05
    DETECTION_NMS_THRESHOLD = 0.5
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MASK_THRESHOLD = 0.5
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1333
    IMAGE_RESIZE_MODE = "pad32"
    # Both trained the stem and the first residual stage frozen (torchvision
    # trainable_backbone_layers=3, Detectron2 FREEZE_AT=2); relevant for fine-tuning.
    FREEZE_BACKBONE_STAGES = 2
    # One image per forward pass: detect() on arbitrary sizes, as the sources' demos.
    IMAGES_PER_GPU = 1


class TorchvisionCOCO(_COCOInference):
    """torchvision ``maskrcnn_resnet50_fpn`` (COCO_V1: 37.9 box / 34.6 mask AP).

    Conventions (torchvision 0.28 ``models/detection``): RGB input normalised with
    the ImageNet mean/std; ResNet-50 "v1.5" (stride on the 3x3 conv); anchors
    rounded to integers, no offset, stride = padded input size // grid size;
    RPN 1000 pre-NMS per level / 1000 post-NMS at test, proposals smaller than
    1e-3 px dropped; MultiScaleRoIAlign with aligned=False and sampling ratio 2;
    detections: score > 0.05, boxes smaller than 1e-2 px dropped, class-wise NMS
    0.5, 100 per image.
    """

    NAME = "torchvision_coco"
    NUM_CLASSES = 91
    CLASS_NAMES = TORCHVISION_COCO_CLASS_NAMES
    STRIDE_IN_1X1 = False
    INPUT_CHANNEL_ORDER = "RGB"
    MEAN_PIXEL = (123.675, 116.28, 103.53)
    STD_PIXEL = (58.395, 57.12, 57.375)
    ROUND_ANCHORS = True
    ANCHOR_OFFSET = 0.0
    ANCHOR_STRIDE_FROM_GRID = True
    PRE_NMS_LIMIT_TRAINING = 2000
    POST_NMS_ROIS_TRAINING = 2000
    PROPOSAL_MIN_SIZE = 1e-3
    ROI_ALIGN_ALIGNED = False
    ROI_ALIGN_SAMPLING_RATIO = 2
    ROI_ALIGN_IMPLEMENTATION = "auto"  # sampling ratio 2: both implementations apply
    DETECTION_MIN_SIZE = 1e-2


class Detectron2COCO(_COCOInference):
    """Detectron2 ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_{1x,3x}`` (model zoo).

    Conventions (Detectron2's ``Base-RCNN-FPN.yaml``): BGR input, mean
    (103.53, 116.28, 123.675) and std 1 in 0-255 units; MSRA ResNet with the
    stride on the first 1x1 conv; anchors not rounded, offset 0, nominal strides
    4..64; RPN 1000 pre-NMS per level / 1000 post-NMS at test (2000 / 1000 in
    training), empty proposals dropped; ROIAlignV2 (aligned=True) with adaptive
    sampling (ratio 0, which needs the custom RoIAlign op); detections: score >
    0.05, class-wise NMS 0.5, 100 per image, no size filter.

    Not reproduced: Detectron2 resizes the uint8 image with PIL and rounds the new
    size (``int(x + 0.5)``) where this project interpolates in float and floors it
    (torchvision's rule); the level assignment eps (1e-8 inside the log vs 1e-6).
    """

    NAME = "detectron2_coco"
    NUM_CLASSES = 81
    CLASS_NAMES = DETECTRON2_COCO_CLASS_NAMES
    STRIDE_IN_1X1 = True
    INPUT_CHANNEL_ORDER = "BGR"
    MEAN_PIXEL = (103.53, 116.28, 123.675)  # B, G, R
    STD_PIXEL = (1.0, 1.0, 1.0)
    ROUND_ANCHORS = False
    ANCHOR_OFFSET = 0.0
    ANCHOR_STRIDE_FROM_GRID = False
    PRE_NMS_LIMIT_TRAINING = 2000
    POST_NMS_ROIS_TRAINING = 1000
    # Detectron2 keeps proposals with width and height > 0; ">= 1e-6" here.
    PROPOSAL_MIN_SIZE = 1e-6
    ROI_ALIGN_ALIGNED = True
    ROI_ALIGN_SAMPLING_RATIO = 0  # adaptive: ceil(roi_size / output_size) samples per bin
    ROI_ALIGN_IMPLEMENTATION = "custom"
    DETECTION_MIN_SIZE = 0.0


PRESETS = {"torchvision": TorchvisionCOCO, "detectron2": Detectron2COCO}


class FromScratch(Config):
    """Recipe for training without any pretrained weights (random initialisation).

    Subclass it for your data (NAME, NUM_CLASSES, CLASS_NAMES, image size, ...); it
    carries only what a start from random weights needs, which differs from the
    fine-tuning recipe (the Config defaults with ``config_for_start``):

    * ``BACKBONE_NORM = "gn"``: GroupNorm (8 groups, so that narrow layers divide),
      trained with the rest; frozen batch norm keeps random statistics, trainable
      batch norm is noisy at 2 images per GPU.
    * ``FREEZE_BACKBONE_STAGES = 0``: nothing frozen (frozen random stages never learn).
    * ``WARMUP_STEPS = 10`` from ``WARMUP_FACTOR = 0.1``: the default 1000-step warm-up
      is for long pretrained runs and would outlast a short plan.
    * ``GRADIENT_CLIP_NORM = 10``: random heads give large early gradients; without
      clipping the first steps after warm-up can reach a non-finite loss.
    * ``LEARNING_RATE = 0.02`` per ``LR_REFERENCE_BATCH = 16`` images (SGD, momentum
      0.9): 0.0025 at 2 images per step.
    * ``BACKBONE = "resnet18"``: a short run on a small dataset; use a deeper one
      for a long run on a large dataset.

    Set ``TOTAL_STEPS`` (or pass ``epochs`` x ``steps_per_epoch`` to ``fit``) so that
    the x0.1 decays land at 2/3 and 8/9 of the run. README ("Use it on your own data")
    shows it learning 10 nuclei images at 256 px in 60 steps.
    """

    BACKBONE = "resnet18"
    BACKBONE_NORM = "gn"
    GROUP_NORM_GROUPS = 8
    FREEZE_BACKBONE_STAGES = 0
    OPTIMIZER = "sgd"
    LEARNING_RATE = 0.02
    LR_REFERENCE_BATCH = 16
    WARMUP_STEPS = 10
    WARMUP_FACTOR = 0.1
    GRADIENT_CLIP_NORM = 10.0
