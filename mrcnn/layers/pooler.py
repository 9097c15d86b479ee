"""``RoIPooler``: multi-level RoIAlign over the FPN maps (torchvision's ``MultiScaleRoIAlign``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras

from mrcnn.ops.pyramid_crop import multilevel_crop_and_resize
from mrcnn.ops.roi_align_gather import multilevel_roi_align_gather
from mrcnn.ops.roi_pooling import IMPLEMENTATIONS as _OP_IMPLEMENTATIONS
from mrcnn.ops.roi_pooling import multilevel_roi_align

if TYPE_CHECKING:
    from mrcnn.config import Config

# "auto", "portable", "custom" (mrcnn.ops.roi_pooling) and "gather"
# (mrcnn.ops.roi_align_gather: Gather and arithmetic only, what the ONNX, OpenVINO and
# LiteRT exports build; no CropAndResize, which LiteRT lacks and the other two convert
# badly). All give the same numbers within 2e-5.
IMPLEMENTATIONS = (*_OP_IMPLEMENTATIONS, "gather")


@keras.saving.register_keras_serializable(package="mrcnn")
class RoIPooler(keras.layers.Layer):
    """Pools each box from the FPN level its size selects, at ``output_size``.

    ``layer(features, boxes)``: features one [B, h, w, C] map per level, finest
    first (only the first ``len(strides)`` are used: P2..P5, P6 never pools);
    boxes [B, R, 4] (y1, x1, y2, x2) input pixels -> [B, R, ph, pw, C] float32.
    The level of a box is floor(canonical_level + log2(sqrt(area) /
    canonical_size)), clamped (torchvision's LevelMapper). No weights.

    ``method`` (``Config.ROI_POOLER``): "roi_align" (the above) or "crop_and_resize"
    (matterport's PyramidROIAlign on boxes in matterport's frame,
    :mod:`mrcnn.ops.pyramid_crop`; ``sampling_ratio``, ``aligned`` and ``implementation``
    unused).
    """

    def __init__(
        self,
        output_size: int | Sequence[int] = 7,
        *,
        strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        aligned: bool = True,
        canonical_level: int = 4,
        canonical_size: float = 224.0,
        implementation: str = "auto",
        method: str = "roi_align",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in ("roi_align", "crop_and_resize"):
            raise ValueError(f"method must be 'roi_align' or 'crop_and_resize', got {method!r}")
        self.method = method
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if implementation == "gather" and int(sampling_ratio) <= 0:
            raise ValueError(f"implementation='gather' needs sampling_ratio > 0, got {sampling_ratio}")
        self.output_size = (
            (int(output_size), int(output_size)) if isinstance(output_size, int)
            else tuple(int(s) for s in output_size)
        )
        self.strides = tuple(int(s) for s in strides)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.canonical_level = int(canonical_level)
        self.canonical_size = float(canonical_size)
        self.implementation = implementation
        self.built = True  # no weights (Keras checks every layer is built before fit)

    @classmethod
    def from_model_config(cls, config: Config, output_size: int | Sequence[int], **kwargs) -> RoIPooler:
        """The pooler of a head: ``output_size`` is POOL_SIZE, MASK_POOL_SIZE or KEYPOINT_POOL_SIZE."""
        return cls(output_size, **pooler_settings(config), **kwargs)

    def call(self, features, boxes):
        if self.method == "crop_and_resize":
            return multilevel_crop_and_resize(
                list(features)[: len(self.strides)], boxes, self.output_size, strides=self.strides,
                canonical_level=self.canonical_level, canonical_size=self.canonical_size,
            )
        if self.implementation == "gather":
            return multilevel_roi_align_gather(
                list(features)[: len(self.strides)], boxes, self.output_size, strides=self.strides,
                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                canonical_level=self.canonical_level, canonical_size=self.canonical_size,
            )
        return multilevel_roi_align(
            list(features)[: len(self.strides)], boxes, self.output_size, strides=self.strides,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            canonical_level=self.canonical_level, canonical_size=self.canonical_size,
            implementation=self.implementation,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": list(self.output_size),
            "strides": list(self.strides),
            "sampling_ratio": self.sampling_ratio,
            "aligned": self.aligned,
            "canonical_level": self.canonical_level,
            "canonical_size": self.canonical_size,
            "implementation": self.implementation,
            "method": self.method,
        }


def pooler_settings(config: Config) -> dict:
    """The RoIPooler keywords a Config sets (everything but the output size)."""
    return {
        "strides": tuple(config.BACKBONE_STRIDES[:4]),
        "sampling_ratio": config.ROI_ALIGN_SAMPLING_RATIO,
        "aligned": config.ROI_ALIGN_ALIGNED,
        "canonical_level": config.ROI_CANONICAL_LEVEL,
        "canonical_size": config.ROI_CANONICAL_SIZE,
        "implementation": config.roi_align_implementation(),
        "method": config.ROI_POOLER,
    }
