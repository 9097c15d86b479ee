"""SavedModel export for stock TF Serving: loads without mrcnn, matches detect(), rejects bad input.

The exported models are run in a fresh Python process that cannot import ``mrcnn`` and
loads no op library (what a TF Serving host has); that process writes its outputs to a
file and this one compares them with ``MaskRCNN.detect()`` on the same images.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mrcnn.config import Config
from mrcnn.export import saved_model as export
from mrcnn.model import MaskRCNN
from mrcnn.ops.masks import paste_masks
from tests.conftest import TinyConfig


class ExportConfig(TinyConfig):
    NAME = "export_test"
    CLASS_NAMES = ("BG", "circle", "square", "triangle")
    BACKBONE_NORM = "frozen_bn"
    DETECTION_MIN_CONFIDENCE = 0.0  # random weights still give detections
    ROI_ALIGN_IMPLEMENTATION = "portable"


RNG = np.random.default_rng(0)


def _image(h: int, w: int) -> np.ndarray:
    """A smooth random image (blobs rather than noise), uint8 RGB."""
    small = RNG.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    big = tf.image.resize(small[None], (h, w), method="bilinear")[0].numpy()
    return np.clip(big, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# The script run in the fresh process: it cannot import mrcnn (a meta-path finder
# refuses it) and never calls tf.load_op_library. It runs every request of the
# request file through the named signature, with the TF2 loader and, for the
# "session" requests, the TF1 session loader that TF Serving and `saved_model_cli
# run` use, and saves the outputs (or the error message) to the result file.
CLIENT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockMrcnn(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mrcnn" or name.startswith("mrcnn."):
                raise ImportError("mrcnn must not be imported by a serving client")
            return None

    sys.meta_path.insert(0, BlockMrcnn())
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    def no_op_library(*args, **kwargs):
        raise AssertionError("the serving client must not load an op library")

    tf.load_op_library = no_op_library

    export_dir, requests_path, results_path = sys.argv[1:4]
    requests = json.loads(open(requests_path).read())
    arrays = np.load(requests_path + ".npz", allow_pickle=False)
    loaded = tf.saved_model.load(export_dir)
    results = {"labels": open(loaded.labels.asset_path.numpy().decode()).read()}
    session = None
    for name, (signature, key, mode) in requests.items():
        value = arrays[key]
        try:
            if mode == "session":
                if session is None:
                    session = tf.compat.v1.Session(graph=tf.Graph())
                    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
                sig = meta.signature_def[signature]
                fetch = {k: v.name for k, v in sig.outputs.items()}
                out = session.run(fetch, {sig.inputs["input_tensor"].name: value})
            else:
                out = loaded.signatures[signature](input_tensor=tf.constant(value))
                out = {k: v.numpy() for k, v in out.items()}
            for k, v in out.items():
                results[f"{name}/{k}"] = np.asarray(v)
        except Exception as err:  # noqa: BLE001 - reported to the test
            results[f"{name}/error"] = f"{type(err).__name__}: {err}"
    results["mrcnn_imported"] = any(m == "mrcnn" or m.startswith("mrcnn.") for m in sys.modules)
    results["custom_op_registered"] = op_def_registry.get("MrcnnRoiAlign") is not None
    results = {k: np.asarray(v) for k, v in results.items()}
    results = {k: v.astype(bytes) if v.dtype == object else v for k, v in results.items()}
    np.savez(results_path, **results)
    """
)


def run_client(export_dir: str, requests: dict, arrays: dict, tmp_path: Path) -> dict:
    """Run ``requests`` {name: (signature, array key, "tf2"|"session")} in a fresh process."""
    req = tmp_path / "requests.json"
    req.write_text(json.dumps(requests))
    np.savez(str(req) + ".npz", **arrays)
    res = tmp_path / "results.npz"
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, str(script), export_dir, str(req), str(res)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(res, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def assert_parity(out: dict, prefix: str, index: int, image: np.ndarray, expected: dict, config,
                  empty_ok: bool = False):
    """Exported outputs (row ``index`` of request ``prefix``) == detect()'s result
    (``empty_ok``: detect() may find nothing, and then so must the export)."""
    assert f"{prefix}/error" not in out, str(out.get(f"{prefix}/error"))
    h, w = image.shape[:2]
    n = int(out[f"{prefix}/num_detections"][index])
    assert n == len(expected["scores"]) and (n > 0 or empty_ok)
    assert np.all(out[f"{prefix}/detection_boxes"][index, n:] == 0)
    boxes = out[f"{prefix}/detection_boxes"][index, :n] * np.array([h, w, h, w], np.float32)
    np.testing.assert_allclose(boxes, expected["rois"], atol=0.5)
    np.testing.assert_allclose(out[f"{prefix}/detection_scores"][index, :n], expected["scores"], atol=1e-4)
    classes = out[f"{prefix}/detection_classes"][index]
    np.testing.assert_array_equal(classes[:n], expected["class_ids"].astype(np.float32))
    assert np.all(classes[n:] == 0) and np.all(out[f"{prefix}/detection_scores"][index, n:] == 0)
    masks = out[f"{prefix}/detection_masks"][index, :n]
    assert masks.shape == (n, 28, 28) and np.all((masks >= 0) & (masks <= 1))
    assert np.all(out[f"{prefix}/detection_masks"][index, n:] == 0)
    pasted = paste_masks(masks, boxes, (h, w), config.DETECTION_MASK_THRESHOLD)
    for i in range(n):
        a, b = pasted[..., i], expected["masks"][..., i]
        union = np.logical_or(a, b).sum()
        iou = 1.0 if union == 0 else np.logical_and(a, b).sum() / union
        assert iou >= 0.99, f"mask {i}: IoU {iou:.4f}"


@pytest.fixture(scope="module")
def square_export(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = MaskRCNN(ExportConfig())
    base = tmp_path_factory.mktemp("square")
    path = export.export_saved_model(model, base / "model")
    return model, path


@pytest.fixture(scope="module")
def pad32_export(tmp_path_factory):
    """A "pad32" model exported through export_from_files (weights file + config)."""
    keras.utils.set_random_seed(2)
    config = ExportConfig(IMAGE_RESIZE_MODE="pad32")
    model = MaskRCNN(config)
    base = tmp_path_factory.mktemp("pad32")
    weights = base / "model.weights.h5"
    model.save_weights(str(weights))
    path = export.export_from_files(weights, config, base / "model", version=3)
    return model, path


def test_layout_labels_and_stock_ops_only(square_export):
    model, path = square_export
    path = Path(path)
    assert path.name == "1" and (path / "saved_model.pb").is_file()
    assert (path / "variables").is_dir()
    labels = (path / "assets" / "labels.txt").read_text().splitlines()
    assert labels == list(ExportConfig.CLASS_NAMES)
    assert export.find_non_stock_ops(path) == []
    # No staging directory is left behind next to the version.
    assert [p.name for p in path.parent.iterdir()] == ["1"]


def test_fresh_process_square_parity_and_bad_inputs(square_export, tmp_path):
    model, path = square_export
    config = model.config
    sizes = [(100, 150), (128, 128), (90, 60), (37, 200)]
    images = [_image(h, w) for h, w in sizes]
    pair = [_image(70, 110), _image(70, 110)]
    encoded = [images[0], images[2]]  # different sizes in one batch
    arrays = {f"img{i}": im[None] for i, im in enumerate(images)}
    arrays["pair"] = np.stack(pair)
    arrays["png2"] = np.array([_png(im) for im in encoded])
    arrays["jpg1"] = np.array([_jpeg(images[1])])
    arrays["float"] = images[0][None].astype(np.float32)
    arrays["rank3"] = images[0]
    arrays["rgba"] = np.concatenate([images[0], images[0][..., :1]], axis=-1)[None]
    arrays["empty_batch"] = np.zeros((0, 32, 32, 3), np.uint8)
    arrays["empty_string"] = np.array([b""])
    arrays["corrupt_jpeg"] = np.array([_jpeg(images[1])[:20] + b"\x00garbage" * 40])
    arrays["strings_2d"] = np.array([[_png(images[2])]])
    requests = {f"img{i}": ("serving_default", f"img{i}", "tf2") for i in range(len(images))}
    requests["pair"] = ("serving_default", "pair", "tf2")
    requests["png2"] = ("encoded_image", "png2", "tf2")
    requests["jpg1"] = ("encoded_image", "jpg1", "tf2")
    bad = {
        "float": "serving_default", "rank3": "serving_default", "rgba": "serving_default",
        "empty_batch": "serving_default", "empty_string": "encoded_image",
        "corrupt_jpeg": "encoded_image", "strings_2d": "encoded_image",
    }
    for name, signature in bad.items():
        requests[f"bad_{name}"] = (signature, name, "tf2")
    # After all the bad requests, the same model object still answers.
    requests["after_uint8"] = ("serving_default", "img0", "tf2")
    requests["after_encoded"] = ("encoded_image", "png2", "tf2")
    # TF1 session loading, as TF Serving does (fails if variables do not restore).
    requests["session_uint8"] = ("serving_default", "img0", "session")
    requests["session_encoded"] = ("encoded_image", "png2", "session")

    out = run_client(path, requests, arrays, tmp_path)
    assert not out["mrcnn_imported"] and not out["custom_op_registered"]
    assert out["labels"].item().splitlines() == list(ExportConfig.CLASS_NAMES)
    np.testing.assert_array_equal(
        out["img0/class_names"].astype(str), np.array([ExportConfig.CLASS_NAMES])
    )
    # Batched like every other output (REST row format), one row per image.
    assert out["pair/class_names"].shape == (2, len(ExportConfig.CLASS_NAMES))
    assert out["img0/detection_boxes"].shape == (1, 20, 4)
    assert out["img0/detection_masks"].shape == (1, 20, 28, 28)
    assert out["img0/detection_classes"].dtype == np.float32
    assert out["img0/num_detections"].dtype == np.float32

    for i, image in enumerate(images):  # batch 1, several sizes and aspect ratios
        assert_parity(out, f"img{i}", 0, image, model.detect([image])[0], config)
    expected = model.detect(pair, batch_size=2)  # batch 2
    for i in range(2):
        assert_parity(out, "pair", i, pair[i], expected[i], config)
    expected = model.detect(encoded, batch_size=2)  # PNG batch of two sizes
    for i in range(2):
        assert_parity(out, "png2", i, encoded[i], expected[i], config)
    decoded = tf.io.decode_jpeg(arrays["jpg1"][0], channels=3).numpy()
    assert_parity(out, "jpg1", 0, decoded, model.detect([decoded])[0], config)

    messages = {
        "float": "expected to be a uint8 tensor",
        "rank3": "input_tensor must be uint8 [batch, H, W, 3] RGB (got another rank)",
        "rgba": "(got another number of channels)",
        "empty_batch": "the batch is empty",
        "empty_string": "empty string; expected JPEG or PNG bytes",
        "corrupt_jpeg": "Invalid JPEG data",
        "strings_2d": "string vector [batch] of JPEG/PNG bytes (got another rank)",
    }
    for name, message in messages.items():
        error = str(out.get(f"bad_{name}/error", "no error"))
        assert error.startswith("InvalidArgumentError") and message in error, (name, error)
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_array_equal(out[f"after_uint8/{key}"], out[f"img0/{key}"])
        np.testing.assert_array_equal(out[f"after_encoded/{key}"], out[f"png2/{key}"])
        np.testing.assert_allclose(out[f"session_uint8/{key}"], out[f"img0/{key}"], atol=1e-5)
        np.testing.assert_allclose(out[f"session_encoded/{key}"], out[f"png2/{key}"], atol=1e-5)


def test_fresh_process_pad32_parity(pad32_export, tmp_path):
    """"pad32" pads each batch to its largest image: the export crops its canvas alike."""
    model, path = pad32_export
    assert Path(path).name == "3"
    images = [_image(100, 150), _image(90, 60)]
    arrays = {
        "wide": np.array([_png(images[0])]),  # alone: canvas 96x128
        "png2": np.array([_png(images[0]), _png(images[1])]),  # together: 128x128
    }
    requests = {
        "wide": ("encoded_image", "wide", "tf2"),
        "png2": ("encoded_image", "png2", "tf2"),
    }
    out = run_client(path, requests, arrays, tmp_path)
    assert not out["mrcnn_imported"]
    assert_parity(out, "wide", 0, images[0], model.detect([images[0]])[0], model.config)
    expected = model.detect(images, batch_size=2)
    for i in range(2):
        assert_parity(out, "png2", i, images[i], expected[i], model.config)


def test_saved_model_cli_lists_signatures(square_export):
    _, path = square_export
    cli = Path(sys.executable).with_name("saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [str(cli), "show", "--all", "--dir", path], capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "signature_def['serving_default']" in text and "signature_def['encoded_image']" in text
    assert "dtype: DT_UINT8" in text and "shape: (-1, -1, -1, 3)" in text
    assert "dtype: DT_STRING" in text
    for name in export.OUTPUT_NAMES:
        assert f"outputs['{name}']" in text
    # Concrete functions can only be listed when no custom op is in the graph.
    listed = text.split("Concrete Functions:")[1]
    assert "N/A" not in listed
    assert "Function Name: 'detect_images'" in listed and "Function Name: 'detect_encoded'" in listed


def test_custom_op_model_exports_stock_ops_only(square_export, tmp_path):
    from mrcnn.ops import custom_roi_align

    if not custom_roi_align.is_available():
        pytest.skip("custom RoIAlign op not built here")
    portable, _ = square_export
    model = MaskRCNN(ExportConfig(ROI_ALIGN_IMPLEMENTATION="custom"))
    model.set_weights(portable.get_weights())
    # version=None: the SavedModel directly in the folder (e.g. runs/demo/saved_model).
    path = export.export_saved_model(model, tmp_path / "saved_model", version=None)
    assert path == str(tmp_path / "saved_model") and Path(path, "saved_model.pb").is_file()
    assert export.find_non_stock_ops(path) == []
    assert model.config.ROI_ALIGN_IMPLEMENTATION == "custom"  # the caller's model is untouched
    # Same numbers as the original model's detect().
    image = _image(100, 150)
    got = tf.saved_model.load(path).signatures["serving_default"](input_tensor=image[None])
    got = {f"custom/{k}": v.numpy() for k, v in got.items()}
    assert_parity(got, "custom", 0, image, model.detect([image])[0], model.config)


def test_scanner_finds_custom_op(tmp_path):
    from mrcnn.ops import custom_roi_align

    if not custom_roi_align.is_available():
        pytest.skip("custom RoIAlign op not built here")

    class WithCustomOp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 2], tf.float32)])
        def pool(self, x):
            boxes = tf.constant([[0.0, 0.0, 4.0, 4.0]])
            return custom_roi_align.roi_align(x, boxes, tf.zeros([1], tf.int32), (2, 2), 1.0, 2, True)

    module = WithCustomOp()
    tf.saved_model.save(module, str(tmp_path / "sm"))
    assert export.find_non_stock_ops(tmp_path / "sm") == ["MrcnnRoiAlign"]
    with pytest.raises(export.NonStockOpError, match="MrcnnRoiAlign"):
        export.assert_stock_ops_only(tmp_path / "sm")


def test_export_arguments_are_checked(square_export, tmp_path):
    model, path = square_export
    base = Path(path).parent
    with pytest.raises(FileExistsError):
        export.export_saved_model(model, base, version=1)
    with pytest.raises(ValueError, match="version"):
        export.export_saved_model(model, tmp_path, version=0)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        export.export_saved_model(model, tmp_path, class_names=["BG", "a"])
    (tmp_path / "notes.txt").write_text("not an export")
    with pytest.raises(FileExistsError):
        export.export_saved_model(model, tmp_path, version=None)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(FileExistsError, match="no saved_model.pb"):
        export._remove_old_export(tmp_path)
    assert (tmp_path / "notes.txt").is_file()


def test_load_config_specs(tmp_path):
    assert type(export.load_config("mrcnn.config:Config")) is Config
    path = tmp_path / "cfg.json"
    path.write_text(ExportConfig(IMAGE_RESIZE_MODE="pad32").to_json())
    loaded = export.load_config(str(path))
    assert loaded.IMAGE_RESIZE_MODE == "pad32" and loaded.NUM_CLASSES == 4
    module = tmp_path / "my_cfg.py"
    module.write_text("from mrcnn.config import Config\nclass C(Config):\n    NUM_CLASSES = 7\n")
    assert export.load_config(f"{module}:C").NUM_CLASSES == 7
    with pytest.raises(ValueError, match="MODULE:CLASS"):
        export.load_config("mrcnn.config")
    with pytest.raises(ValueError, match="not a mrcnn.config.Config"):
        export.load_config("mrcnn.export.saved_model:export_saved_model")
    # The `mrcnn export` options live with the other commands' in mrcnn/cli.py.
    from mrcnn.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "--weights", "w.h5", "--config", "m:C", "--output", "out"])
    assert (args.version, args.overwrite, args.format) == (1, False, "saved_model")
    args = parser.parse_args(["export", "--weights", "w", "--config", "m:C", "--output", "o", "--no-version-dir"])
    assert args.version is None


def _png_declaring(height: int, width: int) -> bytes:
    """A real 1x1 PNG whose IHDR (CRC fixed) declares height x width: a tiny file
    that would need height * width * 3 bytes if it were decoded."""
    import struct
    import zlib

    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def test_max_pixels_refused_before_decoding_and_serving_continues(square_export, tmp_path):
    """An oversize request gets InvalidArgument and the next request is served: with a
    small --max-pixels (real images just over it) and with the default limit (a 1 kB PNG
    declaring 20000 x 20000, which decode_image would allocate 1.2 GB for)."""
    model, _ = square_export
    limited = export.export_saved_model(model, tmp_path / "limited", max_pixels=64 * 64)
    small, big = _image(60, 64), _image(64, 65)  # 3840 and 4160 pixels
    arrays = {
        "big": big[None], "big_png": np.array([_png(big)]), "big_jpeg": np.array([_jpeg(big)]),
        "mixed": np.array([_png(small), _png(big)]),
        "small": small[None], "small_png": np.array([_png(small)]),
    }
    requests = {name: ("serving_default" if name in ("big", "small") else "encoded_image", name, "tf2")
                for name in ("big", "big_png", "big_jpeg", "mixed", "small", "small_png")}
    (tmp_path / "a").mkdir()
    out = run_client(limited, requests, arrays, tmp_path / "a")
    for name in ("big", "big_png", "big_jpeg", "mixed"):
        error = str(out.get(f"{name}/error", "no error"))
        assert error.startswith("InvalidArgumentError") and "larger than max_pixels=4096" in error, error
        if name != "big":
            assert "before decoding" in error
    expected = model.detect([small])[0]
    assert_parity(out, "small", 0, small, expected, model.config)
    assert_parity(out, "small_png", 0, small, expected, model.config)

    # The default limit (4096 * 4096 * 1.5 pixels) of the shared export.
    _, path = square_export
    bomb = _png_declaring(20000, 20000)
    assert len(bomb) < 1000
    arrays = {"bomb": np.array([bomb]), "ok": np.array([_png(small)])}
    requests = {"bomb": ("encoded_image", "bomb", "tf2"), "ok": ("encoded_image", "ok", "tf2"),
                "bomb_session": ("encoded_image", "bomb", "session"),
                "ok_session": ("encoded_image", "ok", "session")}
    (tmp_path / "b").mkdir()
    out = run_client(path, requests, arrays, tmp_path / "b")
    for name in ("bomb", "bomb_session"):
        error = str(out.get(f"{name}/error", "no error"))
        assert "larger than max_pixels=25165824" in error and "before decoding" in error, error
    assert_parity(out, "ok", 0, small, expected, model.config)
    assert_parity(out, "ok_session", 0, small, expected, model.config)


def test_encoded_image_pixels_reads_headers():
    from PIL import Image as PILImage

    image = _image(37, 53)
    buffers = {"PNG": _png(image), "JPEG": _jpeg(image)}
    for fmt in ("GIF", "BMP"):
        buf = io.BytesIO()
        PILImage.fromarray(image).save(buf, format=fmt)
        buffers[fmt] = buf.getvalue()
    for fmt, data in buffers.items():
        assert int(export.encoded_image_pixels(tf.constant(data))) == 37 * 53, fmt
    assert int(export.encoded_image_pixels(tf.constant(_png_declaring(20000, 30000)))) == 6 * 10**8
    assert int(export.encoded_image_pixels(tf.constant(b"not an image"))) == 0
    assert int(export.encoded_image_pixels(tf.constant(b""))) == 0
