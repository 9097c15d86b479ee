"""Region Proposal Network: the shared head, the proposal stage and the ``RPN`` stage layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from mrcnn.layers.box_coder import BoxCoder
from mrcnn.layers.conv import Conv3x3
from mrcnn.layers.precision import dtype_policy_scope, policy_name, to_float32
from mrcnn.layers.targets import rpn_targets
from mrcnn.ops import boxes as box_ops
from mrcnn.ops import losses
from mrcnn.ops.nms import batched_nms

if TYPE_CHECKING:
    from mrcnn.config import Config


@keras.saving.register_keras_serializable(package="mrcnn")
class RPNHead(keras.layers.Layer):
    """3x3 conv + ReLU shared by all levels, then 1x1 convs to A logits and 4A deltas.

    ``channels``: the 3x3 conv's width (``Config.RPN_HEAD_CHANNELS``, default the FPN's;
    matterport's is 512); the input may have another.

    ``num_convs`` (``Config.RPN_HEAD_CONVS``): 1, or 2 stacked 3x3 conv + ReLU (no norm),
    torchvision's ``RPNHead(conv_depth=2)`` (maskrcnn_resnet50_fpn_v2) and Detectron2's
    ``StandardRPNHead(conv_dims=[-1, -1])`` (new baselines); named ``rpn_conv``, ``rpn_conv2``.

    Input: list of [B, h, w, C] maps. Output: (logits [B, sum(h*w*A)],
    deltas [B, sum(h*w*A), 4] as (dy, dx, dh, dw)), flattened level by level in
    anchor order (row, column, anchor); float32 under any dtype policy.
    """

    def __init__(self, num_anchors: int = 3, channels: int = 256, num_convs: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_convs not in (1, 2):
            raise ValueError(f"RPNHead num_convs must be 1 or 2, got {num_convs!r}")
        self.num_anchors = num_anchors
        self.channels = channels
        self.num_convs = num_convs
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = Conv3x3(channels, activation="relu", kernel_initializer=init, name="rpn_conv")
        self.extra_convs = [
            Conv3x3(channels, activation="relu", kernel_initializer=init, name=f"rpn_conv{i + 2}")
            for i in range(num_convs - 1)
        ]
        self.cls_logits = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="rpn_cls_logits")
        self.bbox_pred = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="rpn_bbox_pred")

    def build(self, input_shape):
        # input_shape: one shape per level (all with the same channels) or a single shape.
        first = input_shape[0] if isinstance(input_shape[0], (list, tuple)) else input_shape
        self.conv.build((None, None, None, first[-1]))
        for conv in self.extra_convs:
            conv.build((None, None, None, self.channels))
        self.cls_logits.build((None, None, None, self.channels))
        self.bbox_pred.build((None, None, None, self.channels))

    def call(self, features):
        logits, deltas = [], []
        for feature_map in features:
            t = self.conv(feature_map)
            for conv in self.extra_convs:
                t = conv(t)
            batch = tf.shape(t)[0]
            logits.append(tf.reshape(to_float32(self.cls_logits(t)), [batch, -1]))
            deltas.append(tf.reshape(to_float32(self.bbox_pred(t)), [batch, -1, 4]))
        return logits, deltas

    def at_anchors(self, features, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The head's outputs at a few anchors only, computed from their 3x3 neighbourhoods.

        features: one [B, h_l, w_l, C] map per level; indices: [B, S] int32 anchor
        indices in the order of :meth:`call`'s outputs concatenated over the levels
        (level, row, column, anchor). Returns (logits [B, S], deltas [B, S, 4])
        float32: the values ``call`` gives at those anchors (to float32 rounding).

        Why: the RPN losses read only the sampled anchors (256 per image of the
        ~65k at 512x512), so the gradient of the dense head is zero almost
        everywhere. Differentiating this gather-and-matmul instead of the dense
        3x3 convolution gives the same gradients (for the weights and the
        features) for S x 9 x C x C multiply-adds instead of two dense
        convolutions over every level: the RPN's backward pass almost vanishes.

        With two convs (``num_convs=2``) the dense outputs are gathered instead
        (same values and gradients; the saving above is then not made).
        """
        if self.extra_convs:
            logits, deltas = self.call(features)
            logits, deltas = tf.concat(logits, axis=1), tf.concat(deltas, axis=1)
            return tf.gather(logits, indices, batch_dims=1), tf.gather(deltas, indices, batch_dims=1)
        num_anchors = self.num_anchors
        batch = tf.shape(indices)[0]
        channels = features[0].shape[-1]
        heights = tf.stack([tf.shape(f)[1] for f in features])
        widths = tf.stack([tf.shape(f)[2] for f in features])
        anchor_counts = heights * widths * num_anchors
        anchor_starts = tf.cumsum(anchor_counts, exclusive=True)
        # Every level zero-padded by one pixel (the conv's "same" padding) and flattened
        # into one [B, sum((h+2)(w+2)), C] table, so one gather serves all levels.
        padded_starts = tf.cumsum((heights + 2) * (widths + 2), exclusive=True)
        table = tf.concat(
            [tf.reshape(tf.pad(f, [[0, 0], [1, 1], [1, 1], [0, 0]]), [batch, -1, channels]) for f in features],
            axis=1,
        )
        level = tf.reduce_sum(tf.cast(indices[..., None] >= anchor_starts[1:], tf.int32), axis=-1)
        local = indices - tf.gather(anchor_starts, level)
        position, anchor = local // num_anchors, local % num_anchors
        width = tf.gather(widths, level)
        row, col = position // width, position % width
        # The padded pixel (row, col) is the top-left of the output pixel's 3x3 window.
        corner = tf.gather(padded_starts, level) + row * (width + 2) + col
        dy, dx = tf.meshgrid(tf.range(3), tf.range(3), indexing="ij")
        window = corner[..., None] + tf.reshape(dy, [-1]) * (width + 2)[..., None] + tf.reshape(dx, [-1])
        patches = tf.gather(table, tf.reshape(window, [batch, -1]), batch_dims=1)  # [B, S*9, C]
        dtype = self.conv.compute_dtype
        patches = tf.cast(tf.reshape(patches, [-1, 9 * channels]), dtype)  # (ky, kx, c): the kernel's order
        kernel = tf.cast(tf.reshape(self.conv.kernel, [9 * channels, self.channels]), dtype)
        hidden = tf.nn.relu(tf.matmul(patches, kernel) + tf.cast(self.conv.bias, dtype))

        def pointwise(conv):
            kernel = tf.cast(tf.reshape(conv.kernel, [self.channels, -1]), dtype)
            return to_float32(tf.matmul(hidden, kernel) + tf.cast(conv.bias, dtype))

        logits = tf.reshape(pointwise(self.cls_logits), [batch, -1, num_anchors])
        deltas = tf.reshape(pointwise(self.bbox_pred), [batch, -1, num_anchors, 4])
        return tf.gather(logits, anchor, batch_dims=2), tf.gather(deltas, anchor, batch_dims=2)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels,
                "num_convs": self.num_convs}


def generate_proposals(
    logits: list[tf.Tensor],
    deltas: list[tf.Tensor],
    anchors: list[tf.Tensor],
    image_sizes: tf.Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float,
    min_size: float,
    box_coder: BoxCoder,
    selection: str = "per_level",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """torchvision's RPN ``filter_proposals``, batched and fixed-shape.

    Per level: top ``pre_nms_top_n`` anchors by objectness; decode; clip to the
    image; drop boxes with a side < ``min_size``; NMS per level; keep the best
    ``post_nms_top_n`` of all levels by objectness probability.

    ``selection="global"`` (matterport's ``ProposalLayer``): the top ``pre_nms_top_n``
    anchors of all levels together, then the same steps with one NMS over them.

    Args:
      logits: per level [B, N_l]; deltas: per level [B, N_l, 4];
      anchors: per level [N_l, 4]; image_sizes: [B, 2] valid (h, w).
    Returns:
      proposals [B, post_nms_top_n, 4] (no gradient), scores [B, post_nms_top_n]
      (probabilities), valid [B, post_nms_top_n] bool.
    """
    if selection == "global":
        logits, deltas = [tf.concat(logits, axis=1)], [tf.concat(deltas, axis=1)]
        anchors = [tf.concat(anchors, axis=0)]
    all_boxes, all_scores, all_levels = [], [], []
    for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        k = tf.minimum(pre_nms_top_n, tf.shape(lg)[1])
        top_logits, idx = tf.math.top_k(lg, k=k)
        top_deltas = tf.gather(dl, idx, batch_dims=1)
        top_anchors = tf.gather(an, idx)
        all_boxes.append(box_coder.decode(top_deltas, top_anchors))
        all_scores.append(top_logits)
        all_levels.append(tf.fill(tf.shape(idx), level))
    boxes = tf.stop_gradient(tf.concat(all_boxes, axis=1))
    scores = tf.stop_gradient(tf.sigmoid(tf.concat(all_scores, axis=1)))
    levels = tf.concat(all_levels, axis=1)
    boxes = box_ops.clip_boxes(boxes, image_sizes)
    valid = box_ops.boxes_min_side(boxes) >= min_size
    keep, keep_valid = batched_nms(boxes, scores, valid, post_nms_top_n, nms_threshold, groups=levels)
    proposals = tf.gather(boxes, keep, batch_dims=1)
    kept_scores = tf.gather(scores, keep, batch_dims=1)
    proposals = tf.where(keep_valid[..., None], proposals, 0.0)
    return proposals, tf.where(keep_valid, kept_scores, 0.0), keep_valid


@keras.saving.register_keras_serializable(package="mrcnn")
class RPN(keras.layers.Layer):
    """The RPN stage (torchvision's ``RegionProposalNetwork``): head, proposals, anchor targets, losses.

    ``layer(features, anchors, image_sizes, targets=None)`` with features one
    [B, h, w, C] map per level (P2..P6), anchors from :class:`AnchorGenerator`,
    image_sizes [B, 2] valid (h, w) -> ``(proposals [B, P, 4], valid [B, P] bool,
    losses)``. Without ``targets`` (inference) P = ``post_nms_top_n_test`` and
    ``losses`` is {}; with ``targets`` = {"gt_boxes" [B, G, 4], "gt_class_ids"
    [B, G]} the training limits apply (also for a validation loss, as torchvision
    in train mode) and ``losses`` holds "rpn_class_loss" and "rpn_box_loss".
    """

    def __init__(
        self,
        *,
        num_anchors: int = 3,
        channels: int = 256,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_threshold: float = 0.7,
        min_size: float = 1e-3,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        positive_iou: float = 0.7,
        negative_iou: float = 0.3,
        box_loss_beta: float = 1.0 / 9.0,
        head_dtype: str = "float32",
        head_convs: int = 1,
        head_channels: int | None = None,
        proposal_selection: str = "per_level",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if proposal_selection not in ("per_level", "global"):
            raise ValueError(f"proposal_selection must be 'per_level' or 'global', got {proposal_selection!r}")
        head_channels = int(channels if head_channels is None else head_channels)
        self.settings = {
            "head_convs": int(head_convs), "head_channels": head_channels,
            "proposal_selection": proposal_selection,
            "num_anchors": int(num_anchors), "channels": int(channels), "head_dtype": str(head_dtype),
            "pre_nms_top_n_train": int(pre_nms_top_n_train), "pre_nms_top_n_test": int(pre_nms_top_n_test),
            "post_nms_top_n_train": int(post_nms_top_n_train), "post_nms_top_n_test": int(post_nms_top_n_test),
            "nms_threshold": float(nms_threshold), "min_size": float(min_size),
            "box_weights": [float(w) for w in box_weights],
            "batch_size_per_image": int(batch_size_per_image), "positive_fraction": float(positive_fraction),
            "positive_iou": float(positive_iou), "negative_iou": float(negative_iou),
            "box_loss_beta": float(box_loss_beta),
        }
        with dtype_policy_scope(head_dtype):  # e.g. "mixed_bfloat16" (Config.MIXED_PRECISION)
            self.head = RPNHead(num_anchors, head_channels, num_convs=head_convs, name="head")
        self.box_coder = BoxCoder(box_weights, name="box_coder")

    @classmethod
    def from_model_config(cls, config: Config, **kwargs) -> RPN:
        return cls(
            num_anchors=len(config.RPN_ANCHOR_RATIOS),
            channels=config.FPN_CHANNELS,
            pre_nms_top_n_train=config.PRE_NMS_LIMIT_TRAINING,
            pre_nms_top_n_test=config.PRE_NMS_LIMIT_INFERENCE,
            post_nms_top_n_train=config.POST_NMS_ROIS_TRAINING,
            post_nms_top_n_test=config.POST_NMS_ROIS_INFERENCE,
            nms_threshold=config.RPN_NMS_THRESHOLD,
            min_size=config.PROPOSAL_MIN_SIZE,
            box_weights=config.RPN_BBOX_WEIGHTS,
            batch_size_per_image=config.RPN_TRAIN_ANCHORS_PER_IMAGE,
            positive_fraction=config.RPN_POSITIVE_RATIO,
            positive_iou=config.RPN_POSITIVE_IOU,
            negative_iou=config.RPN_NEGATIVE_IOU,
            box_loss_beta=config.RPN_BOX_LOSS_BETA,
            head_dtype=policy_name(config.MIXED_PRECISION),
            head_convs=config.RPN_HEAD_CONVS,
            head_channels=config.RPN_HEAD_CHANNELS,
            proposal_selection=config.PROPOSAL_SELECTION,
            **kwargs,
        )

    def build(self, features_shape):
        self.head.build(features_shape)

    def proposals(self, logits, deltas, anchors, image_sizes, *, training_limits: bool = False):
        """The proposal stage alone on head outputs: (proposals, scores, valid), see ``generate_proposals``."""
        s = self.settings
        phase = "train" if training_limits else "test"
        return generate_proposals(
            logits, deltas, anchors, image_sizes,
            pre_nms_top_n=s[f"pre_nms_top_n_{phase}"], post_nms_top_n=s[f"post_nms_top_n_{phase}"],
            nms_threshold=s["nms_threshold"], min_size=s["min_size"], box_coder=self.box_coder,
            selection=s["proposal_selection"],
        )

    def losses_for(self, features, anchors, gt_boxes, gt_class_ids, generator=None) -> dict[str, tf.Tensor]:
        """Sample anchors against the ground truth and return the two RPN losses (scalars).

        ``generator``: the sampling's ``tf.random.Generator`` (``MaskRCNN.sampling_generator``).

        The head is evaluated again at the sampled anchors only
        (:meth:`RPNHead.at_anchors`), so only that small computation is differentiated.
        """
        s = self.settings
        t = rpn_targets(
            tf.concat(anchors, axis=0), gt_boxes, gt_class_ids,
            num_samples=s["batch_size_per_image"], positive_fraction=s["positive_fraction"],
            positive_iou=s["positive_iou"], negative_iou=s["negative_iou"], box_coder=self.box_coder,
            generator=generator,
        )
        sampled_logits, sampled_deltas = self.head.at_anchors(features, t.indices)
        return {
            "rpn_class_loss": losses.rpn_class_loss(sampled_logits, t.labels, t.valid),
            "rpn_box_loss": losses.box_regression_loss(
                sampled_deltas, t.deltas, t.labels > 0, t.valid, s["box_loss_beta"]
            ),
        }

    def call(self, features, anchors, image_sizes, targets=None, generator=None):
        # The dense outputs only select proposals (no gradient flows through them);
        # the losses recompute the head at the sampled anchors (losses_for).
        logits, deltas = self.head(features)
        proposals, _, valid = self.proposals(
            logits, deltas, anchors, image_sizes, training_limits=targets is not None
        )
        if targets is None:
            return proposals, valid, {}
        gt_boxes = tf.cast(targets["gt_boxes"], tf.float32)
        gt_class_ids = tf.cast(targets["gt_class_ids"], tf.int32)
        return proposals, valid, self.losses_for(features, anchors, gt_boxes, gt_class_ids, generator)

    def get_config(self):
        # Plain lists: Keras wraps the attribute dict's lists into tracked containers.
        plain = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in self.settings.items()}
        return {**super().get_config(), **plain}
