"""ResNet / ResNeXt backbones returning C2..C5.

Layout and layer names follow torchvision's ``resnet`` (``conv1``, ``bn1``,
``layer{1..4}_{block}_conv{1..3}``, ``..._downsample_0/1``) so converted weights
map one to one. Convolutions followed by a norm have no bias. Padding is
explicit and symmetric (as PyTorch), not Keras "same", which pads stride-2
convolutions asymmetrically.
"""

from __future__ import annotations

import keras

from mrcnn.layers.conv import Conv3x3
from mrcnn.layers.norm import make_norm

# name: (block type, blocks per stage, groups, width per group)
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
}


def _conv(filters, kernel, stride, name, groups=1):
    init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    if kernel == 3 and stride == 1 and groups == 1:
        # Symmetric "same" padding equals the explicit pad at stride 1; Conv3x3 can then
        # train by Winograd (layers/conv.py).
        return Conv3x3(filters, use_bias=False, kernel_initializer=init, name=name)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                               groups=groups, kernel_initializer=init, name=name)


class _ConvNorm(keras.layers.Layer):
    """pad -> conv (no bias) -> norm [-> relu]."""

    def __init__(self, filters, kernel, stride, norm, groups_norm, name, relu=True, groups=1):
        super().__init__(name=name)
        self.conv = _conv(filters, kernel, stride, name=f"{name}_conv", groups=groups)
        self.pad = 0 if isinstance(self.conv, Conv3x3) else (kernel - 1) // 2
        self.norm = make_norm(norm, f"{name}_norm", groups_norm)
        self.relu = relu

    def call(self, x, training=None):
        if self.pad:
            x = keras.ops.pad(x, [[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]])
        x = self.norm(self.conv(x), training=training)
        return keras.ops.relu(x) if self.relu else x


class BasicBlock(keras.layers.Layer):
    expansion = 1

    def __init__(self, planes, stride, downsample, norm, gn_groups, name, **_):
        super().__init__(name=name)
        self.conv1 = _ConvNorm(planes, 3, stride, norm, gn_groups, f"{name}_1")
        self.conv2 = _ConvNorm(planes, 3, 1, norm, gn_groups, f"{name}_2", relu=False)
        self.downsample = (
            _ConvNorm(planes, 1, stride, norm, gn_groups, f"{name}_downsample", relu=False)
            if downsample
            else None
        )

    def call(self, x, training=None):
        shortcut = self.downsample(x, training=training) if self.downsample else x
        y = self.conv2(self.conv1(x, training=training), training=training)
        return keras.ops.relu(y + shortcut)


class Bottleneck(keras.layers.Layer):
    expansion = 4

    def __init__(self, planes, stride, downsample, norm, gn_groups, name, groups=1,
                 width_per_group=64, stride_in_1x1=False):
        super().__init__(name=name)
        width = int(planes * (width_per_group / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _ConvNorm(width, 1, s1, norm, gn_groups, f"{name}_1")
        self.conv2 = _ConvNorm(width, 3, s3, norm, gn_groups, f"{name}_2", groups=groups)
        self.conv3 = _ConvNorm(planes * 4, 1, 1, norm, gn_groups, f"{name}_3", relu=False)
        self.downsample = (
            _ConvNorm(planes * 4, 1, stride, norm, gn_groups, f"{name}_downsample", relu=False)
            if downsample
            else None
        )

    def call(self, x, training=None):
        shortcut = self.downsample(x, training=training) if self.downsample else x
        y = self.conv3(self.conv2(self.conv1(x, training=training), training=training), training=training)
        return keras.ops.relu(y + shortcut)


@keras.saving.register_keras_serializable(package="mrcnn")
class ResNet(keras.layers.Layer):
    """ResNet/ResNeXt feature extractor.

    Input: [B, H, W, 3] normalised float32. Output: [C2, C3, C4, C5] at strides
    4, 8, 16, 32 with ``stage_channels`` channels. ``stem_pool_padding``
    (``Config.STEM_POOL_PADDING``): "symmetric" (torchvision) or "same" (TensorFlow's,
    matterport's).
    """

    def __init__(self, architecture="resnet50", norm="frozen_bn", stride_in_1x1=False,
                 base_width=64, gn_groups=32, freeze_stages=0, stem_pool_padding="symmetric", **kwargs):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
        if stem_pool_padding not in ("symmetric", "same"):
            raise ValueError(f"stem_pool_padding must be 'symmetric' or 'same', got {stem_pool_padding!r}")
        self.stem_pool_padding = stem_pool_padding
        self.architecture = architecture
        self.norm = norm
        self.stride_in_1x1 = stride_in_1x1
        self.base_width = base_width
        self.gn_groups = gn_groups
        self.freeze_stages = freeze_stages
        kind, depths, groups, width_per_group = ARCHITECTURES[architecture]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        self.stem = _ConvNorm(base_width, 7, 2, norm, gn_groups, "conv1")
        self.stages = []
        in_channels = base_width
        self.stage_channels = []
        for i, depth in enumerate(depths):
            planes = base_width * 2**i
            blocks = []
            for b in range(depth):
                stride = 2 if (b == 0 and i > 0) else 1
                downsample = b == 0 and (stride != 1 or in_channels != planes * block_cls.expansion)
                blocks.append(
                    block_cls(planes, stride, downsample, norm, gn_groups, f"layer{i + 1}_{b}",
                              groups=groups, width_per_group=width_per_group,
                              stride_in_1x1=stride_in_1x1)
                )
                in_channels = planes * block_cls.expansion
            self.stages.append(blocks)
            self.stage_channels.append(in_channels)
        # None: decided by the start (mrcnn.checkpoint.pretrained, which calls freeze()), 0 until then.
        self._set_trainable(freeze_stages or 0)

    def freeze(self, stages: int) -> None:
        """Make the stem (stage 1) and residual stages 2..``stages`` non-trainable (as the
        ``freeze_stages`` argument does at construction); call before ``compile()``."""
        self.freeze_stages = int(stages)
        self._set_trainable(self.freeze_stages)

    def _set_trainable(self, stages: int) -> None:
        # Stage 1 is the stem, 2..5 the residual stages (C2..C5), as Detectron2 counts.
        if stages >= 1:
            self.stem.trainable = False
        for i, blocks in enumerate(self.stages):
            if stages >= i + 2:
                for block in blocks:
                    block.trainable = False

    def call(self, x, training=None):
        x = self.stem(x, training=training)
        if self.stem_pool_padding == "same":  # TensorFlow's: on even sizes only after (matterport)
            x = keras.ops.max_pool(x, 3, strides=2, padding="same")
        else:
            x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # after ReLU, so 0 == -inf for max
            x = keras.ops.max_pool(x, 3, strides=2, padding="valid")
        outputs = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x, training=training)
            outputs.append(x)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "architecture": self.architecture,
            "norm": self.norm,
            "stride_in_1x1": self.stride_in_1x1,
            "base_width": self.base_width,
            "gn_groups": self.gn_groups,
            "freeze_stages": self.freeze_stages,
            "stem_pool_padding": self.stem_pool_padding,
        }
