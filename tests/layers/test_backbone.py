"""Backbone and FPN structure."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.layers.backbone import ResNet
from mrcnn.layers.fpn import FPN, upsample_nearest_to
from mrcnn.layers.norm import FrozenBatchNorm


@pytest.mark.parametrize("arch,channels", [
    ("resnet18", [16, 32, 64, 128]),
    ("resnet50", [64, 128, 256, 512]),
])
def test_stage_shapes_and_strides(arch, channels):
    net = ResNet(arch, norm="gn", base_width=16, gn_groups=8)
    outs = net(tf.zeros([2, 96, 64, 3]))
    assert [tuple(o.shape) for o in outs] == [
        (2, 96 // s, 64 // s, c) for s, c in zip((4, 8, 16, 32), channels)
    ]
    convs = [layer for layer in net._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(c.use_bias for c in convs)


def test_resnext_grouped_convolution_runs():
    net = ResNet("resnext101_32x8d", norm="frozen_bn", base_width=64)
    c2 = net(tf.zeros([1, 64, 64, 3]))[0]
    assert c2.shape == (1, 16, 16, 256)
    conv2 = next(layer for layer in net._flatten_layers() if layer.name == "layer1_0_2_conv")
    assert conv2.groups == 32 and conv2.filters == 256  # width = 64 * 8/64 * 32


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_stride_placement(stride_in_1x1):
    net = ResNet("resnet50", stride_in_1x1=stride_in_1x1)
    net(tf.zeros([1, 64, 64, 3]))
    layers = {layer.name: layer for layer in net._flatten_layers()}
    s1 = layers["layer2_0_1_conv"].strides
    s3 = layers["layer2_0_2_conv"].strides
    assert (s1, s3) == (((2, 2), (1, 1)) if stride_in_1x1 else ((1, 1), (2, 2)))


def test_frozen_stages_and_frozen_bn():
    net = ResNet("resnet18", norm="frozen_bn", base_width=16, freeze_stages=2)
    net(tf.zeros([1, 64, 64, 3]))
    trainable = {v.path.split("/")[1] for v in net.trainable_variables}
    assert not any(name.startswith(("conv1", "layer1_")) for name in trainable)
    assert any(name.startswith("layer2_") for name in trainable)
    # Frozen BN has no trainable weights and ignores training=True.
    bn = FrozenBatchNorm()
    x = tf.random.normal([2, 4, 4, 3]) * 5 + 2
    bn.build(x.shape)
    bn.moving_mean.assign([1.0, 2.0, 3.0])
    bn.moving_variance.assign([4.0, 4.0, 4.0])
    expected = (x - [1.0, 2.0, 3.0]) / np.sqrt(4.0 + 1e-5)
    np.testing.assert_allclose(bn(x, training=True), expected, rtol=1e-5, atol=1e-5)
    assert not bn.trainable_weights


def test_fpn_levels_and_nearest_upsampling():
    feats = [tf.random.normal([1, 64 // s, 48 // s, c]) for s, c in zip((4, 8, 16, 32), (8, 16, 32, 64))]
    ps = FPN(16)(feats)
    assert [tuple(p.shape[1:3]) for p in ps] == [(16, 12), (8, 6), (4, 3), (2, 1), (1, 1)]
    assert all(p.shape[-1] == 16 for p in ps)
    # torch nearest: src = floor(dst * in / out) — for 3 -> 5: [0, 0, 1, 1, 2]
    x = tf.reshape(tf.range(3, dtype=tf.float32), [1, 3, 1, 1])
    up = upsample_nearest_to(x, tf.constant([5, 1]))
    assert up.numpy().ravel().tolist() == [0, 0, 1, 1, 2]
