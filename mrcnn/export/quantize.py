"""Post-training int8 quantization of the ONNX and OpenVINO exports.

``mrcnn export --format openvino --quantize int8 --calibration DATASET`` (NNCF) and
``--format onnx --quantize int8 --calibration DATASET`` (ONNX Runtime static
quantization) write the same files as the float32 export (``model.xml``/``.bin``,
``model.onnx``) with the same input/output contract (docs/serving.md), quantized
after calibrating on images of the user's dataset.

What is int8 and what stays float32:

* int8: the convolutions and fully connected layers (MatMul) of the backbone, FPN,
  RPN head, box head and mask head: their weights per output channel, their input
  activations per tensor, ranges from the calibration images (min/max);
* float32: everything else, in particular the gather RoIAlign, box decoding, the NMS
  and the preprocessing: their inputs are coordinates and scores, where an int8 step
  would move boxes by pixels and reorder near-equal scores. The mask head's
  transposed convolution also stays float32 (ONNX Runtime has no int8 kernel for it).

Both quantizers are restricted by op type (ONNX Runtime: ``op_types_to_quantize``;
NNCF: an ``IgnoredScope`` of every other type) rather than by node name: the
converters rename nodes (OpenVINO's transpose sinking drops the Keras scopes), the op
types are stable, and no Conv or MatMul exists outside the network's layers.

Calibration images come from a :class:`mrcnn.data.dataset.Dataset` (the CLI's
``--dataset`` forms); a fixed seeded sample of ``count`` images (default 300), each
fed at its own size as uint8 ``[1, H, W, 3]``, so that the in-graph preprocessing is
calibrated too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mrcnn.export.formats import require

QUANTIZE_MODES = ("none", "int8")
QUANTIZABLE_FORMATS = ("onnx", "openvino")
DEFAULT_CALIBRATION_IMAGES = 300
INPUT_NAME = "input_tensor"

# ONNX Runtime: the op types that get int8 (everything else stays float32).
ONNX_INT8_OPS = ("Conv", "MatMul", "Gemm")
# OpenVINO types NNCF could put a quantizer on besides Convolution/MatMul; all ignored,
# so that only the convolutions and fully connected layers run in int8 (see above).
OPENVINO_FLOAT_TYPES = (
    "Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum", "Power", "SquaredDifference",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    "LogicalNot", "LogicalXor", "FloorMod", "Mod", "MaxPool", "AvgPool", "ReduceMax", "ReduceMin",
    "ReduceMean", "ReduceSum", "ReduceL2", "Interpolate", "MVN", "Concat", "Gather", "GatherND",
    "GatherElements", "ScatterUpdate", "ScatterNDUpdate", "ConvolutionBackpropData",
    "GroupConvolutionBackpropData", "Sigmoid", "Exp", "Sqrt", "Clamp", "Select", "TopK",
    "NonMaxSuppression", "Loop", "Pad", "ShuffleChannels", "DepthToSpace", "SpaceToDepth",
    "Tile", "Broadcast", "StridedSlice", "Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze",
    "Split", "VariadicSplit", "Floor", "Ceiling", "Round", "Abs", "Negative", "Relu", "Log",
)


class CalibrationImages(Sequence):
    """A fixed sample of a Dataset's images for calibration, loaded lazily.

    ``dataset``: a prepared :class:`mrcnn.data.dataset.Dataset`; ``count``: how many
    (all when the dataset has fewer); ``seed``: the sample (a permutation of the image
    ids). Item ``i`` is uint8 ``[1, H, W, 3]`` RGB (batch of one, the image's own size).
    """

    def __init__(self, dataset, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0):
        if count <= 0:
            raise ValueError(f"--calibration-images must be positive, got {count}")
        ids = list(dataset.image_ids)
        if not ids:
            raise ValueError("the calibration dataset has no images")
        order = np.random.default_rng(seed).permutation(len(ids))[:count]
        self.dataset = dataset
        self.image_ids = [ids[i] for i in order]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> np.ndarray:
        image_id = self.image_ids[index]
        image = np.asarray(self.dataset.load_image(image_id))
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"calibration image id {image_id}: expected [H, W, 3] RGB, got shape {image.shape}")
        return np.ascontiguousarray(image.astype(np.uint8))[None]


def _as_batches(images: Iterable[np.ndarray]) -> Sequence:
    """``images`` as a sequence of uint8 [1, H, W, 3] (a :class:`CalibrationImages` as is)."""
    if isinstance(images, CalibrationImages):
        return images
    batches = [np.asarray(image, np.uint8) for image in images]
    return [b if b.ndim == 4 else b[None] for b in batches]


def quantize_onnx(model_path: str | os.PathLike, output_path: str | os.PathLike,
                  images: Iterable[np.ndarray], progress: bool = True) -> None:
    """ONNX Runtime static int8 quantization of ``model_path`` into ``output_path``.

    QDQ format (what ONNX Runtime's CPU provider fuses into QLinearConv/MatMulInteger),
    uint8 activations and int8 weights per output channel (the u8s8 kernels that
    AVX512-VNNI runs), min/max calibration over ``images`` (uint8 [1, H, W, 3] each),
    only :data:`ONNX_INT8_OPS` quantized. The min/max calibrator adds ReduceMin/ReduceMax
    outputs to the graph, so it keeps two scalars per tensor and image, not the tensors.
    """
    quantization = require("onnxruntime.quantization", "onnx")
    from tqdm import tqdm

    batches = _as_batches(images)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._iter = iter(tqdm(batches, desc="calibrating (onnx int8)", unit="image",
                                   disable=not progress))

        def get_next(self):
            batch = next(self._iter, None)
            return None if batch is None else {INPUT_NAME: batch}

    quantization.quantize_static(
        str(model_path), str(output_path), Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=list(ONNX_INT8_OPS),
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
    )


def quantize_openvino(xml_path: str | os.PathLike, output_xml: str | os.PathLike,
                      images: Iterable[np.ndarray]) -> None:
    """NNCF post-training int8 quantization of an OpenVINO IR into ``output_xml`` (+ .bin).

    Default (performance) preset: symmetric int8 weights per output channel, activations
    per tensor; only Convolution and MatMul quantized (:data:`OPENVINO_FLOAT_TYPES`
    ignored); ``subset_size`` = the number of calibration images. NNCF shows its own
    progress bars.
    """
    nncf = require("nncf", "openvino")
    ov = require("openvino", "openvino")
    batches = _as_batches(images)
    model = ov.Core().read_model(str(xml_path))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(batches, lambda batch: {INPUT_NAME: batch}),
        subset_size=len(batches),
        ignored_scope=nncf.IgnoredScope(types=list(OPENVINO_FLOAT_TYPES), validate=False),
    )
    ov.save_model(quantized, str(output_xml), compress_to_fp16=False)


def quantize_files(fmt: str, folder: str | os.PathLike, images: Iterable[np.ndarray],
                   progress: bool = True) -> None:
    """Quantize the float32 export of ``fmt`` in ``folder`` in place (same file names)."""
    folder = Path(folder)
    if fmt == "onnx":
        tmp = folder / "model.int8.onnx"
        quantize_onnx(folder / "model.onnx", tmp, images, progress=progress)
        os.replace(tmp, folder / "model.onnx")
    elif fmt == "openvino":
        tmp = folder / "int8"
        tmp.mkdir(exist_ok=True)
        quantize_openvino(folder / "model.xml", tmp / "model.xml", images)
        for name in ("model.xml", "model.bin"):
            os.replace(tmp / name, folder / name)
        tmp.rmdir()
    else:
        raise ValueError(f"--quantize int8 is available for {' and '.join(QUANTIZABLE_FORMATS)}, not {fmt!r}")


def check_quantize_args(fmt: str, quantize: str | None, calibration) -> None:
    """One-line errors for a bad ``--quantize`` combination, before any work."""
    if quantize in (None, "none"):
        if calibration is not None:
            raise ValueError("--calibration is only used with --quantize int8")
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"--quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if fmt not in QUANTIZABLE_FORMATS:
        raise ValueError(f"--quantize int8 is available for --format onnx and openvino, not {fmt}")
    if calibration is None:
        raise ValueError("--quantize int8 needs calibration images: pass --calibration DATASET "
                         "(shapes | coco | module:function, as --dataset in mrcnn train)")

