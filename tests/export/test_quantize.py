"""int8 exports (mrcnn.export.quantize) on their runtimes, with the trained shapes model.

The trained fixture (tests/fixtures/shapes_model) rather than random weights: a
random-weight model's scores all sit near 1/NUM_CLASSES and its boxes are arbitrary,
so any quantization noise reorders them and nothing can be compared; a trained model
has a few confident detections per picture, which int8 must keep.

Tolerance (int8 vs detect() in float32, per confident detection of detect()): a
detection of the same class with box IoU >= 0.85, score within 0.1 and mask IoU
>= 0.8 (masks pasted at the model's threshold). Why those numbers: int8 rounds each
convolution's input to 1/255 of its calibrated range, about 0.4% per layer, which
adds up over ~25 layers to a few percent of the logits; on the 128 px pictures a box
edge then moves by about 1 px (IoU 0.9 for a 20 px shape), a score by up to ~0.05
near the class boundary and a mask's outline by about a pixel. Float32 exports are held
to 0.5 px / 1e-3 (tests/export/test_export_runtimes.py); an int8 model cannot be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrcnn.data.synthetic import ShapesDataset, ShapesDemoConfig
from mrcnn.export import quantize
from mrcnn.ops.masks import paste_masks

WEIGHTS = Path(__file__).parents[1] / "fixtures" / "shapes_model" / "shapes_demo_weights.npz"
MIN_SCORE = 0.7  # detect()'s detections compared (the confident ones a user keeps)


class _Config(ShapesDemoConfig):
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.5


@pytest.fixture(scope="module")
def model():
    from mrcnn import MaskRCNN

    m = MaskRCNN(_Config())
    with np.load(WEIGHTS) as f:
        m.set_weights([f[f"arr_{i}"].astype(np.float32) for i in range(len(f.files))])
    return m


def _shapes(count: int, seed: int) -> ShapesDataset:
    ds = ShapesDataset()
    ds.load_shapes(count, seed=seed)
    return ds


@pytest.fixture(scope="module")
def pictures():
    ds = _shapes(6, seed=21)
    return [ds.load_image(i) for i in ds.image_ids]


@pytest.fixture(scope="module")
def calibration():
    return quantize.CalibrationImages(_shapes(24, seed=5), count=16)


def _run_onnx(path):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda batch: dict(zip(names, session.run(None, {"input_tensor": batch})))


def _run_openvino(path):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU")
    request = compiled.create_infer_request()

    def run(batch):
        request.infer({"input_tensor": batch})
        return {p.get_any_name(): request.get_tensor(p).data.copy() for p in compiled.outputs}

    return run


def _box_iou(a, b):
    y1, x1 = np.maximum(a[:2], b[:2])
    y2, x2 = np.minimum(a[2:], b[2:])
    inter = max(y2 - y1, 0) * max(x2 - x1, 0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def compare_with_detect(run, model, pictures) -> dict:
    """Worst box IoU / score difference / mask IoU over detect()'s confident detections."""
    worst = {"box_iou": 1.0, "score_diff": 0.0, "mask_iou": 1.0, "compared": 0}
    threshold = model.config.DETECTION_MASK_THRESHOLD
    for image in pictures:
        h, w = image.shape[:2]
        ref = model.detect([image])[0]
        out = run(image[None])
        n = int(out["num_detections"][0])
        boxes = out["detection_boxes"][0, :n] * np.array([h, w, h, w], np.float32)
        classes = out["detection_classes"][0, :n].astype(int)
        scores = out["detection_scores"][0, :n]
        pasted = paste_masks(out["detection_masks"][0, :n], boxes, (h, w), threshold) if n else None
        for i in np.flatnonzero(ref["scores"] >= MIN_SCORE):
            ious = [_box_iou(ref["rois"][i], b) if c == ref["class_ids"][i] else 0.0
                    for b, c in zip(boxes, classes)]
            j = int(np.argmax(ious)) if ious else -1
            box_iou = ious[j] if ious else 0.0
            worst["compared"] += 1
            worst["box_iou"] = min(worst["box_iou"], box_iou)
            if box_iou == 0.0:
                continue
            worst["score_diff"] = max(worst["score_diff"], abs(float(scores[j] - ref["scores"][i])))
            a, b = pasted[..., j], ref["masks"][..., i]
            union = np.logical_or(a, b).sum()
            worst["mask_iou"] = min(worst["mask_iou"], float(np.logical_and(a, b).sum() / max(union, 1)))
    return worst


def assert_close_to_float(worst):
    print("int8 vs detect():", worst)
    assert worst["compared"] >= 6, worst  # the pictures do hold confident shapes
    assert worst["box_iou"] >= 0.85, worst
    assert worst["score_diff"] <= 0.1, worst
    assert worst["mask_iou"] >= 0.8, worst


def test_onnx_int8_runs_on_onnxruntime_close_to_float(model, pictures, calibration, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from mrcnn.export.runtimes import export_model

    (path,) = export_model(model, tmp_path, "onnx", quantize="int8", calibration=calibration)
    graph = onnx.load(path).graph
    ops = [n.op_type for n in graph.node]
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    # Every convolution and fully connected layer reads dequantized int8 weights ...
    conv_inputs = [produced_by.get(n.input[1]) for n in graph.node if n.op_type in ("Conv", "MatMul")]
    assert conv_inputs and set(conv_inputs) == {"DequantizeLinear"}, set(conv_inputs)
    assert ops.count("QuantizeLinear") >= len(conv_inputs)
    # ... while NMS, the gather RoIAlign and the box decoding read float tensors.
    for node in graph.node:
        if node.op_type in ("NonMaxSuppression", "Gather", "GatherND", "Exp"):
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input), node.name

    worst = compare_with_detect(_run_onnx(path), model, pictures)
    assert_close_to_float(worst)


def test_openvino_int8_runs_on_openvino_close_to_float(model, pictures, calibration, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    from mrcnn.export.runtimes import export_model

    xml, _ = export_model(model, tmp_path, "openvino", quantize="int8", calibration=calibration)
    ir = ov.Core().read_model(xml)
    fake_quantized = {
        out.get_node().get_type_name()
        for op in ir.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
        for out in op.output(0).get_target_inputs()
    }
    # Quantizers feed the convolutions / matmuls only: nothing of RoIAlign, NMS or decoding.
    assert "Convolution" in fake_quantized and fake_quantized <= {"Convolution", "GroupConvolution", "MatMul"}, (
        fake_quantized)

    worst = compare_with_detect(_run_openvino(xml), model, pictures)
    assert_close_to_float(worst)


def test_quantize_argument_errors(model, tmp_path):
    from mrcnn.export.runtimes import export_model

    with pytest.raises(ValueError, match="needs calibration images: pass --calibration"):
        export_model(model, tmp_path, "onnx", quantize="int8")
    with pytest.raises(ValueError, match="available for --format onnx and openvino, not litert"):
        export_model(model, tmp_path, "litert", quantize="int8", calibration=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="must be positive"):
        quantize.CalibrationImages(_shapes(2, seed=1), count=0)
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_export_openvino_int8_end_to_end(model, pictures, tmp_path):
    pytest.importorskip("nncf")
    weights = tmp_path / "shapes.weights.h5"
    model.save_weights(str(weights))
    config = tmp_path / "config.json"
    config.write_text(model.config.to_json(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    base = [sys.executable, "-m", "mrcnn", "export", "--weights", str(weights), "--config", str(config),
            "--output", str(tmp_path / "out"), "--format", "openvino"]

    missing = subprocess.run(base + ["--quantize", "int8"], env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("mrcnn export: error: --quantize int8 needs "
                                                             "calibration images")

    proc = subprocess.run(base + ["--quantize", "int8", "--calibration", "shapes", "--calibration-images", "8"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrating on 8 images of shapes" in proc.stdout
    path = tmp_path / "out" / "model.xml"
    assert (tmp_path / "out" / "labels.txt").read_text().splitlines()[1:] == list(model.config.CLASS_NAMES)[1:]
    worst = compare_with_detect(_run_openvino(str(path)), model, pictures)
    assert_close_to_float(worst)
