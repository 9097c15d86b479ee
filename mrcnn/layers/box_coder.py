"""``BoxCoder``: the (dy, dx, dh, dw) box parametrisation with its weights."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from mrcnn.ops import boxes as box_ops


@keras.saving.register_keras_serializable(package="mrcnn")
class BoxCoder(keras.layers.Layer):
    """Encodes boxes relative to reference boxes and decodes them back (torchvision's ``BoxCoder``).

    ``weights`` (wy, wx, wh, ww) scale the deltas: (1, 1, 1, 1) for the RPN,
    (10, 10, 5, 5) for the box head. Boxes are (y1, x1, y2, x2) input pixels;
    decoding clamps dh, dw at log(1000/16) as torchvision. No weights (variables).
    ``layer(deltas, reference)`` decodes.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.box_weights = tuple(float(w) for w in weights)
        if len(self.box_weights) != 4:
            raise ValueError(f"BoxCoder weights must be 4 numbers (wy, wx, wh, ww), got {weights!r}")
        self.built = True  # no weights (Keras checks every layer is built before fit)

    def encode(self, boxes: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
        """[..., 4] boxes relative to [..., 4] reference boxes -> [..., 4] weighted deltas."""
        return box_ops.encode_boxes(boxes, reference, self.box_weights)

    def decode(self, deltas: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
        """[..., 4] weighted deltas applied to (broadcastable) [..., 4] reference boxes -> boxes."""
        return box_ops.decode_boxes(deltas, reference, self.box_weights)

    def call(self, deltas, reference):
        return self.decode(deltas, reference)

    def get_config(self):
        return {**super().get_config(), "weights": list(self.box_weights)}
