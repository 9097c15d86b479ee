"""Normalisation layers: frozen BN, BN, SyncBN, GroupNorm (backbone, FPN) and RoI batch norm (heads)."""

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


# Kinds of normalisation the FPN and the RoI heads take (Config.FPN_NORM, HEAD_NORM); None = none.
STAGE_NORMS = (None, "bn", "syncbn", "gn")


def make_norm(kind: str, name: str, groups: int = 32) -> keras.layers.Layer:
    """A normalisation layer: "frozen_bn", "bn", "syncbn" or "gn".

    "syncbn" is ``keras.layers.BatchNormalization(synchronized=True)``: under a
    ``tf.distribute`` strategy its training-mode mean and variance are those of the
    global batch (all replicas), as PyTorch's ``SyncBatchNorm``; outside one it is "bn".
    Keras' momentum 0.9 is PyTorch's momentum 0.1.
    """
    if kind == "frozen_bn":
        return FrozenBatchNorm(name=name)
    if kind in ("bn", "syncbn"):
        return keras.layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=0.9, synchronized=kind == "syncbn", name=name
        )
    if kind == "gn":
        return keras.layers.GroupNormalization(groups=groups, epsilon=BN_EPSILON, name=name)
    raise ValueError(f"unknown normalisation {kind!r}; choose frozen_bn, bn, syncbn or gn")


@keras.saving.register_keras_serializable(package="mrcnn")
class RoIBatchNorm(keras.layers.Layer):
    """Batch norm over a batch of RoIs, of which only the valid ones count.

    Input [N, h, w, C] (N RoIs of all images, padding slots included), ``valid`` [N]
    bool (the real RoIs; not named ``mask``, which Keras would propagate). In
    training mode the mean and (biased) variance are those of the valid RoIs' pixels; with ``synchronized`` they are summed over every
    replica of a ``tf.distribute`` strategy first, so each RoI of the global batch
    weighs the same (Detectron2's ``NaiveSyncBatchNorm(stats_mode="N")``; with one
    replica this is plain BatchNorm over the real RoIs, as torchvision's heads see
    them: torchvision keeps no padding slots). Inference uses the moving statistics.

    Why not ``keras.layers.BatchNormalization(mask=...)``: its masked moments are not
    synchronized across replicas and add Keras' epsilon to the count.

    Weights are named as Keras' BatchNormalization's (gamma, beta, moving_mean,
    moving_variance), so converters treat both alike; momentum 0.9 = PyTorch's 0.1.
    """

    def __init__(self, epsilon: float = BN_EPSILON, momentum: float = 0.9, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum
        self.synchronized = synchronized

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(channels,), initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(channels,), initializer="ones",
                                               trainable=False)

    def _sum(self, x):
        """Sum over the replicas when synchronized (inside a replica context)."""
        context = tf.distribute.get_replica_context()
        if self.synchronized and context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
        return x

    def call(self, inputs, training=None, valid=None):
        # Statistics in float32 at least (half-precision heads), float64 stays float64.
        dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
        x = tf.cast(inputs, dtype)
        if training and self.trainable:
            axes = list(range(len(x.shape) - 1))
            if valid is None:
                weight = tf.ones_like(x[..., :1])
            else:
                weight = tf.cast(tf.reshape(valid, [-1] + [1] * (len(x.shape) - 1)), dtype)
                weight = tf.broadcast_to(weight, tf.concat([tf.shape(x)[:-1], [1]], axis=0))
            total = self._sum(tf.reduce_sum(weight))
            count = tf.maximum(total, 1.0)
            mean = self._sum(tf.reduce_sum(x * weight, axis=axes)) / count
            # Two passes (mean, then squared deviations): no cancellation.
            variance = self._sum(tf.reduce_sum(tf.square(x - mean) * weight, axis=axes)) / count
            # No RoI anywhere: the moving statistics stay (as NaiveSyncBatchNorm's "N" mode).
            m = tf.where(total > 0, tf.constant(self.momentum, dtype), tf.constant(1.0, dtype))
            self.moving_mean.assign(tf.cast(tf.cast(self.moving_mean, dtype) * m + mean * (1.0 - m),
                                            self.moving_mean.dtype))
            self.moving_variance.assign(tf.cast(tf.cast(self.moving_variance, dtype) * m + variance * (1.0 - m),
                                                self.moving_variance.dtype))
        else:
            mean, variance = (tf.cast(v, dtype) for v in (self.moving_mean, self.moving_variance))
        gamma, beta = tf.cast(self.gamma, dtype), tf.cast(self.beta, dtype)
        y = (x - mean) * (gamma * tf.math.rsqrt(variance + self.epsilon)) + beta
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum,
                "synchronized": self.synchronized}


def make_stage_norm(kind: str | None, name: str, groups: int = 32, rois: bool = False) -> keras.layers.Layer | None:
    """The norm of an FPN or head conv (``kind`` in :data:`STAGE_NORMS`; None -> None).

    ``rois``: the layer normalises a batch of RoIs with padding slots (box and mask
    heads): "bn"/"syncbn" are then :class:`RoIBatchNorm`, which takes the RoIs' validity.
    """
    if kind is None:
        return None
    if kind not in ("bn", "syncbn", "gn"):
        raise ValueError(f"unknown normalisation {kind!r}; choose one of {STAGE_NORMS}")
    if rois and kind != "gn":
        return RoIBatchNorm(synchronized=kind == "syncbn", name=name)
    return make_norm(kind, name, groups)
