"""The matterport reference fixture (tests/fixtures/matterport/) is self-consistent without
tf-keras: ``write_keras2_h5`` rebuilds the Keras 2 weight file in exactly the layout the
manifest recorded from tf-keras' ``save_weights``, the seeded weights are reproducible, and
the recorded arrays have the shapes the README describes."""

import os

import numpy as np
import pytest

from tests import matterport_reference as ref

h5py = pytest.importorskip("h5py")

# A few layers of every kind: the stem, a bottleneck's BN, the nested RPN sub-model, a
# TimeDistributed head and the calibrated class logits.
SAMPLE_GROUPS = ("conv1", "bn2a_branch2c", "rpn_model", "mrcnn_class_conv1", "mrcnn_class_logits")


@pytest.fixture(scope="module")
def manifest():
    return ref.load_manifest()


def _strings(values):
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def test_written_file_has_the_manifest_layout_and_values(manifest, tmp_path):
    path = ref.write_keras2_h5(str(tmp_path / "mask_rcnn_parity.h5"), manifest)
    sample = ref.weights_for(manifest, groups=SAMPLE_GROUPS)
    with h5py.File(path, "r") as f:
        assert _strings(f.attrs["layer_names"]) == manifest["layer_names"]
        for key in ("backend", "keras_version"):
            assert _strings(f.attrs[key]) == [manifest["root_attrs"][key]]
        names = [g["name"] for g in manifest["groups"]]
        assert sorted(f.keys()) == sorted(names)
        # tf-keras: one group per layer, weightless layers included, plus the model's own.
        assert set(names) == set(manifest["layer_names"]) | {"top_level_model_weights"}
        n_values = 0
        for group in manifest["groups"]:
            g = f[group["name"]]
            assert _strings(g.attrs["weight_names"]) == [w["name"] for w in group["weights"]] or (
                not group["weights"] and len(g.attrs["weight_names"]) == 0
            )
            for w in group["weights"]:
                dset = g[w["name"]]
                assert list(dset.shape) == w["shape"], (group["name"], w["name"])
                assert str(dset.dtype) == w["dtype"] == "float32"
                n_values += int(np.prod(w["shape"]))
                if group["name"] in SAMPLE_GROUPS:
                    np.testing.assert_array_equal(dset[()], sample[(group["name"], w["name"])])
        # Nested groups as Keras 2 writes them: <layer>/<layer>/kernel:0, and the sub-model's
        # weights under its own group.
        assert f["conv1"]["conv1"]["kernel:0"].shape == (7, 7, 3, 64)
        assert "rpn_conv_shared" in f["rpn_model"]
        assert n_values == manifest["num_parameters"]


def test_seeded_weights_are_reproducible(manifest):
    first = ref.weights_for(manifest, groups=SAMPLE_GROUPS)
    second = ref.weights_for(manifest, groups=SAMPLE_GROUPS)
    assert first.keys() == second.keys() and len(first) >= 12
    for key, value in first.items():
        assert value.dtype == np.float32
        assert value.tobytes() == second[key].tobytes(), key
    other = ref.weights_for(manifest, seed=manifest["seed"] + 1, groups=["conv1"])
    assert not np.array_equal(other[("conv1", "conv1/kernel:0")], first[("conv1", "conv1/kernel:0")])
    # The one calibrated value comes from the manifest, the rest from the rule.
    (bias,) = manifest["overrides"]["mrcnn_class_logits"]
    np.testing.assert_array_equal(
        first[("mrcnn_class_logits", bias)],
        np.asarray(manifest["overrides"]["mrcnn_class_logits"][bias], np.float32),
    )
    gamma = first[("bn2a_branch2c", "bn2a_branch2c/gamma:0")]
    assert 0.1 <= gamma.min() and gamma.max() <= 0.3
    kernel = first[("conv1", "conv1/kernel:0")]
    assert np.abs(kernel).max() <= np.sqrt(6.0 / (7 * 7 * 3)) / 64


def test_recorded_arrays(manifest):
    config = manifest["config"]
    anchors = 3 * sum((256 // s) ** 2 for s in config["BACKBONE_STRIDES"])
    for image in manifest["images"]:
        data = np.load(os.path.join(ref.FIXTURE_DIR, image["fixture"]))
        assert data["image"].shape == tuple(image["original_shape"])
        assert data["molded_image"].shape == (256, 256, 3)
        assert data["anchors"].shape == data["rpn_class"].shape[:1] + (4,) == (anchors, 4)
        assert data["rpn_rois"].shape == (config["POST_NMS_ROIS_INFERENCE"], 4)
        assert data["mrcnn_class"].shape == (200, config["NUM_CLASSES"])
        assert data["mrcnn_detection"].shape == (config["DETECTION_MAX_INSTANCES"], 6)
        assert data["mrcnn_mask"].shape == (20, 28, 28, config["NUM_CLASSES"])
        for level, stride in zip(("P2", "P3", "P4", "P5", "P6"), config["BACKBONE_STRIDES"]):
            assert data[level].shape == (256 // stride, 256 // stride, manifest["p_channels"])
        detections = data["mrcnn_detection"]
        n = image["num_detections"]
        assert 5 <= n < config["DETECTION_MAX_INSTANCES"]  # some empty slots
        assert (detections[:n, 4] > 0).all() and (detections[n:] == 0).all()
        assert len(set(detections[:n, 4].tolist())) >= 2
        np.testing.assert_array_equal(data["class_ids"], image["class_ids"])
        h, w, count = data["masks_shape"]
        masks = np.unpackbits(data["masks_packed"])[: h * w * count].reshape(h, w, count)
        assert (h, w) == tuple(image["original_shape"][:2]) and count == len(data["rois"])
        assert masks.any(axis=(0, 1)).all()
