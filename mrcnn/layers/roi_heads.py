"""The RoI heads: box head (2 FC + class/box predictors), mask head (FCN), keypoint head,
and the ``RoIHeads`` stage that samples RoIs, runs the heads, computes their losses
and post-processes detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from mrcnn.layers.box_coder import BoxCoder
from mrcnn.layers.conv import Conv3x3
from mrcnn.layers.detection import Detections, detect_boxes
from mrcnn.layers.norm import STAGE_NORMS, make_stage_norm
from mrcnn.layers.pooler import RoIPooler, pooler_settings
from mrcnn.layers.precision import dtype_policy_scope, policy_name, to_float32
from mrcnn.layers.targets import RoITargets, roi_targets
from mrcnn.ops import losses
from mrcnn.ops.keypoints import heatmaps_to_keypoints

if TYPE_CHECKING:
    from mrcnn.config import Config

# Config.BOX_HEAD: "2fc" (v1: 2 FC of FPN_FC_LAYERS_SIZE), "4conv1fc" (v2 / new baselines).
BOX_HEADS = ("2fc", "4conv1fc")

# He init, fan-out (torchvision's mask and keypoint heads).
def _he_fan_out() -> keras.initializers.Initializer:
    # A new instance per layer, made when the layer is: an unseeded Keras initializer
    # draws its seed when constructed (a module-level one would be seeded at import,
    # before keras.utils.set_random_seed, so runs would not be reproducible) and then
    # returns the same values at every call (every layer sharing it would start equal).
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _relu_conv_stack(channels: int, count: int, prefix: str) -> list[keras.layers.Layer]:
    """``count`` x (3x3 conv, same padding, + ReLU), named ``{prefix}1..{prefix}{count}``."""
    return [
        Conv3x3(channels, activation="relu", kernel_initializer=_he_fan_out(), name=f"{prefix}{i + 1}")
        for i in range(count)
    ]


def _per_roi(fcn, pooled: tf.Tensor) -> tf.Tensor:
    """Apply an image-to-image ``fcn`` to every RoI: [B, R, h, w, C] -> [B, R, h', w', C']."""
    shape = tf.shape(pooled)
    x = tf.reshape(pooled, tf.concat([[-1], shape[2:]], axis=0))
    # One zero RoI rides along: TensorFlow's CPU Conv2D returns its *input* for an
    # empty batch, so a channel-changing conv (the logits) would break a call with
    # no RoIs at all (an image without detections); a batch of one never does.
    x = tf.concat([x, tf.zeros(tf.concat([[1], shape[2:]], axis=0), x.dtype)], axis=0)
    x = fcn(tf.ensure_shape(x, [None, *pooled.shape[2:]]))[:-1]
    return tf.reshape(x, tf.concat([shape[:2], tf.shape(x)[1:]], axis=0))


def _per_roi_masked(fcn, pooled: tf.Tensor, valid: tf.Tensor | None) -> tf.Tensor:
    """:func:`_per_roi` for an ``fcn(x, mask)`` whose norms take the RoIs' validity:
    pooled [B, R, h, w, C], valid [B, R] bool (None: all) -> [B, R, h', w', C'].
    The zero RoI that rides along is never valid."""
    shape = tf.shape(pooled)
    x = tf.reshape(pooled, tf.concat([[-1], shape[2:]], axis=0))
    x = tf.concat([x, tf.zeros(tf.concat([[1], shape[2:]], axis=0), x.dtype)], axis=0)
    mask = tf.ones([shape[0] * shape[1]], tf.bool) if valid is None else tf.reshape(valid, [-1])
    mask = tf.concat([mask, [False]], axis=0)
    x = fcn(tf.ensure_shape(x, [None, *pooled.shape[2:]]), mask)[:-1]
    return tf.reshape(x, tf.concat([shape[:2], tf.shape(x)[1:]], axis=0))


def _box_predictors(num_classes: int) -> tuple[keras.layers.Dense, keras.layers.Dense]:
    """``cls_score`` (K+1 logits) and ``bbox_pred`` (class-specific deltas), torchvision's init."""
    cls_score = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="cls_score")
    bbox_pred = keras.layers.Dense(
        num_classes * 4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="bbox_pred")
    return cls_score, bbox_pred


def _predict(cls_score, bbox_pred, x: tf.Tensor, shape: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """x [B, R, F] -> (float32 logits [B, R, K+1], float32 deltas [B, R, K+1, 4])."""
    logits = to_float32(cls_score(x))
    deltas = tf.reshape(to_float32(bbox_pred(x)), [shape[0], shape[1], num_classes, 4])
    return logits, deltas


def _norm_relu_convs(channels: int, count: int, prefix: str, norm: str | None, gn_groups: int):
    """``count`` x 3x3 conv (no bias when normed) and their norms (None without):
    convs ``{prefix}1..``, norms ``{prefix}1_norm..``; the caller applies conv, norm, ReLU."""
    convs = [Conv3x3(channels, use_bias=norm is None, kernel_initializer=_he_fan_out(), name=f"{prefix}{i + 1}")
             for i in range(count)]
    norms = [make_stage_norm(norm, f"{prefix}{i + 1}_norm", gn_groups, rois=True) for i in range(count)]
    return convs, norms


def _apply_norm(norm, x, training, mask):
    if isinstance(norm, keras.layers.GroupNormalization):  # per RoI: no batch statistics, no mask
        return norm(x)
    return norm(x, training=training, valid=mask)


@keras.saving.register_keras_serializable(package="mrcnn")
class BoxHead(keras.layers.Layer):
    """Flatten -> FC -> ReLU -> FC -> ReLU -> class logits and class-specific deltas.

    Input: [B, R, 7, 7, C] pooled features. Output: (logits [B, R, K+1],
    deltas [B, R, K+1, 4] as (dy, dx, dh, dw) scaled by the box-head weights).
    The flatten order is (h, w, c) — weights converted from PyTorch (c, h, w)
    must be permuted (see ``mrcnn/convert.py``).
    """

    def __init__(self, num_classes: int, fc_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_size = fc_size
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # torch Linear default
        self.fc6 = keras.layers.Dense(fc_size, activation="relu", kernel_initializer=init, name="fc6")
        self.fc7 = keras.layers.Dense(fc_size, activation="relu", kernel_initializer=init, name="fc7")
        self.cls_score, self.bbox_pred = _box_predictors(num_classes)

    def build(self, input_shape):
        flat_size = input_shape[2] * input_shape[3] * input_shape[4]
        self.fc6.build((None, None, flat_size))
        for dense in (self.fc7, self.cls_score, self.bbox_pred):
            dense.build((None, None, self.fc_size))

    def call(self, pooled):
        shape = tf.shape(pooled)
        flat_size = pooled.shape[2] * pooled.shape[3] * pooled.shape[4]
        x = tf.reshape(pooled, [shape[0], shape[1], flat_size])
        x = self.fc7(self.fc6(x))
        logits, deltas = _predict(self.cls_score, self.bbox_pred, x, shape, self.num_classes)
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_size": self.fc_size}


@keras.saving.register_keras_serializable(package="mrcnn")
class ConvFCBoxHead(keras.layers.Layer):
    """``num_convs`` x (3x3 conv -> norm -> ReLU) -> flatten -> FC -> ReLU -> predictors.

    torchvision's ``FastRCNNConvFCHead`` (maskrcnn_resnet50_fpn_v2: 4 convs of 256 with
    BatchNorm, one FC of 1024) and Detectron2's ``FastRCNNConvFCHead`` ("4conv1fc",
    new baselines: NaiveSyncBN) — ``Config.BOX_HEAD = "4conv1fc"``. Convs ``conv1..``
    (no bias when normed), norms ``conv1_norm..``, the FC ``fc6``, predictors
    ``cls_score`` / ``bbox_pred`` as :class:`BoxHead`'s.

    Input: [B, R, 7, 7, C] pooled features (and, for training-mode batch norm,
    ``valid`` [B, R] bool: padding slots do not enter the statistics). Output:
    (logits [B, R, K+1], deltas [B, R, K+1, 4]) as :class:`BoxHead`. The flatten
    order is (h, w, c) (converted weights are permuted from PyTorch's (c, h, w)).
    """

    def __init__(self, num_classes: int, conv_channels: int = 256, num_convs: int = 4, fc_size: int = 1024,
                 norm: str | None = None, gn_groups: int = 32, **kwargs):
        super().__init__(**kwargs)
        if norm not in STAGE_NORMS:
            raise ValueError(f"ConvFCBoxHead norm must be one of {STAGE_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.conv_channels = conv_channels
        self.num_convs = num_convs
        self.fc_size = fc_size
        self.norm = norm
        self.gn_groups = gn_groups
        self.convs, self.norms = _norm_relu_convs(conv_channels, num_convs, "conv", norm, gn_groups)
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # torch Linear default
        self.fc6 = keras.layers.Dense(fc_size, activation="relu", kernel_initializer=init, name="fc6")
        self.cls_score, self.bbox_pred = _box_predictors(num_classes)

    def build(self, input_shape):
        _, _, h, w, c = input_shape
        for conv, norm in zip(self.convs, self.norms):
            conv.build((None, h, w, c))
            c = self.conv_channels
            if norm is not None:
                norm.build((None, h, w, c))
        self.fc6.build((None, None, h * w * c))
        for dense in (self.cls_score, self.bbox_pred):
            dense.build((None, None, self.fc_size))

    def call(self, pooled, training=None, valid=None):
        shape = tf.shape(pooled)

        def fcn(x, mask):
            for conv, norm in zip(self.convs, self.norms):
                x = conv(x)
                x = tf.nn.relu(x if norm is None else _apply_norm(norm, x, training, mask))
            return x

        x = _per_roi_masked(fcn, pooled, valid)
        flat_size = x.shape[2] * x.shape[3] * x.shape[4]
        x = self.fc6(tf.reshape(x, [shape[0], shape[1], flat_size]))
        logits, deltas = _predict(self.cls_score, self.bbox_pred, x, shape, self.num_classes)
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "conv_channels": self.conv_channels,
                "num_convs": self.num_convs, "fc_size": self.fc_size, "norm": self.norm,
                "gn_groups": self.gn_groups}


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskHead(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv.

    Input: [B, R, 14, 14, C]. Output: [B, R, 28, 28, K+1] mask logits (one sigmoid
    mask per class; the loss and inference pick the channel of the class).

    ``norm`` (``Config.HEAD_NORM``): each 3x3 conv is conv (no bias) -> norm -> ReLU
    (torchvision's ``MaskRCNNHeads(norm_layer=BatchNorm2d)``, Detectron2's
    ``MaskRCNNConvUpsampleHead(conv_norm=...)``); norms ``mask_fcn{i}_norm``. Training-mode
    batch norm then takes ``valid`` [B, R] (the RoIs that count).
    """

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4, norm: str | None = None,
                 gn_groups: int = 32, **kwargs):
        super().__init__(**kwargs)
        if norm not in STAGE_NORMS:
            raise ValueError(f"MaskHead norm must be one of {STAGE_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.norm = norm
        self.gn_groups = gn_groups
        if norm is None:
            self.convs = _relu_conv_stack(channels, num_convs, "mask_fcn")
            self.norms = [None] * num_convs
        else:
            self.convs, self.norms = _norm_relu_convs(channels, num_convs, "mask_fcn", norm, gn_groups)
        self.deconv = keras.layers.Conv2DTranspose(
            channels, 2, strides=2, activation="relu", kernel_initializer=_he_fan_out(), name="conv5_mask"
        )
        self.logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=_he_fan_out(), name="mask_fcn_logits")

    def build(self, input_shape):
        _, _, h, w, c = input_shape
        for conv, norm in zip(self.convs, self.norms):
            conv.build((None, h, w, c))
            c = self.channels
            if norm is not None:
                norm.build((None, h, w, c))
        self.deconv.build((None, h, w, c))
        self.logits.build((None, 2 * h, 2 * w, self.channels))

    def call(self, pooled, training=None, valid=None):
        if self.norm is None:
            return to_float32(_per_roi(self._fcn, pooled))

        def fcn(x, mask):
            for conv, norm in zip(self.convs, self.norms):
                x = tf.nn.relu(_apply_norm(norm, conv(x), training, mask))
            return self.logits(self.deconv(x))

        return to_float32(_per_roi_masked(fcn, pooled, valid))

    def _fcn(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.logits(self.deconv(x))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "num_convs": self.num_convs,
            "norm": self.norm,
            "gn_groups": self.gn_groups,
        }


@keras.saving.register_keras_serializable(package="mrcnn")
class KeypointHead(keras.layers.Layer):
    """Keypoint R-CNN head (paper section 5; torchvision's KeypointRCNNHeads + Predictor).

    num_convs x (3x3 conv + ReLU) -> 4x4 stride-2 transposed conv to K channels
    (x2) -> bilinear x2 (half-pixel centres, = torch align_corners=False).

    Input: [B, R, 14, 14, C] pooled features. Output: [B, R, 56, 56, K] heatmap
    logits, one spatial softmax per keypoint (row = y, column = x of the RoI's
    56x56 grid; see ``mrcnn/ops/keypoints.py``).
    """

    def __init__(self, num_keypoints: int, channels: int = 512, num_convs: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.num_keypoints = num_keypoints
        self.channels = channels
        self.num_convs = num_convs
        self.convs = _relu_conv_stack(channels, num_convs, "conv_fcn")
        # kernel 4, stride 2, "same" = torch padding 1: exactly x2.
        self.deconv = keras.layers.Conv2DTranspose(
            num_keypoints, 4, strides=2, padding="same", kernel_initializer=_he_fan_out(), name="kps_score_lowres"
        )

    def build(self, input_shape):
        _, _, h, w, c = input_shape
        for conv in self.convs:
            conv.build((None, h, w, c))
            c = self.channels
        self.deconv.build((None, h, w, c))

    def call(self, pooled):
        return _per_roi(self._fcn, pooled)

    def _fcn(self, x):
        for conv in self.convs:
            x = conv(x)
        x = to_float32(self.deconv(x))  # the x2 bilinear and the softmax in float32
        size = 2 * x.shape[1]
        return tf.image.resize(x, [size, size], method="bilinear", antialias=False)

    def get_config(self):
        return {
            **super().get_config(),
            "num_keypoints": self.num_keypoints,
            "channels": self.channels,
            "num_convs": self.num_convs,
        }


@keras.saving.register_keras_serializable(package="mrcnn")
class RoIHeads(keras.layers.Layer):
    """The second stage (torchvision's ``RoIHeads``, Detectron2's ``StandardROIHeads``).

    Owns the RoI sampling and targets, a pooler and a head per branch (box; mask
    with ``mask_head``; keypoints with ``num_keypoints`` > 0), their losses and
    the inference post-processing. The per-branch steps (:meth:`box_forward`,
    :meth:`mask_logits`, :meth:`keypoint_heatmaps`) are shared by training and
    inference.

    ``layer(features, proposals, proposal_valid, image_sizes, targets=None)``:
    features one [B, h, w, C] map per level; proposals [B, P, 4] (y1, x1, y2, x2)
    input pixels with validity [B, P]; image_sizes [B, 2] valid (h, w).
    Returns ``(detections, losses)``:

    - inference (``targets`` None): detections as :meth:`MaskRCNN.call` documents
      (boxes, scores, class_ids, num_detections, masks, keypoints), losses {};
    - training (``targets`` = {"gt_boxes", "gt_class_ids", "gt_masks",
      "gt_keypoints"}, see ``mrcnn/model.py``): detections {}, losses
      "class_loss", "box_loss" and "mask_loss" / "keypoint_loss" per branch.

    ``xla_compatible`` (``Config.JIT_COMPILE``): the training branch in a form XLA
    compiles: static shapes (the mask and keypoint branches run on all
    ``batch_size_per_image * positive_fraction`` leading slots, not on the batch's
    positive count; the same losses) and the mask targets cropped with the gather
    RoIAlign (XLA has no CropAndResize kernel).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        fc_size: int = 1024,
        pool_size: int = 7,
        strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        aligned: bool = True,
        canonical_level: int = 4,
        canonical_size: float = 224.0,
        roi_align_implementation: str = "auto",
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        positive_iou: float = 0.5,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        box_loss_beta: float = 1.0 / 9.0,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        min_size: float = 1e-2,
        mask_head: bool = True,
        mask_pool_size: int = 14,
        mask_conv_channels: int = 256,
        mask_num_convs: int = 4,
        mask_shape: Sequence[int] = (28, 28),
        mini_mask: bool = True,
        mask_target_threshold: float = 0.5,
        mask_min_score: float = 0.0,
        num_keypoints: int = 0,
        keypoint_pool_size: int = 14,
        keypoint_conv_channels: int = 512,
        keypoint_num_convs: int = 8,
        keypoint_heatmap_size: int = 56,
        head_dtype: str = "float32",
        mask_class_pick: str = "batched",
        box_head: str = "2fc",
        head_norm: str | None = None,
        box_conv_channels: int = 256,
        gn_groups: int = 32,
        xla_compatible: bool = False,
        roi_pooler: str = "roi_align",
        detection_class_rule: str = "per_class",
        box_coordinates: str = "pixels",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if detection_class_rule not in ("per_class", "argmax"):
            raise ValueError(f"detection_class_rule must be 'per_class' or 'argmax', got {detection_class_rule!r}")
        if box_coordinates not in ("pixels", "matterport"):
            raise ValueError(f"box_coordinates must be 'pixels' or 'matterport', got {box_coordinates!r}")
        if box_head not in BOX_HEADS:
            raise ValueError(f"box_head must be one of {BOX_HEADS}, got {box_head!r}")
        if head_norm not in STAGE_NORMS:
            raise ValueError(f"head_norm must be one of {STAGE_NORMS}, got {head_norm!r}")
        if box_head == "2fc" and head_norm is not None:
            raise ValueError("head_norm needs the conv box head (box_head='4conv1fc'); the 2fc head has no norm")
        self.settings = {
            "box_head": box_head, "head_norm": head_norm, "box_conv_channels": int(box_conv_channels),
            "gn_groups": int(gn_groups),
            "num_classes": int(num_classes), "fc_size": int(fc_size), "pool_size": int(pool_size),
            "strides": [int(s) for s in strides], "sampling_ratio": int(sampling_ratio),
            "aligned": bool(aligned), "canonical_level": int(canonical_level),
            "canonical_size": float(canonical_size), "roi_align_implementation": roi_align_implementation,
            "batch_size_per_image": int(batch_size_per_image), "positive_fraction": float(positive_fraction),
            "positive_iou": float(positive_iou), "box_weights": [float(w) for w in box_weights],
            "box_loss_beta": float(box_loss_beta), "score_threshold": float(score_threshold),
            "nms_threshold": float(nms_threshold), "detections_per_image": int(detections_per_image),
            "min_size": float(min_size), "mask_head": bool(mask_head), "mask_pool_size": int(mask_pool_size),
            "mask_conv_channels": int(mask_conv_channels), "mask_num_convs": int(mask_num_convs),
            "mask_shape": [int(s) for s in mask_shape], "mini_mask": bool(mini_mask),
            "mask_target_threshold": float(mask_target_threshold), "mask_min_score": float(mask_min_score),
            "num_keypoints": int(num_keypoints),
            "keypoint_pool_size": int(keypoint_pool_size), "keypoint_conv_channels": int(keypoint_conv_channels),
            "keypoint_num_convs": int(keypoint_num_convs), "keypoint_heatmap_size": int(keypoint_heatmap_size),
            "head_dtype": str(head_dtype), "mask_class_pick": str(mask_class_pick),
            "xla_compatible": bool(xla_compatible), "roi_pooler": roi_pooler,
            "detection_class_rule": detection_class_rule, "box_coordinates": box_coordinates,
        }
        if mask_class_pick not in CLASS_PICKS:
            raise ValueError(f"mask_class_pick must be one of {tuple(CLASS_PICKS)}, got {mask_class_pick!r}")
        pooling = {
            "strides": strides, "sampling_ratio": sampling_ratio, "aligned": aligned,
            "canonical_level": canonical_level, "canonical_size": canonical_size,
            "implementation": roi_align_implementation, "method": roi_pooler,
        }
        # Positives come first in the sample and number at most this many, so the
        # mask and keypoint branches only need these slots in training.
        self.num_mask_rois = int(batch_size_per_image * positive_fraction)
        self.box_coder = BoxCoder(box_weights, name="box_coder")
        self.box_pooler = RoIPooler(pool_size, name="box_pooler", **pooling)
        self.mask_pooler = self.mask_head = None
        self.keypoint_pooler = self.keypoint_head = None
        if mask_head:
            self.mask_pooler = RoIPooler(mask_pool_size, name="mask_pooler", **pooling)
        if num_keypoints:
            self.keypoint_pooler = RoIPooler(keypoint_pool_size, name="keypoint_pooler", **pooling)
        # The heads compute under head_dtype (Config.MIXED_PRECISION); the poolers and this
        # layer stay float32, so RoIAlign always samples float32 features at float32 boxes.
        with dtype_policy_scope(head_dtype):
            if box_head == "2fc":
                self.box_head = BoxHead(num_classes, fc_size, name="box_head")
            else:
                self.box_head = ConvFCBoxHead(num_classes, box_conv_channels, 4, fc_size, norm=head_norm,
                                              gn_groups=gn_groups, name="box_head")
            if mask_head:
                self.mask_head = MaskHead(num_classes, mask_conv_channels, mask_num_convs, norm=head_norm,
                                          gn_groups=gn_groups, name="mask_head")
            if num_keypoints:
                self.keypoint_head = KeypointHead(
                    num_keypoints, keypoint_conv_channels, keypoint_num_convs, name="keypoint_head"
                )

    @classmethod
    def from_model_config(cls, config: Config, **kwargs) -> RoIHeads:
        pooling = pooler_settings(config)
        return cls(
            num_classes=config.NUM_CLASSES,
            fc_size=config.FPN_FC_LAYERS_SIZE,
            pool_size=config.POOL_SIZE,
            strides=pooling["strides"],
            sampling_ratio=pooling["sampling_ratio"],
            aligned=pooling["aligned"],
            canonical_level=pooling["canonical_level"],
            canonical_size=pooling["canonical_size"],
            roi_align_implementation=pooling["implementation"],
            batch_size_per_image=config.TRAIN_ROIS_PER_IMAGE,
            positive_fraction=config.ROI_POSITIVE_RATIO,
            positive_iou=config.ROI_POSITIVE_IOU,
            box_weights=config.BBOX_REG_WEIGHTS,
            box_loss_beta=config.BOX_LOSS_BETA,
            score_threshold=config.DETECTION_MIN_CONFIDENCE,
            nms_threshold=config.DETECTION_NMS_THRESHOLD,
            detections_per_image=config.DETECTION_MAX_INSTANCES,
            min_size=config.DETECTION_MIN_SIZE,
            mask_head=config.MASK_HEAD,
            mask_pool_size=config.MASK_POOL_SIZE,
            mask_conv_channels=config.MASK_HEAD_CONV_CHANNELS,
            mask_num_convs=config.MASK_HEAD_NUM_CONVS,
            mask_shape=config.MASK_SHAPE,
            mini_mask=config.MINI_MASK_SHAPE is not None,
            mask_target_threshold=config.MASK_TARGET_THRESHOLD,
            mask_min_score=config.DETECTION_MASK_MIN_SCORE,
            num_keypoints=config.NUM_KEYPOINTS,
            keypoint_pool_size=config.KEYPOINT_POOL_SIZE,
            keypoint_conv_channels=config.KEYPOINT_HEAD_CONV_CHANNELS,
            keypoint_num_convs=config.KEYPOINT_HEAD_NUM_CONVS,
            keypoint_heatmap_size=config.KEYPOINT_HEATMAP_SIZE,
            head_dtype=policy_name(config.MIXED_PRECISION),
            mask_class_pick=config.MASK_CLASS_PICK,
            box_head=config.BOX_HEAD,
            head_norm=config.HEAD_NORM,
            box_conv_channels=config.FPN_CHANNELS,  # the references' 256 = FPN width (docs/design.md)
            gn_groups=config.GROUP_NORM_GROUPS,
            xla_compatible=config.JIT_COMPILE,
            roi_pooler=pooling["method"],
            detection_class_rule=config.DETECTION_CLASS_RULE,
            box_coordinates=config.BOX_COORDINATES,
            **kwargs,
        )

    def build(self, features_shape):
        channels = features_shape[0][-1]
        s = self.settings
        self.box_head.build((None, None, s["pool_size"], s["pool_size"], channels))
        if self.mask_head is not None:
            self.mask_head.build((None, None, s["mask_pool_size"], s["mask_pool_size"], channels))
        if self.keypoint_head is not None:
            k = s["keypoint_pool_size"]
            self.keypoint_head.build((None, None, k, k, channels))

    # ----- per-branch steps (training and inference) ----------------------------------
    def box_forward(self, features, rois: tf.Tensor, training=None, valid=None) -> tuple[tf.Tensor, tf.Tensor]:
        """rois [B, R, 4] -> (class logits [B, R, K+1], class-specific deltas [B, R, K+1, 4]).

        ``training``/``valid`` [B, R] bool: for a normed head's training-mode batch statistics
        (only the valid RoIs count)."""
        pooled = self.box_pooler(features, rois)
        if isinstance(self.box_head, ConvFCBoxHead):
            return self.box_head(pooled, training=training, valid=valid)
        return self.box_head(pooled)

    def mask_logits(self, features, rois: tf.Tensor, class_ids: tf.Tensor, training=None,
                    valid=None) -> tf.Tensor:
        """rois [B, R, 4], class_ids [B, R] -> [B, R, 28, 28] mask logits of that class."""
        pick = CLASS_PICKS[self.settings["mask_class_pick"]]
        pooled = self.mask_pooler(features, rois)
        if self.mask_head.norm is None:
            return pick(self.mask_head(pooled), class_ids)
        return pick(self.mask_head(pooled, training=training, valid=valid), class_ids)

    def keypoint_heatmaps(self, features, rois: tf.Tensor) -> tf.Tensor:
        """rois [B, R, 4] -> [B, R, 56, 56, K] heatmap logits."""
        return self.keypoint_head(self.keypoint_pooler(features, rois))

    # ----- training ---------------------------------------------------------------------
    def sample(self, proposals, proposal_valid, targets: dict, generator=None) -> RoITargets:
        """Sample RoIs from proposals + GT boxes and build their targets (see ``roi_targets``;
        ``generator``: the sampling's ``tf.random.Generator``, ``MaskRCNN.sampling_generator``)."""
        s = self.settings
        return roi_targets(
            proposals, proposal_valid,
            tf.cast(targets["gt_boxes"], tf.float32), tf.cast(targets["gt_class_ids"], tf.int32),
            targets["gt_masks"] if self.mask_head is not None else None,
            num_samples=s["batch_size_per_image"], positive_fraction=s["positive_fraction"],
            positive_iou=s["positive_iou"], box_coder=self.box_coder, mask_shape=tuple(s["mask_shape"]),
            mini_mask=s["mini_mask"], mask_threshold=s["mask_target_threshold"],
            roi_align_implementation=self._mask_target_implementation(),
            num_mask_rois=self.num_mask_rois,
            static_shapes=s["xla_compatible"],
            gt_keypoints=targets["gt_keypoints"] if self.keypoint_head is not None else None,
            heatmap_size=s["keypoint_heatmap_size"], generator=generator,
        )

    def _mask_target_implementation(self) -> str:
        # Mask targets crop GT masks with one roi_align call; "gather" is a pooler form
        # for exports, whose stock-ops twin for that crop is "portable" (CropAndResize),
        # except in the XLA-compiled step: XLA has no CropAndResize kernel.
        implementation = self.settings["roi_align_implementation"]
        if implementation == "gather" and not self.settings["xla_compatible"]:
            return "portable"
        return implementation

    def losses_for(self, features, roi: RoITargets, training=None) -> dict[str, tf.Tensor]:
        """The head losses (scalars) of a sample from :meth:`sample`.

        ``training``: normed heads use batch statistics of the sampled RoIs (box head: every
        valid RoI; mask head: the positives, the RoIs it sees in torchvision and Detectron2)."""
        class_logits, box_deltas = self.box_forward(features, roi.rois, training=training, valid=roi.valid)
        positive = roi.valid & (roi.class_ids > 0)
        box_pred = tf.gather(box_deltas, roi.class_ids, batch_dims=2)
        values = {
            "class_loss": losses.classifier_loss(class_logits, roi.class_ids, roi.valid),
            "box_loss": losses.box_regression_loss(
                box_pred, roi.deltas, positive, roi.valid, self.settings["box_loss_beta"]
            ),
        }
        m = roi.mask_slots  # the slots that hold positives (see roi_targets)
        if self.mask_head is not None:
            logits = self.mask_logits(features, roi.rois[:, :m], roi.class_ids[:, :m], training=training,
                                      valid=positive[:, :m])
            values["mask_loss"] = losses.mask_loss(logits, roi.masks, positive[:, :m])
        if self.keypoint_head is not None:
            # Same slots as the mask branch: every positive is among them.
            heatmaps = self.keypoint_heatmaps(features, roi.rois[:, :m])
            values["keypoint_loss"] = losses.keypoint_loss(heatmaps, roi.keypoint_targets, roi.keypoint_valid)
        return values

    # ----- inference --------------------------------------------------------------------
    def postprocess(self, rois, roi_valid, class_logits, box_deltas, image_sizes) -> Detections:
        """Class-wise decoding, score/size filtering and NMS (see ``detect_boxes``)."""
        s = self.settings
        return detect_boxes(
            rois, roi_valid, class_logits, box_deltas, image_sizes, box_coder=self.box_coder,
            score_threshold=s["score_threshold"], nms_threshold=s["nms_threshold"],
            max_detections=s["detections_per_image"], min_size=s["min_size"],
            class_rule=s["detection_class_rule"],
        )

    def detect(self, features, proposals, proposal_valid, image_sizes) -> dict[str, tf.Tensor]:
        class_logits, box_deltas = self.box_forward(features, proposals)
        det = self.postprocess(proposals, proposal_valid, class_logits, box_deltas, image_sizes)
        validf = tf.cast(det.valid, tf.float32)
        out = {
            "boxes": det.boxes,
            "scores": det.scores,
            "class_ids": det.class_ids,
            "num_detections": tf.reduce_sum(tf.cast(det.valid, tf.int32), axis=1),
        }
        if self.mask_head is not None:
            # Detections come sorted by score, so those that get a mask fill the first
            # slots: the head runs on as many slots as the busiest image needs, not on
            # all DETECTION_MAX_INSTANCES. At least one slot (a zero box, its mask then
            # zeroed): a picture without detections would otherwise send empty tensors
            # through the pooler, which LiteRT's kernels (UNPACK) refuse.
            with_mask = det.valid & (det.scores >= self.settings["mask_min_score"])
            count = tf.reduce_max(tf.reduce_sum(tf.cast(with_mask, tf.int32), axis=1))
            count = tf.maximum(count, 1)  # also: reduce_max of an empty batch is int32 min
            masks = tf.sigmoid(self.mask_logits(features, det.boxes[:, :count], det.class_ids[:, :count]))
            masks = masks * tf.expand_dims(tf.expand_dims(tf.cast(with_mask[:, :count], tf.float32), -1), -1)
            pad = tf.shape(det.boxes)[1] - count
            out["masks"] = tf.pad(masks, [[0, 0], [0, pad], [0, 0], [0, 0]])
        if self.keypoint_head is not None:
            heatmaps = self.keypoint_heatmaps(features, det.boxes)
            out["keypoints"] = heatmaps_to_keypoints(heatmaps, det.boxes) * validf[:, :, None, None]
        if self.settings["box_coordinates"] == "matterport":
            # matterport's frame ends boxes one pixel in; the output is the pixel-edge frame
            # (matterport's denorm_boxes adds the same pixel).
            out["boxes"] = det.boxes + tf.constant([0.0, 0.0, 1.0, 1.0]) * validf[..., None]
        return out

    def call(self, features, proposals, proposal_valid, image_sizes, targets=None, training=None, generator=None):
        if targets is None:
            return self.detect(features, proposals, proposal_valid, image_sizes), {}
        sampled = self.sample(proposals, proposal_valid, targets, generator)
        return {}, self.losses_for(features, sampled, training=training)

    def get_config(self):
        # Plain lists: Keras wraps the attribute dict's lists into tracked containers.
        plain = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in self.settings.items()}
        return {**super().get_config(), **plain}


def _pick_class_channel_batched(mask_logits: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
    """[B, R, mh, mw, K+1] logits, [B, R] class ids -> [B, R, mh, mw] of that class."""
    per_class = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
    return tf.gather(per_class, class_ids, batch_dims=2)


def _pick_class_channel_flat(mask_logits: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
    """As :func:`_pick_class_channel_batched`, with one plain Gather on a flattened table.

    [B, R, mh, mw, K] -> rows (b, r, k) of a [B*R*K, mh, mw] table, row (b * R + r) * K
    + class. OpenVINO's converter rejects ``tf.gather(..., batch_dims=2)`` (its
    transpose-sinking pass) or turns it, ``tf.one_hot`` and a one-hot product over the
    last axis into wrong masks (tested on 2026.4); this form converts right. Exact.
    """
    k = mask_logits.shape[-1]
    per_class = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
    shape = tf.shape(per_class)
    table = tf.reshape(per_class, tf.concat([[-1], shape[3:]], 0))
    rows = tf.reshape(tf.range(shape[0] * shape[1]) * k, tf.shape(class_ids))
    return tf.gather(table, rows + tf.cast(class_ids, tf.int32))


# RoIHeads(mask_class_pick=...) / Config.MASK_CLASS_PICK.
CLASS_PICKS = {"batched": _pick_class_channel_batched, "flat": _pick_class_channel_flat}
