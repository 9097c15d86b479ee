"""Balanced random sampling of positives and negatives, batched and fixed-shape."""

from __future__ import annotations

import tensorflow as tf


def _uniform(shape: tf.Tensor, seed: int | None, generator: tf.random.Generator | None) -> tf.Tensor:
    # A generator made outside a tf.distribute strategy cannot be shared by its replicas.
    if generator is not None and seed is None and not tf.distribute.has_strategy():
        return generator.uniform(shape)
    return tf.random.uniform(shape, seed=seed)


def sample_balanced(
    positive: tf.Tensor,
    negative: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seed: int | None = None,
    generator: tf.random.Generator | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pick up to ``num_samples`` candidates per image, at most a fraction positive.

    As torchvision's BalancedPositiveNegativeSampler: num_pos = min(#positives,
    int(num_samples * positive_fraction)), num_neg = min(#negatives,
    num_samples - num_pos), each drawn uniformly at random.

    Args:
      positive, negative: [B, N] bool, disjoint.
      seed: an op seed for ``tf.random.uniform``.
      generator: draw from this ``tf.random.Generator`` instead (a resumable state;
        see ``MaskRCNN.sampling_generator``); not under a ``tf.distribute`` strategy,
        nor with ``seed``.
    Returns:
      indices: [B, num_samples] int32 into N (positives first, 0 in empty slots);
      is_positive: [B, num_samples] bool; valid: [B, num_samples] bool.
    """
    max_pos = int(num_samples * positive_fraction)
    batch = tf.shape(positive)[0]
    n = tf.shape(positive)[1]
    # top_k needs at least k columns; padding columns are never positive/negative.
    pad = tf.maximum(num_samples - n, 0)
    positive = tf.pad(positive, [[0, 0], [0, pad]])
    negative = tf.pad(negative, [[0, 0], [0, pad]])
    rand = _uniform(tf.shape(positive), seed, generator)
    pos_key, pos_idx = tf.math.top_k(tf.where(positive, rand, -1.0), k=max_pos) if max_pos else (
        tf.zeros([batch, 0]), tf.zeros([batch, 0], tf.int32))
    pos_ok = pos_key >= 0.0
    num_pos = tf.reduce_sum(tf.cast(pos_ok, tf.int32), axis=1, keepdims=True)
    neg_key, neg_idx = tf.math.top_k(tf.where(negative, rand, -1.0), k=num_samples)
    neg_ok = (neg_key >= 0.0) & (tf.range(num_samples)[None, :] < num_samples - num_pos)

    idx = tf.concat([pos_idx, neg_idx], axis=1)
    ok = tf.concat([pos_ok, neg_ok], axis=1)
    is_pos = tf.concat([pos_ok, tf.zeros_like(neg_ok)], axis=1)
    # Compact the chosen entries into the first slots, keeping their order.
    slots = tf.shape(idx)[1]
    order_key = tf.where(ok, -tf.cast(tf.range(slots), tf.float32)[None, :], -1e9)
    _, order = tf.math.top_k(order_key, k=num_samples)
    valid = tf.gather(ok, order, batch_dims=1)
    indices = tf.where(valid, tf.gather(idx, order, batch_dims=1), 0)
    is_positive = tf.gather(is_pos, order, batch_dims=1) & valid
    return indices, is_positive, valid
