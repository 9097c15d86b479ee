"""Seeded weights for the matterport reference network, and the Keras 2 ``.h5`` that holds them.

tests/fixtures/matterport/ holds what matterport/Mask_RCNN's own ``model.py`` (run on TF 2.21
with tf-keras by scripts/record_matterport_fixtures.py) computes on two tiny_coco photos with
these weights. The weights are not stored: :func:`weights_for` regenerates them from the seed
in ``manifest.json`` with NumPy only, and :func:`write_keras2_h5` writes them into a file with
the layout of ``keras_model.save_weights("x.h5")`` of Keras 2 (tf-keras 2.21), which is the
layout of matterport's own weight files (``mask_rcnn_coco.h5``), so that a loader of those files
can be tested on it without tf-keras. No TensorFlow import here.

Layout (what tf-keras' ``hdf5_format.save_weights_to_hdf5_group`` writes): root attributes
``layer_names`` (every layer of ``keras_model.layers``, in order, as a fixed-width bytes array),
``backend`` and ``keras_version`` (bytes); one group per layer, created in the order of the
sorted layer names, with a ``weight_names`` attribute (bytes array, possibly empty) and one
float32 dataset per weight at the weight's name, ``/`` making nested groups
(``conv1/conv1/kernel:0``, ``rpn_model/rpn_conv_shared/kernel:0``); then a group
``top_level_model_weights`` with an empty ``weight_names``. ``manifest.json`` lists it all.

Random values: every weight has its own stream, PCG64 seeded by ``SeedSequence([seed,
crc32(group/weight name)])``, turned into uniform doubles by hand from ``random_raw`` (the bit
generator's output is fixed by its algorithm; NumPy does not promise that ``Generator`` methods
keep their streams across versions). All draws are uniform; see :func:`weight_rule` for the
scales chosen so that the untrained network stays numerically sane over its 16 residual blocks.
The manifest's ``overrides`` (``{group: {weight name: values}}``) replace drawn values: the
recorder calibrates the 4 biases of ``mrcnn_class_logits`` there (see
scripts/record_matterport_fixtures.py) so that the random network's detections are varied.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(HERE, "fixtures", "matterport")
MANIFEST = os.path.join(FIXTURE_DIR, "manifest.json")

# What tf-keras does when an attribute is larger than an HDF5 object header can hold.
HDF5_OBJECT_HEADER_LIMIT = 64512

# Output layers with no activation after them (logits, deltas, mask logits): unit-variance
# outputs (gain sqrt(1/2) on He's), the class logits half that (less saturated class scores).
LINEAR_GAINS = {
    "rpn_class_raw": np.sqrt(0.5),
    "rpn_bbox_pred": np.sqrt(0.5),
    "mrcnn_class_logits": 0.5 * np.sqrt(0.5),
    "mrcnn_bbox_fc": np.sqrt(0.5),
    "mrcnn_mask": np.sqrt(0.5),
}


def load_manifest(path: str = MANIFEST) -> dict:
    with open(path) as f:
        return json.load(f)


def _uniform(key: str, seed: int, n: int) -> np.ndarray:
    """``n`` doubles in [0, 1) from the stream of ``key``: the top 53 bits of PCG64's words."""
    seq = np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf8"))])
    raw = np.random.PCG64(seq).random_raw(n)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def weight_rule(group: str, weight_name: str, shape: Iterable[int]) -> tuple[float, float]:
    """``(low, high)`` of the uniform distribution of one weight.

    - conv / dense kernels: He-uniform, ``U(-a, a)`` with ``a = gain * sqrt(6 / fan_in)``
      (fan_in = the product of all but the last dimension; the 2x2 stride-2 transposed conv of
      the mask head: its input channels); gain 1 after ReLU inputs, ``1/64`` for ``conv1`` (its
      input is mean-subtracted 0-255 pixels), ``sqrt(1/2)`` for the linear output layers
      (:data:`LINEAR_GAINS`: unit-variance logits and deltas; half that for the class logits);
    - biases: ``U(-0.05, 0.05)``;
    - BatchNorm: gamma ``U(0.5, 1.5)``, but ``U(0.1, 0.3)`` for the last BN of each residual
      branch (``bn*_branch2c``) and ``U(0.3, 0.6)`` for the shortcut BNs (``bn*_branch1``), so that
      16 residual additions do not blow the activations up; beta ``U(-0.1, 0.1)``;
      moving_mean ``U(-0.1, 0.1)``; moving_variance ``U(0.5, 1.5)``.
    """
    shape = tuple(int(s) for s in shape)
    leaf = weight_name.rsplit("/", 1)[-1].split(":")[0]
    layer = weight_name.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in weight_name else group
    if leaf == "kernel":
        if layer == "mrcnn_mask_deconv":
            fan_in = shape[-1]  # Conv2DTranspose kernel [kh, kw, out, in], stride = kernel size
        else:
            fan_in = int(np.prod(shape[:-1]))
        gain = 1.0
        if layer == "conv1":
            gain = 1.0 / 64.0
        elif layer in LINEAR_GAINS:
            gain = LINEAR_GAINS[layer]
        a = gain * np.sqrt(6.0 / fan_in)
        return -a, a
    if leaf == "bias":
        return -0.05, 0.05
    if leaf == "gamma":
        if layer.endswith("_branch2c"):
            return 0.1, 0.3
        if layer.endswith("_branch1"):
            return 0.3, 0.6
        return 0.5, 1.5
    if leaf in ("beta", "moving_mean"):
        return -0.1, 0.1
    if leaf == "moving_variance":
        return 0.5, 1.5
    raise ValueError(f"no rule for weight {group}/{weight_name}")


def weight_array(
    group: str, weight_name: str, shape: Iterable[int], seed: int, overrides: dict | None = None
) -> np.ndarray:
    """The float32 value of one weight (its own stream: any subset can be generated alone), or
    its value in ``overrides`` (the manifest's) when it has one."""
    shape = tuple(int(s) for s in shape)
    if overrides and weight_name in overrides.get(group, {}):
        value = np.asarray(overrides[group][weight_name], dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"override of {group}/{weight_name}: {value.shape} != {shape}")
        return value
    low, high = weight_rule(group, weight_name, shape)
    n = int(np.prod(shape)) if shape else 1
    u = _uniform(f"{group}/{weight_name}", seed, n)
    return (low + (high - low) * u).astype(np.float32).reshape(shape)


def weights_for(
    manifest: dict, seed: int | None = None, groups: Iterable[str] | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """``{(layer group, weight name): float32 array}`` for every weight in the manifest (or only
    those of ``groups``), in file order. ``seed`` defaults to the manifest's."""
    seed = manifest["seed"] if seed is None else seed
    wanted = None if groups is None else set(groups)
    out: dict[tuple[str, str], np.ndarray] = {}
    for group in manifest["groups"]:
        if wanted is not None and group["name"] not in wanted:
            continue
        for w in group["weights"]:
            out[(group["name"], w["name"])] = weight_array(
                group["name"], w["name"], w["shape"], seed, manifest.get("overrides")
            )
    return out


def _save_attribute(obj, name: str, data: list[bytes]) -> None:
    """tf-keras' ``save_attributes_to_hdf5_group``: a bytes array, chunked as ``name0``,
    ``name1``, ... when it is larger than an object header."""
    array = np.asarray(data)
    num_chunks = 1
    chunks = np.array_split(array, num_chunks)
    while any(x.nbytes > HDF5_OBJECT_HEADER_LIMIT for x in chunks):
        num_chunks += 1
        chunks = np.array_split(array, num_chunks)
    if num_chunks > 1:
        for i, chunk in enumerate(chunks):
            obj.attrs[f"{name}{i}"] = chunk
    else:
        obj.attrs[name] = data


def write_keras2_h5(path: str, manifest: dict | None = None, seed: int | None = None) -> str:
    """Write the seeded weights as ``keras_model.save_weights(path)`` of tf-keras 2.21 would:
    the layout of ``manifest`` (default: tests/fixtures/matterport/manifest.json). Returns
    ``path``. About 180 MB for the reference network (ResNet-50, 4 classes)."""
    import h5py

    manifest = load_manifest() if manifest is None else manifest
    seed = manifest["seed"] if seed is None else seed
    with h5py.File(path, "w") as f:
        _save_attribute(f, "layer_names", [n.encode("utf8") for n in manifest["layer_names"]])
        f.attrs["backend"] = manifest["root_attrs"]["backend"].encode("utf8")
        f.attrs["keras_version"] = manifest["root_attrs"]["keras_version"].encode("utf8")
        for group in manifest["groups"]:
            g = f.create_group(group["name"])
            names = [w["name"] for w in group["weights"]]
            _save_attribute(g, "weight_names", [n.encode("utf8") for n in names])
            for w in group["weights"]:
                value = weight_array(
                    group["name"], w["name"], w["shape"], seed, manifest.get("overrides")
                )
                dset = g.create_dataset(w["name"], value.shape, dtype=value.dtype)
                if not value.shape:
                    dset[()] = value
                else:
                    dset[:] = value
    return path
