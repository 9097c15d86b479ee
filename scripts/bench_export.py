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

``--quantize`` adds the int8 exports (:mod:`mrcnn.export.quantize`: ONNX Runtime static
quantization and NNCF for OpenVINO) to the latency rounds (the 800x1333 R50 model,
calibrated on ``--speed-calibration-images`` images of ``--accuracy-dataset``: its speed
does not depend on what it was calibrated on) and measures accuracy next to float32 on
a trained model in the same run: ``--accuracy-weights``/``--accuracy-config`` (e.g. a
``samples/nucleus`` run) on the val split of the nuclei folder ``--accuracy-dataset``,
bbox and segm AP through :func:`mrcnn.evaluate.evaluate_dataset` for ``detect()`` and
each runtime in float32 and int8 (calibrated on ``--calibration-images`` train-split
images). Then prints the markdown table of docs/serving.md after the JSON::

    .venv/bin/python scripts/bench_export.py --quantize --formats onnx,openvino \
        --accuracy-weights runs/nucleus/final.weights.h5 --accuracy-config runs/nucleus/config.json \
        --accuracy-dataset ../shared/datasets/nuclei
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


def export_runtime(model, fmt: str, folder: Path, batch: np.ndarray, reuse: bool = False):
    """Export ``model`` for ``fmt`` and load it on its runtime: (call -> outputs dict, files, export s).
    ``reuse``: load the files already in ``folder`` (an earlier run's export of the same model)."""
    from mrcnn.export.runtimes import MODEL_FILES, export_model

    start = time.perf_counter()
    files = [str(folder / name) for name in MODEL_FILES[fmt]]
    if not (reuse and all(Path(f).is_file() for f in files)):
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


def runtime_folder_int8(fmt: str, folder: Path, calibration) -> list[str]:
    """Quantize a copy of the float32 export in ``folder`` (no second trace): the int8 files."""
    from mrcnn.export.quantize import quantize_files
    from mrcnn.export.runtimes import MODEL_FILES

    target = folder.parent / f"{fmt}_int8"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    quantize_files(fmt, target, calibration)
    return [str(target / name) for name in MODEL_FILES[fmt]]


def runtime_call(fmt: str, path: str, precision: str = "f32"):
    """uint8 [B, H, W, 3] -> outputs dict, on the runtime of ``fmt`` (CPU); OpenVINO with
    ``INFERENCE_PRECISION_HINT=precision`` (f32, or bf16: its default on AMX/AVX512-BF16 CPUs)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda batch: dict(zip(names, session.run(None, {"input_tensor": batch})))
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(batch):
        request.infer({"input_tensor": batch})
        return {p.get_any_name(): request.get_tensor(p).data.copy() for p in compiled.outputs}

    return run


def as_detect(call, threshold: float):
    """A runtime's serving outputs as ``detect()``-style results (for mrcnn.evaluate)."""

    def detect(images, batch_size=1):
        results = []
        for image in images:
            h, w = image.shape[:2]
            out = call(np.asarray(image, np.uint8)[None])
            n = int(out["num_detections"][0])
            boxes = out["detection_boxes"][0, :n] * np.array([h, w, h, w], np.float32)
            results.append({
                "rois": boxes, "scores": out["detection_scores"][0, :n],
                "class_ids": out["detection_classes"][0, :n].astype(np.int32),
                "masks": paste_masks(out["detection_masks"][0, :n], boxes, (h, w), threshold)
                if n else np.zeros((h, w, 0), bool),
            })
        return results

    return detect


def accuracy_run(args, formats: list[str], base: Path) -> dict:
    """bbox/segm AP of detect() and of each runtime (float32, int8) on the nuclei val split."""
    sys.path.insert(0, os.path.dirname(HERE))
    from mrcnn.config import load_config
    from mrcnn.evaluate import evaluate_dataset
    from mrcnn.export.quantize import CalibrationImages
    from mrcnn.export.runtimes import export_model
    from samples.nucleus.nucleus import NucleusDataset

    config = load_config(args.accuracy_config)
    trained = MaskRCNN(export.portable_config(config))
    trained.load_weights(args.accuracy_weights)
    val = NucleusDataset().load_nucleus(args.accuracy_dataset, "val", limit=args.accuracy_images or None)
    calibration = CalibrationImages(NucleusDataset().load_nucleus(args.accuracy_dataset, "train"),
                                    args.calibration_images)
    threshold = config.DETECTION_MASK_THRESHOLD

    def ap(detect_fn):
        metrics = evaluate_dataset(detect_fn, val, batch_size=1, max_detections=config.DETECTION_MAX_INSTANCES)
        return {k: round(100 * metrics[k]["AP"], 2) for k in ("bbox", "segm")}

    result = {"val_images": len(val), "calibration_images": len(calibration), "detect": ap(trained.detect)}
    for fmt in formats:
        folder = base / "accuracy" / fmt
        files = export_model(trained, folder, fmt, overwrite=True)
        result[f"{fmt}_float32"] = ap(as_detect(runtime_call(fmt, files[0]), threshold))
        if fmt == "openvino":
            result["openvino_bf16"] = ap(as_detect(runtime_call(fmt, files[0], "bf16"), threshold))
        start = time.perf_counter()
        int8 = runtime_folder_int8(fmt, folder, calibration)
        result[f"{fmt}_int8"] = {**ap(as_detect(runtime_call(fmt, int8[0]), threshold)),
                                 "quantize_s": round(time.perf_counter() - start, 1)}
    return result


RUNTIME_NAMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}


def markdown_table(result: dict) -> str:
    """The docs/serving.md table: latency vs detect() (R50, 800x1333) and AP vs float32 (nuclei)."""
    latency = result["latency_per_image"]
    ref = latency["detect_portable"]["median_s"]
    acc = result.get("accuracy", {})
    ref_ap = acc.get("detect", {})
    rows = [("TensorFlow `detect()`", "float32", "detect_portable", "detect"),
            ("SavedModel `serving_default`", "float32", "saved_model_serving_default", None)]
    for fmt in result["runtimes"]:
        name = RUNTIME_NAMES.get(fmt, fmt)
        rows.append((name, "float32", f"{fmt}_runtime", f"{fmt}_float32"))
        if fmt == "openvino":
            rows.append((name, "bf16 (precision hint, float32 IR)", "openvino_bf16_runtime", "openvino_bf16"))
        rows.append((name, "int8", f"{fmt}_int8_runtime", f"{fmt}_int8"))
    lines = ["| runtime | precision | s / image (800x1333) | speed vs detect() | bbox AP | segm AP "
             "| segm AP vs float32 |", "|---|---|---|---|---|---|---|"]
    for name, precision, key, acc_key in rows:
        if key not in latency:
            continue
        median = latency[key]["median_s"]
        aps = acc.get(acc_key, {}) if acc_key else {}
        delta = f"{aps['segm'] - ref_ap['segm']:+.2f}" if aps and ref_ap else "-"
        lines.append(f"| {name} | {precision} | {median:.2f} | {ref / median:.2f}x | "
                     f"{aps.get('bbox', '-')} | {aps.get('segm', '-')} | {delta} |")
    return "\n".join(lines)


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
    parser.add_argument("--reuse", action="store_true",
                        help="with --output: load the runtime files an earlier run exported there (same model)")
    parser.add_argument("--quantize", action="store_true",
                        help="add int8 ONNX/OpenVINO exports and the accuracy run (see the docstring)")
    parser.add_argument("--accuracy-weights", help="--quantize: trained .weights.h5 (nuclei)")
    parser.add_argument("--accuracy-config", help="--quantize: its config.json")
    parser.add_argument("--accuracy-dataset", default=os.path.join(HERE, "..", "..", "shared", "datasets", "nuclei"),
                        help="--quantize: the nuclei folder (default ../shared/datasets/nuclei)")
    parser.add_argument("--accuracy-images", type=int, default=0,
                        help="--quantize: evaluate the first N val images only (default 0 = all)")
    parser.add_argument("--calibration-images", type=int, default=300,
                        help="--quantize: calibration images of the trained model (default 300)")
    parser.add_argument("--speed-calibration-images", type=int, default=4,
                        help="--quantize: calibration images of the 800x1333 latency model (default 4)")
    args = parser.parse_args()
    if args.quantize and not (args.accuracy_weights and args.accuracy_config):
        parser.error("--quantize needs --accuracy-weights and --accuracy-config (a trained nuclei model)")

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
        if args.quantize:  # first: the trained model's AP, float32 and int8, on each runtime
            result["accuracy"] = accuracy_run(args, [f for f in args.formats.split(",") if f in ("onnx", "openvino")],
                                              base)
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
        if args.quantize:
            sys.path.insert(0, os.path.dirname(HERE))
            from mrcnn.export.quantize import CalibrationImages
            from samples.nucleus.nucleus import NucleusDataset

            speed_calibration = CalibrationImages(
                NucleusDataset().load_nucleus(args.accuracy_dataset, "train"), args.speed_calibration_images)
        for fmt in [f for f in args.formats.split(",") if f]:
            entry = result["runtimes"][fmt] = {}
            try:
                fn, files, seconds = export_runtime(model, fmt, base / fmt, image[None], reuse=args.reuse)
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
                if args.quantize:
                    bf16 = runtime_call(fmt, files[0], "bf16")
                    entry["bf16_vs_detect"] = parity_with_detect(bf16(image[None]), expected, image.shape[:2],
                                                                 threshold)
                    fns["openvino_bf16_runtime"] = lambda bf16=bf16: bf16(image[None])
            if args.quantize and fmt in ("onnx", "openvino"):
                start = time.perf_counter()
                int8 = runtime_folder_int8(fmt, base / fmt, speed_calibration)
                entry["int8_quantize_s"] = round(time.perf_counter() - start, 1)
                entry["int8_file_mb"] = round(sum(Path(f).stat().st_size for f in int8) / 2**20, 1)
                call = runtime_call(fmt, int8[0])
                entry["int8_vs_detect"] = parity_with_detect(call(image[None]), expected, image.shape[:2], threshold)
                fns[f"{fmt}_int8_runtime"] = lambda call=call: call(image[None])
        result["latency_per_image"] = timed(fns, args.runs)
        result["num_detections"] = float(reference["num_detections"][0])
    finally:
        if not args.output:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print()
    print(markdown_table(result))


if __name__ == "__main__":
    main()
