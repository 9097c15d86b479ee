"""Feature Pyramid Network: C2..C5 -> P2..P6 (torchvision's FeaturePyramidNetwork)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn.layers.conv import Conv3x3
from mrcnn.layers.norm import STAGE_NORMS, make_stage_norm


def upsample_nearest_to(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour resize of [B, h, w, C] to ``size`` (H, W), PyTorch's rule.

    Source index = floor(dst * in / out), as ``F.interpolate(mode="nearest")``; for
    exact 2x this is plain pixel repetition. Written with gathers so it needs no
    resize kernel and matches torchvision when sizes are not exact multiples.
    """
    in_h, in_w = tf.shape(x)[1], tf.shape(x)[2]

    def index(out_size, in_size):
        scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
        src = tf.cast(tf.floor(tf.cast(tf.range(out_size), tf.float32) * scale), tf.int32)
        return tf.minimum(src, in_size - 1)

    x = tf.gather(x, index(size[0], in_h), axis=1)
    return tf.gather(x, index(size[1], in_w), axis=2)


@keras.saving.register_keras_serializable(package="mrcnn")
class FPN(keras.layers.Layer):
    """Lateral 1x1 convs, top-down nearest x2 + add, 3x3 output convs; P6 = P5[::2, ::2].

    Input: [C2, C3, C4, C5]. Output: [P2, P3, P4, P5, P6], each [B, h, w, channels].

    ``norm`` (None | "bn" | "syncbn" | "gn", ``Config.FPN_NORM``): each lateral and
    output conv is followed by that norm and has no bias, as torchvision's
    ``FeaturePyramidNetwork(norm_layer=...)`` (``Conv2dNormActivation`` without
    activation; maskrcnn_resnet50_fpn_v2) and Detectron2's ``FPN(norm=...)``; the
    norms are named ``fpn_inner{l}_norm`` / ``fpn_layer{l}_norm``.
    """

    def __init__(self, channels: int = 256, norm: str | None = None, gn_groups: int = 32, **kwargs):
        super().__init__(**kwargs)
        if norm not in STAGE_NORMS:
            raise ValueError(f"FPN norm must be one of {STAGE_NORMS}, got {norm!r}")
        self.channels = channels
        self.norm = norm
        self.gn_groups = gn_groups
        init = keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")  # kaiming_uniform a=1
        bias = norm is None
        self.lateral = [
            keras.layers.Conv2D(channels, 1, use_bias=bias, kernel_initializer=init, name=f"fpn_inner{i + 2}")
            for i in range(4)
        ]
        self.output_convs = [
            Conv3x3(channels, use_bias=bias, kernel_initializer=init, name=f"fpn_layer{i + 2}")
            for i in range(4)
        ]
        self.lateral_norms = [make_stage_norm(norm, f"fpn_inner{i + 2}_norm", gn_groups) for i in range(4)]
        self.output_norms = [make_stage_norm(norm, f"fpn_layer{i + 2}_norm", gn_groups) for i in range(4)]

    def _apply(self, conv, norm, x, training):
        x = conv(x)
        return x if norm is None else norm(x, training=training)

    def call(self, features, training=None):
        top = self._apply(self.lateral[3], self.lateral_norms[3], features[3], training)
        outputs = [self._apply(self.output_convs[3], self.output_norms[3], top, training)]
        for i in (2, 1, 0):
            lateral = self._apply(self.lateral[i], self.lateral_norms[i], features[i], training)
            top = lateral + upsample_nearest_to(top, tf.shape(lateral)[1:3])
            outputs.insert(0, self._apply(self.output_convs[i], self.output_norms[i], top, training))
        # LastLevelMaxPool: max_pool2d(kernel 1, stride 2) == subsampling.
        outputs.append(outputs[-1][:, ::2, ::2, :])
        return outputs

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "norm": self.norm, "gn_groups": self.gn_groups}
