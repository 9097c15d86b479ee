"""The RoI heads: box head (2 FC + class/box predictors), mask head (FCN), keypoint head."""

from __future__ import annotations

import keras
import tensorflow as tf

# He init, fan-out (torchvision's mask and keypoint heads).
_HE_FAN_OUT = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _relu_conv_stack(channels: int, count: int, prefix: str) -> list[keras.layers.Layer]:
    """``count`` x (3x3 conv, same padding, + ReLU), named ``{prefix}1..{prefix}{count}``."""
    return [
        keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=_HE_FAN_OUT,
                            name=f"{prefix}{i + 1}")
        for i in range(count)
    ]


def _per_roi(fcn, pooled: tf.Tensor) -> tf.Tensor:
    """Apply an image-to-image ``fcn`` to every RoI: [B, R, h, w, C] -> [B, R, h', w', C']."""
    shape = tf.shape(pooled)
    x = tf.reshape(pooled, tf.concat([[-1], shape[2:]], axis=0))
    x = fcn(tf.ensure_shape(x, [None, *pooled.shape[2:]]))
    return tf.reshape(x, tf.concat([shape[:2], tf.shape(x)[1:]], axis=0))


@keras.saving.register_keras_serializable(package="mrcnn")
class BoxHead(keras.layers.Layer):
    """Flatten -> FC -> ReLU -> FC -> ReLU -> class logits and class-specific deltas.

    Input: [B, R, 7, 7, C] pooled features. Output: (logits [B, R, K+1],
    deltas [B, R, K+1, 4] as (dy, dx, dh, dw) scaled by the box-head weights).
    The flatten order is (h, w, c) — weights converted from PyTorch (c, h, w)
    must be permuted (see ``mrcnn/convert.py``).
    """

    def __init__(self, num_classes: int, fc_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_size = fc_size
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # torch Linear default
        self.fc6 = keras.layers.Dense(fc_size, activation="relu", kernel_initializer=init, name="fc6")
        self.fc7 = keras.layers.Dense(fc_size, activation="relu", kernel_initializer=init, name="fc7")
        self.cls_score = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="cls_score"
        )
        self.bbox_pred = keras.layers.Dense(
            num_classes * 4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="bbox_pred"
        )

    def call(self, pooled):
        shape = tf.shape(pooled)
        flat_size = pooled.shape[2] * pooled.shape[3] * pooled.shape[4]
        x = tf.reshape(pooled, [shape[0], shape[1], flat_size])
        x = self.fc7(self.fc6(x))
        logits = self.cls_score(x)
        deltas = tf.reshape(self.bbox_pred(x), [shape[0], shape[1], self.num_classes, 4])
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_size": self.fc_size}


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskHead(keras.layers.Layer):
    """num_convs x (3x3 conv + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv.

    Input: [B, R, 14, 14, C]. Output: [B, R, 28, 28, K+1] mask logits (one sigmoid
    mask per class; the loss and inference pick the channel of the class).
    """

    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        init = _HE_FAN_OUT
        self.convs = _relu_conv_stack(channels, num_convs, "mask_fcn")
        self.deconv = keras.layers.Conv2DTranspose(
            channels, 2, strides=2, activation="relu", kernel_initializer=init, name="conv5_mask"
        )
        self.logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, name="mask_fcn_logits")

    def call(self, pooled):
        return _per_roi(self._fcn, pooled)

    def _fcn(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.logits(self.deconv(x))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "num_convs": self.num_convs,
        }


@keras.saving.register_keras_serializable(package="mrcnn")
class KeypointHead(keras.layers.Layer):
    """Keypoint R-CNN head (paper section 5; torchvision's KeypointRCNNHeads + Predictor).

    num_convs x (3x3 conv + ReLU) -> 4x4 stride-2 transposed conv to K channels
    (x2) -> bilinear x2 (half-pixel centres, = torch align_corners=False).

    Input: [B, R, 14, 14, C] pooled features. Output: [B, R, 56, 56, K] heatmap
    logits, one spatial softmax per keypoint (row = y, column = x of the RoI's
    56x56 grid; see ``mrcnn/ops/keypoints.py``).
    """

    def __init__(self, num_keypoints: int, channels: int = 512, num_convs: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.num_keypoints = num_keypoints
        self.channels = channels
        self.num_convs = num_convs
        init = _HE_FAN_OUT
        self.convs = _relu_conv_stack(channels, num_convs, "conv_fcn")
        # kernel 4, stride 2, "same" = torch padding 1: exactly x2.
        self.deconv = keras.layers.Conv2DTranspose(
            num_keypoints, 4, strides=2, padding="same", kernel_initializer=init, name="kps_score_lowres"
        )

    def call(self, pooled):
        return _per_roi(self._fcn, pooled)

    def _fcn(self, x):
        for conv in self.convs:
            x = conv(x)
        x = self.deconv(x)
        size = 2 * x.shape[1]
        return tf.image.resize(x, [size, size], method="bilinear", antialias=False)

    def get_config(self):
        return {
            **super().get_config(),
            "num_keypoints": self.num_keypoints,
            "channels": self.channels,
            "num_convs": self.num_convs,
        }
