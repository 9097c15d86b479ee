"""Feature Pyramid Network: C2..C5 -> P2..P6 (torchvision's FeaturePyramidNetwork)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn.layers.conv import Conv3x3


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
    """

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        init = keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")  # kaiming_uniform a=1
        self.lateral = [
            keras.layers.Conv2D(channels, 1, kernel_initializer=init, name=f"fpn_inner{i + 2}")
            for i in range(4)
        ]
        self.output_convs = [
            Conv3x3(channels, kernel_initializer=init, name=f"fpn_layer{i + 2}")
            for i in range(4)
        ]

    def call(self, features):
        top = self.lateral[3](features[3])
        outputs = [self.output_convs[3](top)]
        for i in (2, 1, 0):
            lateral = self.lateral[i](features[i])
            top = lateral + upsample_nearest_to(top, tf.shape(lateral)[1:3])
            outputs.insert(0, self.output_convs[i](top))
        # LastLevelMaxPool: max_pool2d(kernel 1, stride 2) == subsampling.
        outputs.append(outputs[-1][:, ::2, ::2, :])
        return outputs

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
