"""ONNX Runtime / OpenVINO / LiteRT exports: each file runs on its runtime alone and matches detect().

Every exported model is run in a fresh Python process in which ``tensorflow`` and
``mrcnn`` cannot be imported (a meta-path finder refuses them), as on a serving host
that has only the runtime. That process writes its outputs (or each error message) to
a file; this process compares them with ``MaskRCNN.detect()`` on the same images:
boxes within 0.5 px, scores within 1e-4, same classes and count, pasted masks IoU >= 0.99.

The model is the trained shapes model (tests/fixtures/shapes_model, issue #27): on its
pictures fewer than DETECTION_MAX_INSTANCES detections pass, on a blank picture none,
and a batch mixes the two. (Random weights fill every slot and hid LiteRT's phantom
detections.) The keypoint test keeps a random-weight model: there is no trained one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from mrcnn.data.synthetic import ShapesDemoConfig, render_shapes
from mrcnn.export import runtimes as exporters
from mrcnn.model import MaskRCNN
from tests.export.test_export import ExportConfig, _image, assert_parity
from tests.shapes_model import load_shapes_model

RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}

# Runs in the fresh process: argv = format, model file, requests json, results npz.
CLIENT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ("mrcnn", "tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} must not be imported by a {sys.argv[1]} client")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np

    fmt, model_path, requests_path, results_path = sys.argv[1:5]
    requests = json.loads(open(requests_path).read())
    arrays = np.load(requests_path + ".npz", allow_pickle=False)

    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def run(x):
            return dict(zip(names, session.run(None, {"input_tensor": x})))
    elif fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run(x):
            # An ov.Tensor keeps the array's dtype: a float array fails the u8 input
            # (a plain array is converted silently by infer()).
            request.set_input_tensor(ov.Tensor(x))
            request.infer()
            return {port.get_any_name(): np.array(request.get_tensor(port).data)
                    for port in compiled.outputs}
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=model_path)
        runner = interpreter.get_signature_runner()

        def run(x):
            return {k: np.array(v) for k, v in runner(input_tensor=x).items()}

    results = {}
    for name, key in requests.items():
        try:
            for k, v in run(arrays[key]).items():
                results[f"{name}/{k}"] = v
        except Exception as err:  # noqa: BLE001 - reported to the test
            results[f"{name}/error"] = np.array(f"{type(err).__name__}: {err}")
    results["tensorflow_imported"] = np.array("tensorflow" in sys.modules)
    results["mrcnn_imported"] = np.array(any(m.split(".")[0] == "mrcnn" for m in sys.modules))
    np.savez(results_path, **results)
    """
)


def run_client(fmt: str, model_path: str, requests: dict, arrays: dict, tmp_path: Path) -> dict:
    """Run ``requests`` {name: array key} through ``model_path`` in a fresh process."""
    req = tmp_path / "requests.json"
    req.write_text(json.dumps(requests))
    np.savez(str(req) + ".npz", **arrays)
    res = tmp_path / "results.npz"
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script), fmt, model_path, str(req), str(res)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(res, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class ServeConfig(ShapesDemoConfig):
    # At the default 0.05 a picture of a size the model was not trained at fills all 20
    # slots with weak guesses; at 0.3 every picture here leaves slots empty.
    DETECTION_MIN_CONFIDENCE = 0.3


@pytest.fixture(scope="module")
def trained_model():
    return load_shapes_model(ServeConfig())


def _exported(fmt, trained_model, tmp_path_factory):
    pytest.importorskip(RUNTIME_MODULE[fmt])
    out = tmp_path_factory.mktemp(fmt)
    paths = exporters.export_model(trained_model, out, fmt)
    return paths


@pytest.fixture(scope="module")
def onnx_export(trained_model, tmp_path_factory):
    pytest.importorskip("tf2onnx")
    return _exported("onnx", trained_model, tmp_path_factory)


@pytest.fixture(scope="module")
def openvino_export(trained_model, tmp_path_factory):
    return _exported("openvino", trained_model, tmp_path_factory)


@pytest.fixture(scope="module")
def litert_export(trained_model, tmp_path_factory):
    return _exported("litert", trained_model, tmp_path_factory)


def _shapes(index: int, h: int, w: int) -> np.ndarray:
    return render_shapes(7, index, h, w)["image"]


def _requests():
    # Shapes pictures (several sizes and aspect ratios), a blank one, a batch of both.
    images = [_shapes(0, 128, 128), _shapes(1, 100, 150), _shapes(2, 150, 96), _shapes(3, 128, 128),
              np.full((128, 128, 3), 90, np.uint8)]
    pair = [images[3], images[4]]
    arrays = {f"img{i}": im[None] for i, im in enumerate(images)}
    arrays["pair"] = np.stack(pair)
    arrays["float"] = images[0][None].astype(np.float32)
    arrays["rank3"] = images[0]
    arrays["rgba"] = np.concatenate([images[0], images[0][..., :1]], axis=-1)[None]
    requests = {f"img{i}": f"img{i}" for i in range(len(images))}
    requests["pair"] = "pair"
    for bad in ("float", "rank3", "rgba"):
        requests[f"bad_{bad}"] = bad
    # After the bad requests, the same loaded model still answers.
    requests["after"] = "img0"
    return images, pair, arrays, requests


def check_runtime(fmt, model_path, model, tmp_path, messages=None):
    images, pair, arrays, requests = _requests()
    out = run_client(fmt, model_path, requests, arrays, tmp_path)
    assert not out["tensorflow_imported"] and not out["mrcnn_imported"]
    max_det = model.config.DETECTION_MAX_INSTANCES
    assert out["img0/detection_boxes"].shape == (1, max_det, 4)
    assert out["img0/detection_masks"].shape == (1, max_det, 28, 28)
    assert out["img0/num_detections"].dtype == np.float32
    for i, image in enumerate(images):  # batch 1, several sizes and aspect ratios
        expected = model.detect([image])[0]
        # The cases of the contract: some but fewer than the slots, and none (the blank one).
        assert (len(expected["scores"]) == 0) == (i == len(images) - 1)
        assert len(expected["scores"]) < max_det
        assert_parity(out, f"img{i}", 0, image, expected, model.config, empty_ok=True)
    expected = model.detect(pair, batch_size=2)
    assert len(expected[0]["scores"]) > 0 and len(expected[1]["scores"]) == 0
    for i in range(2):
        assert_parity(out, "pair", i, pair[i], expected[i], model.config, empty_ok=True)
    for name, message in (messages or {}).items():
        error = str(out.get(f"bad_{name}/error", "no error"))
        assert message in error, (name, error)
    for key in ("detection_boxes", "detection_scores", "detection_masks", "num_detections"):
        np.testing.assert_array_equal(out[f"after/{key}"], out[f"img0/{key}"])
    return out


def test_onnx_runtime_parity_and_bad_inputs(onnx_export, trained_model, tmp_path):
    (path,) = onnx_export
    assert Path(path).name == "model.onnx"
    labels = (Path(path).parent / "labels.txt").read_text().splitlines()
    assert labels == list(ShapesDemoConfig.CLASS_NAMES)
    check_runtime("onnx", path, trained_model, tmp_path, messages={
        "float": "Unexpected input data type. Actual: (tensor(float)) , expected: (tensor(uint8))",
        "rank3": "Invalid rank for input: input_tensor Got: 3 Expected: 4",
        "rgba": "index: 3 Got: 4 Expected: 3",
    })


def test_onnx_ops_and_dynamic_dims(onnx_export):
    import onnx

    model = onnx.load(onnx_export[0])
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input_tensor" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in dims] == [0, 0, 0, 3] and all(d.dim_param for d in dims[:3])
    assert sorted(o.name for o in model.graph.output) == sorted([
        "detection_boxes", "detection_scores", "detection_classes", "num_detections", "detection_masks",
    ])
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g.node:
                    walk(attr.g)

    walk(model.graph)
    assert {"NonMaxSuppression", "Resize", "Loop", "Conv", "ConvTranspose"} <= ops
    assert all(not op.startswith("Mrcnn") for op in ops)


def test_export_refuses_to_overwrite_and_names_missing_extra(onnx_export, trained_model, monkeypatch):
    out = Path(onnx_export[0]).parent
    with pytest.raises(FileExistsError, match="model.onnx exists"):
        exporters.export_model(trained_model, out, "onnx")
    # A missing converter names the pip extra (simulated by hiding the module).
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    from mrcnn.export.formats import MissingRuntimeError

    with pytest.raises(MissingRuntimeError, match=r"pip install 'mrcnn\[onnx\]'"):
        exporters.export_model(trained_model, out / "other", "onnx")
    assert not (out / "other").exists()


def test_openvino_parity_and_bad_inputs(openvino_export, trained_model, tmp_path):
    xml, binary = openvino_export
    assert Path(xml).name == "model.xml" and Path(binary).name == "model.bin"
    check_runtime("openvino", xml, trained_model, tmp_path, messages={
        "float": "precision: f32, since the model input tensor precision is: u8",
        "rank3": "the model input (shape=[?,?,?,3]) and the tensor (shape=(100.150.3)) are incompatible",
        "rgba": "the model input (shape=[?,?,?,3]) and the tensor (shape=(1.100.150.4)) are incompatible",
    })


def test_litert_parity_and_bad_inputs(litert_export, trained_model, tmp_path):
    (path,) = litert_export
    assert Path(path).name == "model.tflite"
    # LiteRT checks the dtype; the shape only when a kernel meets it (the interpreter
    # resizes its input to whatever it is given).
    check_runtime("litert", path, trained_model, tmp_path, messages={
        "float": "Got value of type FLOAT32 but expected type UINT8 for input 0",
        "rank3": "NumDimensions(input) != 4 (3 != 4)",
        "rgba": "failed to prepare",
    })


def test_cli_export_format_litert_from_files(trained_model, tmp_path):
    """``mrcnn export --format litert`` (weights file + config JSON) writes model.tflite and
    labels.txt, builtin ops only; --format with a SavedModel-only flag still parses."""
    pytest.importorskip("ai_edge_litert")
    from mrcnn.cli import main

    weights = tmp_path / "w.weights.h5"
    trained_model.save_weights(str(weights))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(trained_model.config.to_dict()))
    out = tmp_path / "out"
    assert main(["export", "--weights", str(weights), "--config", str(config), "--output", str(out),
                 "--format", "litert"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.tflite"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out / "model.tflite"))
    (detail,) = interpreter.get_input_details()
    assert list(detail["shape_signature"]) == [-1, -1, -1, 3] and detail["dtype"] == np.uint8
    assert set(interpreter.get_signature_list()["serving_default"]["outputs"]) == {
        "detection_boxes", "detection_scores", "detection_classes", "num_detections", "detection_masks",
    }


class KeypointExportConfig(ExportConfig):
    NAME = "export_keypoints_test"
    NUM_KEYPOINTS = 3
    KEYPOINT_NAMES = ("head", "left_hand", "right_hand")
    KEYPOINT_HEAD_CONV_CHANNELS = 16
    KEYPOINT_HEAD_NUM_CONVS = 2


@pytest.fixture(scope="module")
def keypoint_model():
    keras.utils.set_random_seed(3)
    return MaskRCNN(KeypointExportConfig())


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "litert"])
def test_keypoint_model_on_each_runtime(fmt, keypoint_model, tmp_path):
    """A keypoint model's export on each runtime alone: detections, masks and keypoints as detect()'s."""
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
    pytest.importorskip(RUNTIME_MODULE[fmt])
    model_path = exporters.export_model(keypoint_model, tmp_path / "export", fmt)[0]
    images = [_image(96, 130), _image(120, 64)]
    arrays = {f"img{i}": im[None] for i, im in enumerate(images)}
    out = run_client(fmt, model_path, {f"img{i}": f"img{i}" for i in range(len(images))}, arrays, tmp_path)
    assert not out["tensorflow_imported"] and not out["mrcnn_imported"]
    for i, image in enumerate(images):
        expected = keypoint_model.detect([image])[0]
        assert_parity(out, f"img{i}", 0, image, expected, keypoint_model.config)
        n = len(expected["scores"])
        h, w = image.shape[:2]
        # Served: (y, x) normalised, pixel-edge frame; detect(): (x, y) pixel-index frame.
        yx = out[f"img{i}/detection_keypoints"][0, :n] * np.array([h, w], np.float32) - 0.5
        np.testing.assert_allclose(yx[..., ::-1], expected["keypoints"][..., :2], atol=0.5)
        np.testing.assert_allclose(out[f"img{i}/detection_keypoint_scores"][0, :n], expected["keypoints"][..., 2],
                                   atol=1e-3)
