"""``Conv3x3``: the 3x3 stride-1 convolution of the FPN, RPN, heads and ResNet blocks.

A ``keras.layers.Conv2D`` (same weights, names and checkpoints) that computes by
Winograd F(4x4, 3x3) (:func:`mrcnn.ops.winograd.conv3x3_winograd`) inside
:func:`winograd_scope` ``(True)`` when it computes in float32, and as the plain
convolution otherwise. ``MaskRCNN.train_step`` opens that scope when
``Config.TRAINING_CONV_ALGORITHM`` resolves to "winograd" (:func:`resolve_training_conv`);
inference, validation losses and exports always run the direct convolution, so
``detect()``, the SavedModel and every exported runtime compute the same numbers.

The scope is read while a function is traced, per thread: a ``tf.distribute``
replica traces its step in a thread of its own, inside ``train_step``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import keras
import tensorflow as tf

from mrcnn.config import TRAINING_CONV_ALGORITHMS
from mrcnn.ops.winograd import conv3x3_winograd

_state = threading.local()


@contextlib.contextmanager
def winograd_scope(enabled: bool) -> Iterator[None]:
    """``Conv3x3`` layers called (traced) inside compute by Winograd when ``enabled``."""
    previous = getattr(_state, "enabled", False)
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def winograd_enabled() -> bool:
    return getattr(_state, "enabled", False)


def resolve_training_conv(algorithm: str, mixed_precision: str | None) -> str:
    """``Config.TRAINING_CONV_ALGORITHM`` -> "winograd" or "direct" on this host.

    "auto" is "winograd" when the step computes in float32 and TensorFlow sees no
    GPU: cuDNN picks its own (Winograd among them) on a GPU, and half-precision
    Winograd transforms would lose too many bits.
    """
    if algorithm not in TRAINING_CONV_ALGORITHMS:
        raise ValueError(f"TRAINING_CONV_ALGORITHM must be one of {TRAINING_CONV_ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    if mixed_precision is not None or tf.config.list_logical_devices("GPU"):
        return "direct"
    return "winograd"


@keras.saving.register_keras_serializable(package="mrcnn")
class Conv3x3(keras.layers.Conv2D):
    """3x3 conv, stride 1, "same" (zero) padding; Winograd inside ``winograd_scope(True)``.

    Input [B, H, W, C] -> [B, H, W, filters]; the kernel is [3, 3, C, filters] as
    ``keras.layers.Conv2D``'s.
    """

    def __init__(self, filters: int, **kwargs):
        kwargs.pop("kernel_size", None)
        kwargs.pop("strides", None)
        kwargs.pop("padding", None)
        super().__init__(filters, 3, strides=1, padding="same", **kwargs)

    def convolution_op(self, inputs, kernel):
        if winograd_enabled() and self.groups == 1 and inputs.dtype == tf.float32:
            return conv3x3_winograd(inputs, kernel)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "strides", "padding"):
            config.pop(key, None)
        return config
