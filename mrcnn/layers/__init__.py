"""Keras layers: the backbone, FPN and the detector's stages, each owning its settings.

Stages (built from a Config by ``Stage.from_model_config(config)`` in
:class:`mrcnn.model.MaskRCNN`; ``Stage.from_config(stage.get_config())`` is Keras'
own round trip):

- :class:`AnchorGenerator` -- anchor sizes, ratios, strides, rounding, offset.
- :class:`RPN` -- :class:`RPNHead`, proposal selection (pre/post-NMS top-n, NMS,
  min size), anchor sampling and targets, the two RPN losses.
- :class:`RoIPooler` -- multi-level RoIAlign (output size, strides, sampling
  ratio, aligned, canonical level/size, implementation).
- :class:`RoIHeads` -- RoI sampling and targets (box, mask, keypoint), a
  :class:`RoIPooler` and a head per branch (:class:`BoxHead` or :class:`ConvFCBoxHead`, :class:`MaskHead`,
  :class:`KeypointHead`), the head losses, inference post-processing.
- :class:`BoxCoder` -- the (dy, dx, dh, dw) encoding and its weights.
- :class:`Conv3x3` -- the 3x3 stride-1 convolution of the blocks, FPN, RPN and heads
  (Winograd in the training step, ``Config.TRAINING_CONV_ALGORITHM``).

Imports go one way: ``mrcnn.ops`` (and ``mrcnn.ops.losses``) -> ``mrcnn.layers`` -> ``mrcnn.model``.
"""

from mrcnn.layers.anchors import AnchorGenerator
from mrcnn.layers.backbone import ResNet
from mrcnn.layers.box_coder import BoxCoder
from mrcnn.layers.conv import Conv3x3
from mrcnn.layers.fpn import FPN
from mrcnn.layers.norm import FrozenBatchNorm, RoIBatchNorm
from mrcnn.layers.pooler import RoIPooler
from mrcnn.layers.roi_heads import BoxHead, ConvFCBoxHead, KeypointHead, MaskHead, RoIHeads
from mrcnn.layers.rpn import RPN, RPNHead

__all__ = [
    "FPN",
    "RPN",
    "AnchorGenerator",
    "BoxCoder",
    "BoxHead",
    "Conv3x3",
    "ConvFCBoxHead",
    "FrozenBatchNorm",
    "KeypointHead",
    "MaskHead",
    "RPNHead",
    "ResNet",
    "RoIBatchNorm",
    "RoIHeads",
    "RoIPooler",
]
