"""Mixed precision: which stages compute in half precision, and the casts at their edges.

``Config.MIXED_PRECISION`` (None, "float16" or "bfloat16") picks a Keras dtype
policy for the *compute* stages only: the backbone, the FPN, the RPN head's
convolutions and the box / mask / keypoint heads ("mixed_float16" /
"mixed_bfloat16": variables float32, matmuls and convolutions in half
precision). Everything that handles coordinates or probabilities stays float32:
normalisation of the input, anchors, box decoding, proposals, NMS, RoIAlign
(its inputs are cast to float32 by the float32 ``RoIHeads``/``RPN`` layers that
call it, so the custom op and the sampling coordinates never see half values),
the targets, the losses and the detections.

The policy is applied while the compute stages are *constructed*
(:func:`dtype_policy_scope`): Keras gives a layer the global policy at
construction, so every sub-layer of a stage (convolutions, norms, dense layers)
gets it without each constructor taking a ``dtype`` argument, and the float32
stages are built under an explicit "float32" scope, so a global policy a user
set elsewhere does not leak into them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from mrcnn.config import MIXED_PRECISIONS

_POLICIES = {None: "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def policy_name(mixed_precision: str | None) -> str:
    """The Keras dtype policy of the compute stages for ``Config.MIXED_PRECISION``."""
    if mixed_precision not in _POLICIES:
        raise ValueError(f"MIXED_PRECISION must be one of {MIXED_PRECISIONS}, got {mixed_precision!r}")
    return _POLICIES[mixed_precision]


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Layers constructed inside get ``policy`` (e.g. "mixed_bfloat16"); the global policy is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def to_float32(x: tf.Tensor) -> tf.Tensor:
    """``x`` as float32 (no-op when it already is): the exit cast of a half-precision head."""
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)
