"""Normalisation layers of the backbone: frozen BN, BN, GroupNorm."""

from __future__ import annotations

import keras
import tensorflow as tf

BN_EPSILON = 1e-5  # torchvision's (Keras' default 1e-3 would not match pretrained weights)


@keras.saving.register_keras_serializable(package="mrcnn")
class FrozenBatchNorm(keras.layers.Layer):
    """Batch norm with fixed statistics and affine parameters: y = x * scale + shift.

    The four vectors are non-trainable weights (so checkpoints and converted
    pretrained weights carry them) and ``training`` never changes them, as
    torchvision's ``FrozenBatchNorm2d``.
    """

    def __init__(self, epsilon: float = BN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        init = {"gamma": "ones", "beta": "zeros", "moving_mean": "zeros", "moving_variance": "ones"}
        for name, initializer in init.items():
            setattr(
                self, name, self.add_weight(name=name, shape=(channels,), initializer=initializer, trainable=False)
            )

    def call(self, inputs):
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        shift = self.beta - self.moving_mean * scale
        return inputs * scale + shift

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def make_norm(kind: str, name: str, groups: int = 32) -> keras.layers.Layer:
    """A normalisation layer: "frozen_bn", "bn" or "gn"."""
    if kind == "frozen_bn":
        return FrozenBatchNorm(name=name)
    if kind == "bn":
        return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=name)
    if kind == "gn":
        return keras.layers.GroupNormalization(groups=groups, epsilon=BN_EPSILON, name=name)
    raise ValueError(f"unknown normalisation {kind!r}; choose frozen_bn, bn or gn")
