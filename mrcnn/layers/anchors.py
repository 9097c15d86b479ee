"""``AnchorGenerator``: the anchors of every FPN level for a padded input batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from mrcnn.ops.anchors import multilevel_anchors

if TYPE_CHECKING:
    from mrcnn.config import Config


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorGenerator(keras.layers.Layer):
    """One anchor size per level, ``ratios`` (h / w) at every location (torchvision's rule).

    ``layer(images, features)``: images [B, H, W, 3] (only the padded size is read),
    features one [B, h, w, C] map per level -> a list of [h * w * A, 4] float32
    anchors (y1, x1, y2, x2) input pixels, A = len(ratios), location-major then
    ratio order (the RPN head's flattening order). ``strides`` None derives each
    level's stride as input_size // grid_size (torchvision); a tuple gives nominal
    strides (Detectron2). ``coordinates`` (``Config.BOX_COORDINATES``): "pixels", or
    "matterport" for matterport's frame, where the far edges end one pixel in
    (y1, x1, y2 - 1, x2 - 1). No weights.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] | None = None,
        round_to_int: bool = True,
        offset: float = 0.0,
        coordinates: str = "pixels",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if coordinates not in ("pixels", "matterport"):
            raise ValueError(f"coordinates must be 'pixels' or 'matterport', got {coordinates!r}")
        self.coordinates = coordinates
        self.sizes = tuple(sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.strides = None if strides is None else tuple(int(s) for s in strides)
        self.round_to_int = bool(round_to_int)
        self.offset = float(offset)
        self.built = True  # no weights (Keras checks every layer is built before fit)

    @classmethod
    def from_model_config(cls, config: Config, **kwargs) -> AnchorGenerator:
        return cls(
            sizes=config.RPN_ANCHOR_SCALES,
            ratios=config.RPN_ANCHOR_RATIOS,
            strides=None if config.ANCHOR_STRIDE_FROM_GRID else config.BACKBONE_STRIDES,
            round_to_int=config.ROUND_ANCHORS,
            offset=config.ANCHOR_OFFSET,
            coordinates=config.BOX_COORDINATES,
            **kwargs,
        )

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios)

    def call(self, images, features):
        anchors = multilevel_anchors(
            tf.shape(images)[1:3],
            [tf.shape(f)[1:3] for f in features],
            self.sizes,
            self.ratios,
            strides=self.strides,
            round_to_int=self.round_to_int,
            offset=self.offset,
        )
        if self.coordinates == "matterport":
            anchors = [a - tf.constant([0.0, 0.0, 1.0, 1.0]) for a in anchors]
        return anchors

    def get_config(self):
        return {
            **super().get_config(),
            "sizes": list(self.sizes),
            "ratios": list(self.ratios),
            "strides": None if self.strides is None else list(self.strides),
            "round_to_int": self.round_to_int,
            "offset": self.offset,
            "coordinates": self.coordinates,
        }
