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


class TorchvisionCOCOv2(TorchvisionCOCO):
    """torchvision ``maskrcnn_resnet50_fpn_v2`` (COCO_V1: 47.4 box / 41.8 mask AP).

    torchvision's conventions (:class:`TorchvisionCOCO`) with v2's architecture
    (``models/detection/mask_rcnn.py``, PR pytorch/vision#5773): ResNet-50 with
    ``nn.BatchNorm2d`` (not frozen), FPN convs followed by BatchNorm (no bias), a
    two-conv RPN head (``RPNHead(conv_depth=2)``), the ``FastRCNNConvFCHead`` box head
    (4 x conv 256 + BN + ReLU, one FC 1024) and BatchNorm in the mask head; BN eps
    1e-5, momentum 0.1 (Keras 0.9). At inference every BN uses its running statistics.

    The weights were trained from scratch with large-scale jitter (LSJ), SyncBN,
    batch 64 and weight decay 4e-5 for 400 epochs; for fine-tuning this preset keeps
    the torchvision default of ``trainable_backbone_layers=3`` (stem + C2 frozen),
    with the BatchNorm layers in training mode elsewhere (see :class:`LSJRecipe` for
    the from-scratch recipe).
    """

    NAME = "torchvision_coco_v2"
    BACKBONE_NORM = "bn"
    FPN_NORM = "bn"
    RPN_HEAD_CONVS = 2
    BOX_HEAD = "4conv1fc"
    HEAD_NORM = "bn"


class Detectron2LSJ(Detectron2COCO):
    """Detectron2 new baselines ``mask_rcnn_R_{50,101}_FPN_{100,200,400}ep_LSJ`` (R50 400ep:
    47.4 box / 42.5 mask AP; R101 400ep: 48.9 / 43.7). ``BACKBONE="resnet101"`` for R101.

    Detectron2's conventions (:class:`Detectron2COCO`: BGR, mean in 0-255 with std 1, MSRA
    stride in the 1x1 conv, ROIAlignV2, 800/1333 at test; the LSJ configs inherit them
    from ``configs/common/models/mask_rcnn_fpn.py``) with the new baselines' architecture
    (``configs/new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``): SyncBN in the backbone
    (stem and stages) and the FPN, ``NaiveSyncBatchNorm(stats_mode="N")`` in the 4conv1fc
    box head and the mask head ("syncbn" here: :class:`mrcnn.layers.norm.RoIBatchNorm`
    weighs every RoI of the global batch alike, as stats_mode "N"), a two-conv RPN head
    (``conv_dims=[-1, -1]``), nothing frozen (``freeze_at=0``).

    The training recipe (LSJ, batch 64, lr 0.1, weight decay 4e-5) is :class:`LSJRecipe`.
    """

    NAME = "detectron2_lsj"
    BACKBONE_NORM = "syncbn"
    FPN_NORM = "syncbn"
    RPN_HEAD_CONVS = 2
    BOX_HEAD = "4conv1fc"
    HEAD_NORM = "syncbn"
    FREEZE_BACKBONE_STAGES = 0


class LSJRecipe(Detectron2LSJ):
    """The large-scale-jitter recipe of Detectron2's new baselines (and of torchvision v2),
    for training from scratch on many GPUs (``mrcnn train --init none``).

    From ``configs/new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``: ``ResizeScale`` 0.1-2.0
    of a 1024 x 1024 target, ``FixedSizeCrop`` 1024 (padded to 1024 x 1024) and a
    horizontal flip; SyncBN everywhere; global batch 64; SGD momentum 0.9, lr 0.1,
    weight decay 4e-5, none on norm parameters (``weight_decay_norm=0``); 100 epochs =
    184375 steps, x0.1 at 163889 and 177546, linear warm-up over 500 steps from 0.067
    (the 200 / 400 epoch schedules multiply every step count by 2 / 4). Detectron2 also
    trains it with AMP (``MIXED_PRECISION="float16"`` here, on GPUs).

    ``IMAGES_PER_GPU x GPU_COUNT`` (x workers) must make the global batch of 64 for the
    learning rate to be the reference's: with another batch LR_REFERENCE_BATCH=64 scales
    it linearly. The references reach R50: 44.6 / 46.3 / 47.4 box AP (40.3 / 41.7 / 42.5
    mask AP) at 100 / 200 / 400 epochs; this recipe was not run to completion in this
    project (docs/weights.md).
    """

    NAME = "lsj"
    IMAGE_MIN_DIM = 1024  # training: the LSJ target (the jitter draws 0.1-2.0 of it)
    IMAGE_MAX_DIM = 1024
    IMAGE_RESIZE_MODE = "square"
    TRAIN_SCALE_JITTER = (0.1, 2.0)
    TRAIN_CROP_SIZE = 1024
    TRAIN_PADDING = "square"
    TRAIN_FLIP_PROB = 0.5
    IMAGES_PER_GPU = 8
    GPU_COUNT = 8
    LEARNING_RATE = 0.1
    LR_REFERENCE_BATCH = 64
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 4e-5
    WEIGHT_DECAY_NORM = 0.0
    LR_SCHEDULE = "step"
    TOTAL_STEPS = 184375
    LR_STEPS = (163889, 177546)
    WARMUP_STEPS = 500
    WARMUP_FACTOR = 0.067


PRESETS["torchvision_v2"] = TorchvisionCOCOv2
PRESETS["detectron2_lsj"] = Detectron2LSJ


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
    * ``OPTIMIZER = "adamw"``, ``LEARNING_RATE = 8e-3`` per ``LR_REFERENCE_BATCH = 16``
      images (1e-3 at 2 images per step), ``WEIGHT_DECAY = 1e-4`` (decoupled): from
      random weights Adam's per-parameter steps learn far faster in a short run than
      the paper's SGD, which is tuned for pretrained starts (measured on the README's
      nuclei example, 60 steps, segm AP50 on 10 held-out images, one run each:
      AdamW 1e-3 0.41, AdamW 2e-3 0.29; SGD 0.0025 0.10, 0.01 0.02, 0.02 0.15).
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
    OPTIMIZER = "adamw"
    LEARNING_RATE = 8e-3
    LR_REFERENCE_BATCH = 16
    WEIGHT_DECAY = 1e-4
    WARMUP_STEPS = 10
    WARMUP_FACTOR = 0.1
    GRADIENT_CLIP_NORM = 10.0


# matterport's COCO class names (its samples/coco/coco.py order: background + the 80
# categories in increasing category-id order, as Detectron2's).
MATTERPORT_COCO_CLASS_NAMES: tuple[str, ...] = (
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


class MatterportConfig(Config):
    """matterport/Mask_RCNN's model (its ``mrcnn/model.py`` at the defaults of its
    ``Config``), so that its Keras 2 ``.h5`` weights (``mask_rcnn_coco.h5`` and every
    model trained with matterport) give its detections here. Subclass it as you
    subclassed matterport's Config (NAME, NUM_CLASSES, IMAGE_*, ...).

    Each difference from torchvision's Mask R-CNN is a stage option (docs/matterport.md):

    * backbone: ResNet-101, the stride on each stage's first 1x1 conv
      (``STRIDE_IN_1X1``), TensorFlow "same" padding of the stem max-pool
      (``STEM_POOL_PADDING``); its conv biases and Keras' batch-norm epsilon 1e-3 are
      folded into the frozen batch norm when the weights are read
      (:mod:`mrcnn.checkpoint.keras2`), which computes the same;
    * RPN: a 512-wide head (``RPN_HEAD_CHANNELS``); its 2-way softmax becomes the one
      logit l1 - l0 when read (softmax(l)[1] = sigmoid(l1 - l0)); deltas scaled by
      ``RPN_BBOX_STD_DEV``; anchors at i * stride, not rounded, ratios listed as
      height/width here (matterport's width/height 0.5, 1, 2 in the same order);
      proposals the top 6000 of all levels with one NMS (``PROPOSAL_SELECTION``);
    * boxes in matterport's normalised frame scaled to pixels (``BOX_COORDINATES``);
    * RoI pooling by ``crop_and_resize`` with matterport's level rule (``ROI_POOLER``);
    * box head: matterport's 7x7 valid conv + BN and 1x1 conv + BN are the two FC layers
      of the "2fc" head with the BN folded in when read; the mask head's BN likewise;
    * detection: each RoI's best class (``DETECTION_CLASS_RULE``), kept at score >= 0.7,
      class-wise NMS at 0.3;
    * input: "square" resizing to 800..1024, mean subtraction only (``STD_PIXEL`` 1), the
      padding black before it (``INPUT_PADDING``).

    Training from it follows matterport's recipe: SGD at ``LEARNING_RATE`` 0.001 used as
    given (``LR_REFERENCE_BATCH`` None), momentum 0.9, weight decay 1e-4, gradient
    clipping 5, no warm-up.
    """

    NAME = "matterport"
    NUM_CLASSES = 1 + 80
    BACKBONE = "resnet101"
    STRIDE_IN_1X1 = True
    STEM_POOL_PADDING = "same"
    FPN_CHANNELS = 256
    RPN_HEAD_CHANNELS = 512
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = (2.0, 1.0, 0.5)  # height / width: matterport's width/height (0.5, 1, 2)
    ROUND_ANCHORS = False
    ANCHOR_OFFSET = 0.0
    ANCHOR_STRIDE_FROM_GRID = False
    RPN_BBOX_STD_DEV = (0.1, 0.1, 0.2, 0.2)
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT_TRAINING = 6000
    PRE_NMS_LIMIT_INFERENCE = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000
    PROPOSAL_SELECTION = "global"
    PROPOSAL_MIN_SIZE = 0.0
    BOX_COORDINATES = "matterport"
    ROI_POOLER = "crop_and_resize"
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    FPN_FC_LAYERS_SIZE = 1024
    DETECTION_CLASS_RULE = "argmax"
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_SIZE = 0.0
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_RESIZE_MODE = "square"
    MEAN_PIXEL = (123.7, 116.8, 103.9)
    STD_PIXEL = (1.0, 1.0, 1.0)
    INPUT_PADDING = "raw_zero"
    MAX_GT_INSTANCES = 100
    MINI_MASK_SHAPE = (56, 56)
    LEARNING_RATE = 0.001
    LR_REFERENCE_BATCH = None
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 1e-4
    GRADIENT_CLIP_NORM = 5.0
    WARMUP_STEPS = 0


def has_matterport_architecture(config: Config) -> bool:
    """Whether ``config`` builds matterport's model (the stage options of :class:`MatterportConfig`)."""
    return config.BOX_COORDINATES == "matterport" and config.ROI_POOLER == "crop_and_resize"


def with_matterport_architecture(config: Config) -> Config:
    """``config`` on :class:`MatterportConfig`'s base: a Config whose fields are the ones
    ``config``'s own classes (and its instance) set, and :class:`MatterportConfig`'s
    (matterport's defaults) for every field they leave at :class:`~mrcnn.config.Config`'s.

    What a matterport script's model becomes when it loads a matterport ``.h5``
    (:meth:`mrcnn.compat.matterport.MatterportMaskRCNN.load_weights`): its Config subclass
    sets NAME, NUM_CLASSES, IMAGES_PER_GPU, ...; matterport's defaults fill the rest, as in
    matterport. Returns ``config`` itself when it already has that architecture.
    """
    if has_matterport_architecture(config):
        return config
    cls = type(config)
    # Python's method order puts cls's own classes first, then MatterportConfig, then Config.
    combined = type(cls.__name__, (cls, MatterportConfig), {"__module__": cls.__module__,
                                                            "__qualname__": f"{cls.__qualname__}[matterport]"})
    overrides = {k: v for k, v in vars(config).items() if k.isupper()}
    return combined(**overrides)
