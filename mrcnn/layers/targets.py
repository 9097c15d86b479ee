"""Training targets: anchor labels for the RPN, sampled RoIs for the heads.

Computed in the graph from the padded ground truth (like torchvision and
Detectron2) because RoI targets depend on the proposals of the current step.

Ground truth, per batch: ``gt_boxes`` [B, G, 4] (y1, x1, y2, x2) input pixels;
``gt_class_ids`` [B, G] int32 with 0 = padding, > 0 = class, < 0 = crowd region
of class -id. Crowd regions are never positives, and a candidate overlapping one
(IoU >= ``CROWD_IOU``, matterport's rule) is not used as a negative either.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from mrcnn.layers.box_coder import BoxCoder
from mrcnn.ops import boxes as box_ops
from mrcnn.ops import custom_roi_align
from mrcnn.ops.keypoints import keypoints_to_heatmap_targets
from mrcnn.ops.roi_align_gather import roi_align_gather
from mrcnn.ops.roi_pooling import roi_align
from mrcnn.ops.sampling import sample_balanced

CROWD_IOU = 0.001


def _match(candidates: tf.Tensor, gt_boxes: tf.Tensor, gt_class_ids: tf.Tensor):
    """IoU-match candidates [B, N, 4] to non-crowd GT.

    Returns (max_iou [B, N] (-1 without GT), best_gt [B, N] int32, iou [B, N, G]
    with padding/crowd columns at -1, near_crowd [B, N] bool).
    """
    iou = box_ops.box_iou(candidates, gt_boxes)
    is_object = gt_class_ids > 0
    iou_obj = tf.where(is_object[:, None, :], iou, -1.0)
    max_iou = tf.reduce_max(iou_obj, axis=2)
    best_gt = tf.argmax(iou_obj, axis=2, output_type=tf.int32)
    crowd_iou = tf.where((gt_class_ids < 0)[:, None, :], iou, 0.0)
    near_crowd = tf.reduce_max(crowd_iou, axis=2) >= CROWD_IOU
    return max_iou, best_gt, iou_obj, near_crowd


def _encode(box_coder: BoxCoder | None, default_weights, boxes: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    if box_coder is None:
        return box_ops.encode_boxes(boxes, reference, default_weights)
    return box_coder.encode(boxes, reference)


class RPNTargets(NamedTuple):
    indices: tf.Tensor  # [B, S] int32 sampled anchor indices
    labels: tf.Tensor  # [B, S] float32 1 positive / 0 negative
    valid: tf.Tensor  # [B, S] bool
    deltas: tf.Tensor  # [B, S, 4] box targets of positives (dy, dx, dh, dw)


def rpn_targets(
    anchors: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_class_ids: tf.Tensor,
    *,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    box_coder: BoxCoder | None = None,
    generator: tf.random.Generator | None = None,
) -> RPNTargets:
    """Label anchors and sample them (torchvision Matcher with low-quality matches).

    Args:
      anchors: [A, 4] all levels concatenated.
      box_coder: encodes the regression targets (default weights (1, 1, 1, 1)).
      generator: the sampler's random source (``sample_balanced``).
    """
    batch = tf.shape(gt_boxes)[0]
    anchors_b = tf.broadcast_to(anchors[None], tf.stack([batch, tf.shape(anchors)[0], 4]))
    max_iou, best_gt, iou, near_crowd = _match(anchors_b, gt_boxes, gt_class_ids)
    # Low-quality matches: for each GT, the anchors tied for its best IoU are positive.
    best_per_gt = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, G]
    is_best = (iou >= best_per_gt) & (best_per_gt > 0.0)
    low_quality = tf.reduce_any(is_best, axis=2)
    positive = (max_iou >= positive_iou) | low_quality
    negative = (max_iou < negative_iou) & ~positive & ~near_crowd
    indices, is_pos, valid = sample_balanced(positive, negative, num_samples, positive_fraction,
                                             generator=generator)
    matched = tf.gather(tf.gather(gt_boxes, best_gt, batch_dims=1), indices, batch_dims=1)
    sampled_anchors = tf.gather(anchors, indices)
    deltas = _encode(box_coder, (1.0, 1.0, 1.0, 1.0), matched, sampled_anchors)
    deltas = tf.where(is_pos[..., None], deltas, 0.0)
    return RPNTargets(indices, tf.cast(is_pos, tf.float32), valid, tf.stop_gradient(deltas))


class RoITargets(NamedTuple):
    rois: tf.Tensor  # [B, S, 4] sampled RoIs
    valid: tf.Tensor  # [B, S] bool
    class_ids: tf.Tensor  # [B, S] int32 (0 = background)
    deltas: tf.Tensor  # [B, S, 4] regression targets (box-head weights)
    masks: tf.Tensor | None  # [B, M, mh, mw] float32 0/1 targets (meaningful for positives)
    # [B, M, K] int32 heatmap cell (row * m + col) of each keypoint, and
    # whether it is a target (labelled, inside a positive RoI); None without keypoints.
    keypoint_targets: tf.Tensor | None = None
    keypoint_valid: tf.Tensor | None = None
    # M: the slots the mask/keypoint targets cover (int32 scalar; the batch's largest
    # positive count, at least 1, at most num_mask_rois): the first M sampled RoIs.
    mask_slots: tf.Tensor | int | None = None


def roi_targets(
    proposals: tf.Tensor,
    proposal_valid: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_class_ids: tf.Tensor,
    gt_masks: tf.Tensor | None,
    *,
    num_samples: int = 512,
    positive_fraction: float = 0.25,
    positive_iou: float = 0.5,
    box_coder: BoxCoder | None = None,
    mask_shape: tuple[int, int] = (28, 28),
    mini_mask: bool = True,
    mask_threshold: float = 0.5,
    roi_align_implementation: str = "auto",
    num_mask_rois: int | None = None,
    gt_keypoints: tf.Tensor | None = None,
    heatmap_size: int = 56,
    static_shapes: bool = False,
    generator: tf.random.Generator | None = None,
) -> RoITargets:
    """Sample RoIs from proposals + GT boxes and build their class, box and mask targets.

    Args:
      proposals: [B, P, 4]; proposal_valid: [B, P] bool.
      gt_masks: [B, G, mh, mw] uint8/float; mini masks (in their box's frame) when
        ``mini_mask`` else full masks in input-image pixels.
      box_coder: encodes the regression targets (default weights (10, 10, 5, 5)).
      num_mask_rois: mask and keypoint targets are built for the first
        ``mask_slots`` sampled slots only: the batch's largest positive count, at
        most this many (positives come first; default num_samples).
      gt_masks: may be None (no mask head): ``masks`` is then None.
      gt_keypoints: optional [B, G, K, 3] (x, y, v) continuous input pixels; each
        positive RoI's matched GT keypoints are mapped into its ``heatmap_size``
        grid (:func:`mrcnn.ops.keypoints.keypoints_to_heatmap_targets`).
      roi_align_implementation: crops the mask targets: "auto", "portable", "custom"
        (:func:`mrcnn.ops.roi_pooling.roi_align`) or "gather"
        (:func:`mrcnn.ops.roi_align_gather.roi_align_gather`, what XLA compiles).
      static_shapes: mask and keypoint targets cover all ``num_mask_rois`` slots
        (``mask_slots`` a Python int) instead of the batch's positive count, so every
        shape is static for XLA (``Config.JIT_COMPILE``). The extra slots are not
        positive and carry no loss: the losses are the same.
      generator: the sampler's random source (``sample_balanced``).
    """
    gt_boxes = tf.stop_gradient(gt_boxes)
    candidates = tf.concat([proposals, gt_boxes], axis=1)
    cand_valid = tf.concat([proposal_valid, gt_class_ids > 0], axis=1)
    max_iou, best_gt, _, near_crowd = _match(candidates, gt_boxes, gt_class_ids)
    positive = cand_valid & (max_iou >= positive_iou)
    negative = cand_valid & (max_iou < positive_iou) & ~near_crowd
    indices, is_pos, valid = sample_balanced(positive, negative, num_samples, positive_fraction,
                                             generator=generator)

    rois = tf.gather(candidates, indices, batch_dims=1)
    gt_index = tf.gather(best_gt, indices, batch_dims=1)  # [B, S]
    matched_boxes = tf.gather(gt_boxes, gt_index, batch_dims=1)
    matched_class = tf.gather(gt_class_ids, gt_index, batch_dims=1)
    class_ids = tf.where(is_pos, matched_class, 0)
    deltas = tf.where(is_pos[..., None], _encode(box_coder, (10.0, 10.0, 5.0, 5.0), matched_boxes, rois), 0.0)
    # Positives fill the first slots, so the mask and keypoint branches need only as many
    # slots as the batch's busiest image has positives (torchvision runs its mask head
    # on the positives alone): a dynamic count, at most num_mask_rois. With a handful
    # of objects per image that is a fraction of the 128 slots a fixed shape would take.
    # At least one slot: a batch without positives (a crop with no object) must not make
    # the heads' tensors empty, since oneDNN's Conv2DBackpropFilter fails on an empty batch
    # ("Missing 1-th output"); the extra slot is not positive and carries no loss.
    most = num_samples if num_mask_rois is None else num_mask_rois
    if static_shapes:
        m = min(int(most), int(num_samples))
    else:
        m = tf.minimum(tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(is_pos, tf.int32), axis=1)), 1), most)
    masks = None
    if gt_masks is not None:
        masks = _mask_targets(rois[:, :m], gt_index[:, :m], matched_boxes[:, :m], gt_masks, mask_shape,
                              mini_mask, roi_align_implementation)
        masks = tf.stop_gradient(tf.cast(masks >= mask_threshold, tf.float32))
    kp_targets = kp_valid = None
    if gt_keypoints is not None:
        matched_kps = tf.gather(tf.cast(gt_keypoints, tf.float32), gt_index[:, :m], batch_dims=1)
        kp_targets, kp_valid = keypoints_to_heatmap_targets(
            tf.stop_gradient(matched_kps), tf.stop_gradient(rois[:, :m]), heatmap_size
        )
        kp_valid = kp_valid & (is_pos & valid)[:, :m, None]
    return RoITargets(
        tf.stop_gradient(rois), valid, class_ids, tf.stop_gradient(deltas), masks, kp_targets, kp_valid, m
    )


def _mask_targets(rois, gt_index, matched_boxes, gt_masks, mask_shape, mini_mask, implementation):
    """RoIAlign each RoI's matched GT mask into the RoI at ``mask_shape``: [B, S, mh, mw].

    Full masks: aligned RoIAlign with adaptive sampling (ceil(roi / bin) samples
    per bin), Detectron2's ``BitMasks.crop_and_resize``; the stock-ops RoIAlign
    cannot sample adaptively and uses 2 x 2 samples (see ``mask_target_sampling_ratio``).

    Mini masks (the GT box resampled to mh x mw): the RoI is expressed in the mini
    mask's frame, and the mini mask gets a one-cell zero border first. Without it,
    RoIAlign's border rule (a sample up to one cell outside reads the edge cell)
    would copy the mask's edge half a cell beyond the GT box, which then survives
    the 0.5 threshold; with it, sampling outside the box sees what a full mask
    holds there (nothing), as the full-mask path does. 2 x 2 samples per bin: for
    a RoI the size of its GT box that is the adaptive count (mini cells per bin).
    """
    batch = tf.shape(rois)[0]
    num_rois = tf.shape(rois)[1]
    num_gt = tf.shape(gt_masks)[1]
    mh, mw = tf.shape(gt_masks)[2], tf.shape(gt_masks)[3]
    masks = tf.reshape(tf.cast(gt_masks, tf.float32), tf.stack([-1, mh, mw, 1]))
    if mini_mask:
        masks = tf.pad(masks, [[0, 0], [1, 1], [1, 1], [0, 0]])
        # The mini mask spans the GT box: express the RoI in that frame (+1: the border).
        gy1, gx1, gy2, gx2 = tf.unstack(matched_boxes, axis=-1)
        ry1, rx1, ry2, rx2 = tf.unstack(rois, axis=-1)
        sy = tf.cast(mh, tf.float32) / tf.maximum(gy2 - gy1, 1e-6)
        sx = tf.cast(mw, tf.float32) / tf.maximum(gx2 - gx1, 1e-6)
        boxes = tf.stack([(ry1 - gy1) * sy, (rx1 - gx1) * sx, (ry2 - gy1) * sy, (rx2 - gx1) * sx], -1) + 1.0
        sampling_ratio = 2
    else:
        boxes = rois
        sampling_ratio = mask_target_sampling_ratio(implementation)
    box_indices = tf.range(batch)[:, None] * num_gt + gt_index
    if implementation == "gather":
        out = roi_align_gather(masks, tf.reshape(boxes, [-1, 4]), tf.reshape(box_indices, [-1]), mask_shape,
                               spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
        return tf.reshape(out, tf.stack([batch, num_rois, mask_shape[0], mask_shape[1]]))
    out = roi_align(
        masks,
        tf.reshape(boxes, [-1, 4]),
        tf.reshape(box_indices, [-1]),
        mask_shape,
        spatial_scale=1.0,
        sampling_ratio=sampling_ratio,
        aligned=True,
        implementation=implementation,
    )
    return tf.reshape(out, tf.stack([batch, num_rois, mask_shape[0], mask_shape[1]]))


def mask_target_sampling_ratio(implementation: str) -> int:
    """RoIAlign sampling ratio of full-mask targets: 0 (adaptive) where the custom op runs, else 2."""
    if implementation == "custom" or (implementation == "auto" and custom_roi_align.is_available()):
        return 0
    return 2
