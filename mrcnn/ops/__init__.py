"""Pure tensor functions (no Keras state): boxes, anchors, NMS, sampling, RoIAlign, masks, keypoints,
Winograd 3x3 convolution.

This is the lowest floor of the package: it imports only TensorFlow and NumPy, never
``mrcnn.layers`` or the model. ``from mrcnn.ops import roi_align`` is the RoIAlign
function (the module that holds it is :mod:`mrcnn.ops.roi_pooling`); the custom C++/CUDA
op's build-and-load machinery is the submodule :mod:`mrcnn.ops.custom_roi_align`.
"""

from mrcnn.ops.anchors import base_anchors, grid_anchors, multilevel_anchors
from mrcnn.ops.boxes import (
    box_area,
    box_iou,
    boxes_min_side,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)
from mrcnn.ops.keypoints import (
    flip_keypoints,
    heatmap_targets_to_keypoints,
    heatmaps_to_keypoints,
    keypoints_to_heatmap_targets,
    scale_keypoints,
)
from mrcnn.ops.masks import paste_masks
from mrcnn.ops.nms import batched_nms
from mrcnn.ops.roi_pooling import fpn_levels, multilevel_roi_align, roi_align, roi_align_portable
from mrcnn.ops.sampling import sample_balanced
from mrcnn.ops.winograd import conv3x3_winograd

__all__ = [
    "base_anchors",
    "batched_nms",
    "box_area",
    "box_iou",
    "boxes_min_side",
    "clip_boxes",
    "conv3x3_winograd",
    "decode_boxes",
    "encode_boxes",
    "flip_keypoints",
    "fpn_levels",
    "grid_anchors",
    "heatmap_targets_to_keypoints",
    "heatmaps_to_keypoints",
    "keypoints_to_heatmap_targets",
    "multilevel_anchors",
    "multilevel_roi_align",
    "paste_masks",
    "roi_align",
    "roi_align_portable",
    "sample_balanced",
    "scale_keypoints",
]
