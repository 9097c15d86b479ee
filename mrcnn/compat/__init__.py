"""Compatibility with outside code: matterport/Mask_RCNN scripts (:mod:`mrcnn.compat.matterport`).

Thin: each name here calls the packages that do the work (docs/architecture.md).
"""

from mrcnn.compat.matterport import MatterportMaskRCNN

__all__ = ["MatterportMaskRCNN"]
