#!/usr/bin/env python
"""Latency of the exports (SavedModel, ONNX Runtime, OpenVINO, LiteRT) vs in-process ``detect()``.

ResNet-50-FPN, NUM_CLASSES=91, 800/1333 input: by default ``TorchvisionCOCO`` with a
random torchvision ``maskrcnn_resnet50_fpn`` state dict (generated with NumPy, no torch
needed: ``scripts/record_parity_fixtures.full_size_state_dict``) converted by
``mrcnn.checkpoint.convert.convert_state_dict`` (``--weights random`` = the default Config's Keras
initialisation); one 800x1333 image per call: ``detect()`` with the stock-ops RoIAlign
and (when built) the custom op, the exported SavedModel's two signatures, and the ONNX /
OpenVINO / LiteRT files on their runtimes (those installed; ``--formats`` picks), all in
this one process, called in turn (interleaved) so that load from other processes hits
them alike. Each runtime gets its parity with ``detect()`` (detection count; for the
detections matched by class and nearest box: max box difference in pixels, max score
difference, min mask IoU after pasting) and the SavedModel's the same. Usage::

    .venv/bin/python scripts/bench_export.py [--runs 3] [--output /tmp/mrcnn_bench]
        [--formats onnx,openvino,litert] [--min-dim 800 --max-dim 1333] [--weights torchvision|random]

Prints one JSON object: seconds per image (one warm-up call each, then ``--runs``
rounds; median and min), export times, file sizes in MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from mrcnn.config import Config  # noqa: E402
from mrcnn.export import saved_model as export  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from mrcnn.ops.masks import paste_masks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fns: dict, runs: int) -> dict:
    """One warm-up call of each, then ``runs`` rounds calling each once in turn
    (interleaved, so that load from other processes hits all of them alike)."""
    result = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        result[name] = {"first_call_s": round(time.perf_counter() - start, 2), "times": []}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            result[name]["times"].append(round(time.perf_counter() - start, 3))
    for r in result.values():
        r["median_s"] = round(statistics.median(r["times"]), 3)
        r["min_s"] = min(r["times"])
    return result


def export_runtime(model, fmt: str, folder: Path, batch: np.ndarray):
    """Export ``model`` for ``fmt`` and load it on its runtime: (call -> outputs dict, files, export s)."""
    from mrcnn.export.runtimes import export_model

    start = time.perf_counter()
    files = export_model(model, folder, fmt, overwrite=True)
    seconds = round(time.perf_counter() - start, 1)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(files[0], providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return (lambda: dict(zip(names, session.run(None, {"input_tensor": batch})))), files, seconds
    if fmt == "openvino":
        return openvino_runner(files[0], batch), files, seconds
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=files[0]).get_signature_runner()
    return (lambda: runner(input_tensor=batch)), files, seconds


def parity_with_detect(out: dict, expected: dict, image_shape: tuple[int, int], threshold: float) -> dict:
    """Exported serving outputs (batch row 0) against ``detect()``'s result on one image.

    Each detect() detection is matched to the exported one of the same class with the
    nearest box (order-free: random weights give near-equal scores whose order may
    differ); reports the counts and, over the matches, the max box difference (pixels),
    max score difference and min mask IoU (masks pasted at ``threshold``).
    """
    h, w = image_shape
    n = int(out["num_detections"][0])
    ref_n = len(expected["scores"])
    entry = {"num_detections": [n, ref_n], "same_count": n == ref_n}
    if not n or not ref_n:
        return entry
    boxes = out["detection_boxes"][0, :n] * np.array([h, w, h, w], np.float32)
    classes = out["detection_classes"][0, :n].astype(np.int32)
    dist = np.abs(expected["rois"][:, None, :] - boxes[None, :, :]).max(-1)
    dist = np.where(expected["class_ids"][:, None] == classes[None, :], dist, np.inf)
    match = dist.argmin(1)
    entry["max_box_diff_px"] = float(dist[np.arange(ref_n), match].max())
    entry["max_score_diff"] = float(np.abs(out["detection_scores"][0, :n][match] - expected["scores"]).max())
    if "detection_masks" in out and "masks" in expected:
        pasted = paste_masks(out["detection_masks"][0, :n][match], boxes[match], (h, w), threshold)
        ious = []
        for i in range(ref_n):
            a, b = pasted[..., i], expected["masks"][..., i]
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
        entry["min_mask_iou"] = round(min(ious), 4)
    entry["within_contract"] = bool(entry["same_count"] and entry["max_box_diff_px"] <= 0.5
                                    and entry["max_score_diff"] <= 1e-3 and entry.get("min_mask_iou", 1.0) >= 0.99)
    return entry


def torchvision_model(args) -> MaskRCNN:
    """``TorchvisionCOCO`` with the NumPy-generated random torchvision state dict converted."""
    sys.path.insert(0, HERE)
    from record_parity_fixtures import full_size_state_dict

    from mrcnn.checkpoint.convert import convert_state_dict
    from mrcnn.configs import TorchvisionCOCO

    config = TorchvisionCOCO(IMAGES_PER_GPU=1, ROI_ALIGN_IMPLEMENTATION=args.implementation,
                             IMAGE_MIN_DIM=args.min_dim, IMAGE_MAX_DIM=args.max_dim)
    model = MaskRCNN(config)
    convert_state_dict(model, full_size_state_dict(), "torchvision")
    return model


def openvino_runner(xml: str, batch: np.ndarray, accuracy: bool = False):
    """A call running ``batch`` through the IR on OpenVINO's CPU plugin in f32; ``accuracy``
    adds ``EXECUTION_MODE_HINT=ACCURACY`` (no low-precision shortcuts anywhere)."""
    import openvino as ov

    options = {"INFERENCE_PRECISION_HINT": "f32"}
    if accuracy:
        options["EXECUTION_MODE_HINT"] = "ACCURACY"
    compiled = ov.Core().compile_model(xml, "CPU", options)
    request = compiled.create_infer_request()

    def run_openvino():
        request.infer({"input_tensor": batch})
        return {p.get_any_name(): request.get_tensor(p).data.copy() for p in compiled.outputs}

    return run_openvino


def dir_size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--implementation", default="auto", help="RoIAlign of the in-process model")
    parser.add_argument("--output", default=None, help="export here (default: a temp dir, removed)")
    parser.add_argument("--formats", default="onnx,openvino,litert",
                        help="runtimes to add (comma-separated; missing packages are skipped)")
    parser.add_argument("--min-dim", type=int, default=800, help="IMAGE_MIN_DIM (smaller: quick check)")
    parser.add_argument("--max-dim", type=int, default=1333, help="IMAGE_MAX_DIM")
    parser.add_argument("--weights", choices=("torchvision", "random"), default="torchvision",
                        help="converted random torchvision weights (default) or Keras' initialisation")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (args.height // 16, args.width // 16, 3)).astype(np.float32)
    image = tf.image.resize(small[None], (args.height, args.width))[0].numpy().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "input": [args.height, args.width],
    }
    start = time.perf_counter()
    if args.weights == "torchvision":
        model = torchvision_model(args)
    else:
        model = MaskRCNN(Config(NUM_CLASSES=91, IMAGES_PER_GPU=1, ROI_ALIGN_IMPLEMENTATION=args.implementation,
                                IMAGE_MIN_DIM=args.min_dim, IMAGE_MAX_DIM=args.max_dim))
    config = model.config
    result["network_input"] = list(config.IMAGE_SHAPE)
    result["weights"] = args.weights
    result["build_s"] = round(time.perf_counter() - start, 1)
    models = {"detect_portable": export.portable_model(model)}
    if args.implementation != "portable":
        from mrcnn.ops import custom_roi_align

        if custom_roi_align.is_available():
            models["detect_custom_op"] = model

    base = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="mrcnn_bench_"))
    try:
        start = time.perf_counter()
        path = export.export_saved_model(model, base, version=1, overwrite=True)
        result["export_s"] = round(time.perf_counter() - start, 1)
        result["saved_model_mb"] = dir_size_mb(Path(path))
        result["variables_mb"] = dir_size_mb(Path(path) / "variables")
        h5 = base / "w.weights.h5"
        model.save_weights(str(h5))
        result["weights_h5_mb"] = round(h5.stat().st_size / 2**20, 1)
        h5.unlink()

        start = time.perf_counter()
        loaded = tf.saved_model.load(path)
        result["load_s"] = round(time.perf_counter() - start, 1)
        images = tf.constant(image[None])
        serving = loaded.signatures["serving_default"]
        encoded = loaded.signatures["encoded_image"]
        data = tf.constant([jpeg])
        fns = {name: (lambda m=m: m.detect([image], batch_size=1)) for name, m in models.items()}
        fns["saved_model_serving_default"] = lambda: serving(input_tensor=images)
        fns["saved_model_encoded_image_jpeg"] = lambda: encoded(input_tensor=data)
        reference = {k: v.numpy() for k, v in serving(input_tensor=images).items()}
        expected = models["detect_portable"].detect([image], batch_size=1)[0]
        threshold = config.DETECTION_MASK_THRESHOLD
        result["saved_model_vs_detect"] = parity_with_detect(reference, expected, image.shape[:2], threshold)
        result["runtimes"] = {}
        for fmt in [f for f in args.formats.split(",") if f]:
            entry = result["runtimes"][fmt] = {}
            try:
                fn, files, seconds = export_runtime(model, fmt, base / fmt, image[None])
            except ImportError as err:
                entry["skipped"] = str(err)
                continue
            entry["export_s"] = seconds
            entry["file_mb"] = round(sum(Path(f).stat().st_size for f in files) / 2**20, 1)
            entry["vs_detect"] = parity_with_detect(fn(), expected, image.shape[:2], threshold)
            fns[f"{fmt}_runtime"] = fn
            if fmt == "openvino":
                accurate = openvino_runner(files[0], image[None], accuracy=True)
                entry["vs_detect_execution_mode_accuracy"] = parity_with_detect(
                    accurate(), expected, image.shape[:2], threshold)
                fns["openvino_accuracy_mode_runtime"] = accurate
        result["latency_per_image"] = timed(fns, args.runs)
        result["num_detections"] = float(reference["num_detections"][0])
    finally:
        if not args.output:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
