"""What every export traces: the model each format needs and the serving function.

Contract of the runtime exports (the SavedModel's ``serving_default``, without
``class_names``, which the runtimes' tensor types cannot all carry; the names are in
``labels.txt``):

* input ``input_tensor`` uint8 ``[batch, H, W, 3]`` RGB, any batch >= 1 and any H, W
  (one size per call);
* outputs, D = ``DETECTION_MAX_INSTANCES``, rows past ``num_detections`` are zero:
  ``detection_boxes`` float32 ``[batch, D, 4]`` (ymin, xmin, ymax, xmax) normalised by
  the original image's height and width; ``detection_scores`` float32 ``[batch, D]``;
  ``detection_classes`` float32 ``[batch, D]`` (1-based ids); ``num_detections``
  float32 ``[batch]``; ``detection_masks`` float32 ``[batch, D, 28, 28]`` (with a mask
  head); ``detection_keypoints`` float32 ``[batch, D, K, 2]`` (y, x) normalised and
  ``detection_keypoint_scores`` ``[batch, D, K]`` (with a keypoint head).

Pre- and post-processing are :mod:`mrcnn.inference.preprocess` and
:mod:`mrcnn.inference.postprocess`, the ones ``MaskRCNN.detect`` runs.

The model of each format is built from the Config (:func:`export_config`): no export
changes a model after it is built.
"""

from __future__ import annotations

import copy

import tensorflow as tf

from mrcnn.config import Config
from mrcnn.inference.postprocess import SERVING_OUTPUTS, serving_outputs, to_original
from mrcnn.inference.preprocess import preprocess_batch

INPUT_NAME = "input_tensor"
OUTPUT_ORDER = SERVING_OUTPUTS
RUNTIME_FORMATS = ("onnx", "openvino", "litert")


def export_config(config: Config, fmt: str = "saved_model") -> Config:
    """A copy of ``config`` (same class) with the graph forms format ``fmt`` can run.

    Every format: ``MIXED_PRECISION=None`` (exports compute in float32 whatever the
    training policy: the variables are float32 under every policy, and float32 is what
    every runtime's CPU kernels take) and a stock-ops RoIAlign:

    * "saved_model": ``ROI_ALIGN_IMPLEMENTATION="portable"`` (CropAndResize), which a
      stock TF Serving has;
    * "onnx", "litert": ``"gather"`` (Gather and arithmetic): LiteRT has no
      CropAndResize builtin, and tf2onnx turns CropAndResize into a per-box Loop that
      ran 2.4x slower than detect() on ONNX Runtime;
    * "openvino": ``"gather"`` (its CropAndResize conversion fails on an FPN level that
      receives no box) and ``MASK_CLASS_PICK="flat"`` (its conversions of the batched
      gather give wrong masks).

    The numbers are those of ``detect()`` (RoIAlign forms agree within 2e-5). Adaptive
    sampling (``ROI_ALIGN_SAMPLING_RATIO = 0``, Detectron2) has no stock-ops form: such
    a model cannot be exported as is.
    """
    if config.ROI_ALIGN_SAMPLING_RATIO <= 0:
        raise ValueError(
            "Config.ROI_ALIGN_SAMPLING_RATIO=0 (adaptive sampling) has no stock-ops RoIAlign, and a "
            "SavedModel for stock TF Serving may contain stock ops only. Export with a fixed ratio "
            "instead (e.g. ROI_ALIGN_SAMPLING_RATIO=2 in the config JSON): an approximation whose "
            "outputs differ slightly from detect() with adaptive sampling."
        )
    if config.ROI_POOLER == "crop_and_resize" and fmt in RUNTIME_FORMATS:
        raise ValueError(
            f"Config.ROI_POOLER='crop_and_resize' (matterport's pooling, MatterportConfig) is CropAndResize, which "
            f"the {fmt} export cannot carry (LiteRT has no such op; tf2onnx and OpenVINO convert it badly); "
            "export it as a SavedModel (--format saved_model)"
        )
    config = copy.copy(config)
    config.ROI_ALIGN_IMPLEMENTATION = "gather" if fmt in RUNTIME_FORMATS else "portable"
    if fmt == "openvino":
        config.MASK_CLASS_PICK = "flat"
    config.MIXED_PRECISION = None
    config.JIT_COMPILE = False  # a training-step option; exports trace inference only
    config.validate()
    return config


def model_for(model, fmt: str = "saved_model"):
    """The model the ``fmt`` export traces: ``model`` itself when its Config already is
    :func:`export_config`'s, else a model built from that Config with ``model``'s weights
    (``set_weights(get_weights())``: the graph forms do not change the variables or their
    order). The caller's model is never changed."""
    from mrcnn.model import MaskRCNN

    config = export_config(model.config, fmt)
    if config.to_dict() == model.config.to_dict():
        return model
    clone = MaskRCNN(config, name=model.name)
    clone.set_weights(model.get_weights())
    return clone


def model_variables(model) -> list[tf.Variable]:
    """The tf.Variables behind a model's keras.Variables (TF backend), for a ``tf.Module``.

    Tracking these rather than the Keras model (whose attributes, tf.functions included,
    would be serialised too) or the keras.Variable wrappers: with those, the TF1-style
    loader that TF Serving and ``saved_model_cli run`` use fails with "Could not find
    variable ..." (keras-team/keras#19274) and the weights are stored twice.
    """
    out = []
    for variable in model.variables:
        value = getattr(variable, "value", variable)
        if not isinstance(value, tf.Variable):
            raise TypeError(f"cannot export variable {variable!r}: not backed by a tf.Variable")
        out.append(value)
    return out


def serving_function(
    model, float64: bool = True, gather_resize: bool = False
) -> tf.types.experimental.PolymorphicFunction:
    """A ``tf.function`` with the contract above, for ``model`` (a MaskRCNN).

    Args:
      model: the MaskRCNN to serve (built from :func:`export_config` for the format).
      float64: False for runtimes without float64 kernels
        (:func:`mrcnn.inference.preprocess.target_size_int`).
      gather_resize: resize with :func:`mrcnn.inference.preprocess.resize_bilinear_gather`
        (OpenVINO).
    Returns:
      A tf.function with input signature uint8 ``[None, None, None, 3]`` named
      ``input_tensor``, returning a dict of the outputs (see module docstring).
    """
    config = model.config

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def serve(input_tensor):
        images, sizes, scales, original = preprocess_batch(input_tensor, config, float64, gather_resize)
        out = model({"images": images, "image_sizes": sizes}, training=False)
        return serving_outputs(to_original(out, scales, original), original)

    return serve
