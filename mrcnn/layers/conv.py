"""``Conv3x3``: the 3x3 stride-1 convolution of the FPN, RPN, heads and ResNet blocks.

A ``keras.layers.Conv2D`` (same weights, names and checkpoints) that computes by
Winograd F(4x4, 3x3) (:func:`mrcnn.ops.winograd.conv3x3_winograd`) inside
:func:`winograd_scope` when it computes in float32 (and, in the "winograd-large"
mode, when the layer is large enough for it to pay), and as the plain convolution
otherwise. ``MaskRCNN.train_step`` opens that scope with
``Config.TRAINING_CONV_ALGORITHM`` resolved on this host (:func:`resolve_training_conv`);
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

from mrcnn.ops.winograd import conv3x3_winograd

_state = threading.local()


# Where "auto" computes by Winograd: measured per layer on a 2-core AVX-512 CPU
# (scripts/bench_winograd.py), forward + backward against the direct convolution:
# 0.55x at 128x128x256, 0.77x at 32x32x256, 0.85x at 64x64x128, 0.89x for 40 RoIs of
# 14x14x256, but 1.1-2.3x with 32 or 64 channels and 1.3-2x on maps of 8x8 or less.
MIN_CHANNELS = 128
MIN_AREA = 14 * 14
RESOLVED_ALGORITHMS = ("direct", "winograd", "winograd-large")


@contextlib.contextmanager
def winograd_scope(mode: str | bool) -> Iterator[None]:
    """``Conv3x3`` layers called (traced) inside compute by Winograd according to ``mode``.

    ``mode``: "winograd" (True) every float32 ``Conv3x3``; "winograd-large" those with
    at least ``MIN_CHANNELS`` input and output channels on maps of at least
    ``MIN_AREA`` pixels (or of unknown size); "direct" (False) none.
    """
    mode = {True: "winograd", False: "direct"}.get(mode, mode)
    if mode not in RESOLVED_ALGORITHMS:
        raise ValueError(f"winograd_scope mode must be one of {RESOLVED_ALGORITHMS}, got {mode!r}")
    previous = winograd_mode()
    _state.mode = mode
    try:
        yield
    finally:
        _state.mode = previous


def winograd_mode() -> str:
    """The mode of the innermost :func:`winograd_scope` of this thread ("direct" outside)."""
    return getattr(_state, "mode", "direct")


def resolve_training_conv(algorithm: str, mixed_precision: str | None) -> str:
    """``Config.TRAINING_CONV_ALGORITHM`` -> "direct", "winograd" or "winograd-large" here.

    "auto" is "winograd-large" (Winograd where it is faster, see ``MIN_CHANNELS``) when
    the step computes in float32 and TensorFlow sees no GPU, else "direct": cuDNN picks
    its own algorithms (Winograd among them) on a GPU, and half-precision Winograd
    transforms would lose too many bits.
    """
    if algorithm != "auto":  # "direct" / "winograd" (Config.validate checks the value)
        return algorithm
    if mixed_precision is not None or tf.config.list_logical_devices("GPU"):
        return "direct"
    return "winograd-large"


@keras.saving.register_keras_serializable(package="mrcnn")
class Conv3x3(keras.layers.Conv2D):
    """3x3 conv, stride 1, "same" (zero) padding; Winograd inside :func:`winograd_scope`.

    Input [B, H, W, C] -> [B, H, W, filters]; the kernel is [3, 3, C, filters] as
    ``keras.layers.Conv2D``'s.
    """

    def __init__(self, filters: int, **kwargs):
        kwargs.pop("kernel_size", None)
        kwargs.pop("strides", None)
        kwargs.pop("padding", None)
        super().__init__(filters, 3, strides=1, padding="same", **kwargs)

    def _computes_by_winograd(self, inputs) -> bool:
        mode = winograd_mode()
        if mode == "direct" or self.groups != 1 or inputs.dtype != tf.float32:
            return False
        if mode == "winograd":
            return True
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        large_map = height is None or width is None or height * width >= MIN_AREA
        return large_map and channels is not None and min(channels, self.filters) >= MIN_CHANNELS

    def convolution_op(self, inputs, kernel):
        if self._computes_by_winograd(inputs):
            return conv3x3_winograd(inputs, kernel)
        return super().convolution_op(inputs, kernel)

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "strides", "padding"):
            config.pop(key, None)
        return config
