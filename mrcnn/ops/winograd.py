"""3x3 convolution by Winograd's minimal filtering, F(4x4, 3x3), in stock TensorFlow ops.

``conv3x3_winograd(x, kernel)`` equals ``tf.nn.conv2d(x, kernel, 1, "SAME")`` (NHWC,
stride 1, zero padding 1) to float32 rounding (relative error ~1e-5; the direct
convolution's own summation order differs by ~1e-7). Each 4x4 output tile costs 36
multiplies per input/output channel pair instead of 144: the input is cut into
overlapping 6x6 tiles (stride 4), transformed (B^T d B), multiplied with the
transformed kernel (G g G^T) as 36 independent [tiles, C] x [C, K] matrix products,
and transformed back (A^T m A). Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks" (2016), interpolation points 0, +-1, +-2 and infinity.

Why (docs/design.md, "Winograd convolutions in training"): on a CPU, TensorFlow's
oneDNN convolution runs near the machine's peak forward, but its backward (input
and kernel gradients) costs ~3x the forward. The gradient of this function is two
more batched matrix products of the same size plus the transposed transforms, so
forward + backward of a 256-channel 3x3 convolution on a 128x128 map takes ~0.5x
the direct convolution's time (``scripts/bench_winograd.py``).

Every slice is ``tf.slice`` (its gradient is a ``Pad``); Python slicing would make
``StridedSlice`` ops whose gradients dominate the backward pass.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_BT = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)
# The 2-D transforms as single matrices over the flattened 6x6 tile: one matmul each.
_INPUT_TRANSFORM = np.kron(_BT, _BT).astype(np.float32)  # [36, 36]
_OUTPUT_TRANSFORM = np.kron(_AT, _AT).astype(np.float32)  # [16, 36]
_TILE, _WINDOW = 4, 6


def winograd_kernel(kernel: tf.Tensor) -> tf.Tensor:
    """G g G^T of a [3, 3, C, K] kernel -> [36, C, K] (row-major over the 6x6 tile)."""
    c, k = kernel.shape[2], kernel.shape[3]
    g = tf.constant(_G, kernel.dtype)
    rows = tf.matmul(g, tf.reshape(kernel, [3, 3 * c * k]))  # [6, 3*C*K]: G g
    both = tf.matmul(g[None], tf.reshape(rows, [_WINDOW, 3, c * k]))  # [6, 6, C*K]: (G g) G^T
    return tf.reshape(both, [_WINDOW * _WINDOW, c, k])


def conv3x3_winograd(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """x [B, H, W, C] float32, kernel [3, 3, C, K] -> [B, H, W, K], as a stride-1 "SAME" conv.

    B, H, W may be dynamic; C and K must be static. Differentiable in ``x`` and
    ``kernel`` (the gradients are Winograd products too).
    """
    c, k = kernel.shape[2], kernel.shape[3]
    if c is None or k is None:
        raise ValueError(f"conv3x3_winograd needs static channel counts, got kernel shape {kernel.shape}")
    if tuple(kernel.shape[:2]) != (3, 3):
        raise ValueError(f"conv3x3_winograd needs a 3x3 kernel, got shape {kernel.shape}")
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    n_h, n_w = (h + _TILE - 1) // _TILE, (w + _TILE - 1) // _TILE
    # One pixel of "SAME" padding on the top/left, and the bottom/right padded up to a
    # whole number of 4-pixel blocks plus one more, so every 6x6 window is in bounds.
    h_pad, w_pad = _TILE * (n_h + 1), _TILE * (n_w + 1)
    xp = tf.pad(x, [[0, 0], [1, h_pad - h - 1], [1, w_pad - w - 1], [0, 0]])
    # Overlapping 6-row windows at stride 4: block i's 4 rows + block i+1's first 2.
    blocks = tf.reshape(xp, [b, n_h + 1, _TILE, w_pad, c])
    rows = tf.concat([tf.slice(blocks, [0, 0, 0, 0, 0], [b, n_h, _TILE, w_pad, c]),
                      tf.slice(blocks, [0, 1, 0, 0, 0], [b, n_h, 2, w_pad, c])], axis=2)
    # The same along the columns.
    blocks = tf.reshape(rows, [b * n_h * _WINDOW, n_w + 1, _TILE, c])
    tiles = tf.concat([tf.slice(blocks, [0, 0, 0, 0], [-1, n_w, _TILE, c]),
                       tf.slice(blocks, [0, 1, 0, 0], [-1, n_w, 2, c])], axis=2)
    tiles = tf.reshape(tiles, [b, n_h, _WINDOW, n_w, _WINDOW, c])
    tiles = tf.transpose(tiles, [2, 4, 0, 1, 3, 5])  # [6, 6, B, nH, nW, C]
    transformed = tf.matmul(tf.constant(_INPUT_TRANSFORM, x.dtype), tf.reshape(tiles, [_WINDOW * _WINDOW, -1]))
    transformed = tf.reshape(transformed, [_WINDOW * _WINDOW, -1, c])  # [36, tiles, C]
    products = tf.matmul(transformed, winograd_kernel(tf.cast(kernel, x.dtype)))  # [36, tiles, K]
    out = tf.matmul(tf.constant(_OUTPUT_TRANSFORM, x.dtype), tf.reshape(products, [_WINDOW * _WINDOW, -1]))
    out = tf.reshape(out, [_TILE, _TILE, b, n_h, n_w, k])
    out = tf.reshape(tf.transpose(out, [2, 3, 0, 4, 1, 5]), [b, n_h * _TILE, n_w * _TILE, k])
    out = tf.slice(out, [0, 0, 0, 0], tf.stack([b, h, w, k]))
    return tf.ensure_shape(out, [*x.shape[:3], k])  # the dynamic slice drops the static shape
