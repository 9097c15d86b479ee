"""Record matterport/Mask_RCNN's own inference outputs as fixtures (tests/fixtures/matterport/).

matterport's ``mrcnn/model.py``, ``utils.py`` and ``config.py`` (a checkout given by
``--matterport-dir``; third-party code, never copied into this repository) are run on TF 2.21
with tf-keras (Keras 2), in inference mode, as a reference for this project's re-implementation.
The three files are read as text, the TF2 edits listed in :data:`EDITS` are applied (each one
must match exactly as many times as listed, so a different checkout fails loudly), and the
sources are executed as the modules ``mrcnn_matterport.utils``, ``.config`` and ``.model``
(``mrcnn`` is this project's package). The edits, and why each is needed:

- model.py: ``import keras`` / ``keras.backend`` / ``keras.layers`` / ``keras.models`` ->
  ``tf_keras`` (Keras 2 on TF 2.21 is the tf-keras package), and ``keras.engine as KE`` ->
  ``tf_keras.layers as KE`` (``keras.engine`` is private in Keras >= 2.4; ``KE.Layer`` is
  ``keras.layers.Layer``);
- model.py: ``from mrcnn import utils`` -> ``from mrcnn_matterport import utils``;
- model.py: ``tf.log`` -> ``tf.math.log`` (log2_graph, the RoI level rule);
- model.py: ``tf.sets.set_intersection`` -> ``tf.sets.intersection`` and
  ``tf.sparse_tensor_to_dense`` -> ``tf.sparse.to_dense`` (refine_detections_graph, twice
  each); ``tf.to_float(x)`` -> ``tf.cast(x, tf.float32)`` (the detections' class ids);
- model.py: ``tf.range(probs.shape[0])`` -> ``tf.range(tf.shape(probs)[0])``
  (refine_detections_graph) and ``KL.Reshape((s[1], num_classes, 4))`` ->
  ``KL.Reshape((-1, num_classes, 4))`` (fpn_classifier_graph): under TF2 the RoI count of
  the symbolic tensors is unknown (ProposalLayer pads by a dynamic amount), and
  ``tf.range`` / ``Reshape`` refuse ``None``;
- model.py, ``load_weights``: ``from keras.engine import saving`` (or ``topology``) ->
  ``tf_keras.src.saving.legacy.hdf5_format``, whose ``load_weights_from_hdf5_group_by_name``
  takes a model (``.layers``, the model's own top-level weights, ``_flatten_layers()``)
  instead of a list of layers: the list is wrapped in a namespace with those (no top-level
  weights; ``by_name=False`` is not used here and keeps matterport's call);
- utils.py: ``anti_aliasing=False`` added to the two ``skimage.transform.resize`` calls of the
  inference path (``resize_image``, ``unmold_mask``): scikit-image >= 0.19 smooths before
  downsampling by default; matterport wrote for 0.13 (no anti-aliasing) and its later
  ``utils.resize`` wrapper pins ``anti_aliasing=False``.

Each is needed (without any one of them the inference model does not build, or loads no
weights, or molds other pixels). Nothing else is changed: training-only TF1 calls
(``tf.random_shuffle``, ``fit_generator``, ``metrics_tensors``, ...) are never reached.
``TF_USE_LEGACY_KERAS=1`` is set so that TF's own Keras hooks are tf-keras' (the model also
builds without it), and the run is on CPU (2 threads).

The source files are read as saved; ``SOURCE.txt`` in ``--matterport-dir``, if present (where
each file came from), is copied into README.md.

The reference network (:func:`reference_config`): ResNet-50 FPN, 3 classes + background,
256 x 256 "square" images, 200 proposals, 20 detections, everything else matterport's
defaults. Its weights are seeded random values, regenerated without TensorFlow by
tests/matterport_reference.py. The script:

1. builds matterport's inference model and saves tf-keras' own ``save_weights("x.h5")`` of it,
   whose layout (groups, attributes, weight names, shapes) becomes ``manifest.json``;
2. calibrates the one non-random value (:func:`calibrate_class_bias`), writes the seeded
   weights with ``write_keras2_h5`` (the same layout, checked object by object
   against tf-keras' file), loads that file with matterport's ``load_weights(path,
   by_name=True)`` into zeroed weights, and checks that every weight equals, bit for bit, what ``set_weights`` of the
   generated arrays gives;
3. runs two tiny_coco photos (:data:`IMAGES`) through ``mold_inputs``, the inference graph
   (a Keras model with extra outputs on the graph's internal tensors, as matterport's
   ``run_graph``) and ``detect``, and saves one ``<photo>.npz`` per image plus README.md.

Run (needs a venv with tensorflow 2.21, tf-keras 2.21, h5py, scikit-image)::

    /work/venvs/mport/bin/python scripts/record_matterport_fixtures.py \\
        [--matterport-dir /work/mport_ref] [--out tests/fixtures/matterport]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import matterport_reference as ref  # noqa: E402 (pure NumPy + h5py)

DEFAULT_MATTERPORT = "/work/mport_ref"
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "matterport")
TINY_COCO = os.path.join(ROOT, "..", "shared", "datasets", "tiny_coco", "train2017")
PACKAGE = "mrcnn_matterport"
SEED = 5
# Added to the calibrated background logit (see calibrate_class_bias).
BG_LOGIT_OFFSET = 2.0
RECORDED_ON = "2026-12-07"
# One landscape, one portrait photo with a few objects of varied aspect ratio.
IMAGES = ("000000391895.jpg", "000000483108.jpg")
# Channels of P2..P6 kept in the fixture (all 256 would be 5.6 MB per image).
P_CHANNELS = 8
# Graph tensors fetched per image: fixture key -> matterport layer name.
STAGES = {
    "P2": "fpn_p2",
    "P3": "fpn_p3",
    "P4": "fpn_p4",
    "P5": "fpn_p5",
    "P6": "fpn_p6",
    "rpn_class": "rpn_class",
    "rpn_bbox": "rpn_bbox",
    "rpn_rois": "ROI",
    "mrcnn_class": "mrcnn_class",
    "mrcnn_bbox": "mrcnn_bbox",
    "mrcnn_detection": "mrcnn_detection",
    "mrcnn_mask": "mrcnn_mask",
}
# Backbone stage outputs: only their statistics are kept (manifest "activation_std").
BACKBONE = {"C2": "res2c_out", "C3": "res3d_out", "C4": "res4f_out", "C5": "res5c_out"}


@dataclasses.dataclass(frozen=True)
class Edit:
    """One literal replacement in a matterport source file."""

    file: str
    old: str
    new: str
    count: int
    why: str


EDITS: tuple[Edit, ...] = (
    Edit(
        "model.py",
        "import keras\nimport keras.backend as K\nimport keras.layers as KL\n"
        "import keras.engine as KE\nimport keras.models as KM\n",
        "import tf_keras as keras\nimport tf_keras.backend as K\nimport tf_keras.layers as KL\n"
        "import tf_keras.layers as KE\nimport tf_keras.models as KM\n",
        1,
        "Keras 2 on TF 2.21 is tf-keras; keras.engine is private since Keras 2.4 (KE.Layer = "
        "keras.layers.Layer)",
    ),
    Edit(
        "model.py",
        "from mrcnn import utils\n",
        f"from {PACKAGE} import utils\n",
        1,
        "matterport's package is loaded as mrcnn_matterport (mrcnn is this project)",
    ),
    Edit(
        "model.py",
        "return tf.log(x) / tf.log(2.0)",
        "return tf.math.log(x) / tf.math.log(2.0)",
        1,
        "tf.log is tf.math.log in TF2",
    ),
    Edit(
        "model.py",
        "tf.sets.set_intersection(",
        "tf.sets.intersection(",
        2,
        "tf.sets.set_intersection is tf.sets.intersection in TF2",
    ),
    Edit(
        "model.py",
        "tf.sparse_tensor_to_dense(",
        "tf.sparse.to_dense(",
        2,
        "tf.sparse_tensor_to_dense is tf.sparse.to_dense in TF2",
    ),
    Edit(
        "model.py",
        "tf.to_float(tf.gather(class_ids, keep))",
        "tf.cast(tf.gather(class_ids, keep), tf.float32)",
        1,
        "tf.to_float is gone in TF2",
    ),
    Edit(
        "model.py",
        "indices = tf.stack([tf.range(probs.shape[0]), class_ids], axis=1)",
        "indices = tf.stack([tf.range(tf.shape(probs)[0]), class_ids], axis=1)",
        1,
        "the RoI count of the symbolic tensor is None under TF2: tf.range needs the dynamic one",
    ),
    Edit(
        "model.py",
        'mrcnn_bbox = KL.Reshape((s[1], num_classes, 4), name="mrcnn_bbox")(x)',
        'mrcnn_bbox = KL.Reshape((-1, num_classes, 4), name="mrcnn_bbox")(x)',
        1,
        "the RoI count of the symbolic tensor is None under TF2; Reshape refuses None",
    ),
    Edit(
        "model.py",
        "        try:\n            from keras.engine import saving\n        except ImportError:\n"
        "            # Keras before 2.2 used the 'topology' namespace.\n"
        "            from keras.engine import topology as saving\n",
        "        from tf_keras.src.saving.legacy import hdf5_format as saving\n",
        1,
        "Keras 2's HDF5 weight loading lives in tf_keras.src.saving.legacy.hdf5_format",
    ),
    Edit(
        "model.py",
        "saving.load_weights_from_hdf5_group_by_name(f, layers)",
        "layers = list(layers); saving.load_weights_from_hdf5_group_by_name(f, "
        "__import__('types').SimpleNamespace(layers=layers, _trainable_weights=[], "
        "_non_trainable_weights=[], _flatten_layers=lambda: iter(layers)))",
        1,
        "tf-keras' by-name loader takes a model (its .layers, its own top-level weights: none "
        "here, and _flatten_layers() for finalize_state), not a list of layers",
    ),
    Edit(
        "utils.py",
        'order=1, mode="constant", preserve_range=True)',
        'order=1, mode="constant", preserve_range=True, anti_aliasing=False)',
        1,
        "resize_image: scikit-image >= 0.19 anti-aliases when downsampling; matterport's "
        "utils.resize pins anti_aliasing=False (0.13 behaviour)",
    ),
    Edit(
        "utils.py",
        'mask = skimage.transform.resize(mask, (y2 - y1, x2 - x1), order=1, mode="constant")',
        'mask = skimage.transform.resize(mask, (y2 - y1, x2 - x1), order=1, mode="constant",'
        " anti_aliasing=False)",
        1,
        "unmold_mask: the same (masks of boxes smaller than 28 px are downsampled)",
    ),
)


def apply_edits(file: str, text: str) -> str:
    """``text`` with every edit of ``file`` applied; each must match exactly ``count`` times."""
    for edit in EDITS:
        if edit.file != file:
            continue
        found = text.count(edit.old)
        if found != edit.count:
            raise RuntimeError(
                f"{file}: expected {edit.count} occurrence(s) of {edit.old!r}, found {found}: "
                "not the matterport revision these edits were written for"
            )
        text = text.replace(edit.old, edit.new)
    return text


def load_matterport(matterport_dir: str, edited_dir: str | None = None) -> types.ModuleType:
    """matterport's utils, config and model, edited for TF2, as ``mrcnn_matterport.*``.

    The edited sources are written to a temporary folder and executed from there: AutoGraph
    reads a function's source back from its file, which must be the edited text (the edits
    change line numbers)."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = []  # a package: "from mrcnn_matterport import utils" finds the attribute
    sys.modules[PACKAGE] = package
    edited_dir = edited_dir or tempfile.mkdtemp(prefix=f"{PACKAGE}_")
    os.makedirs(edited_dir, exist_ok=True)
    for name in ("utils", "config", "model"):
        with open(os.path.join(matterport_dir, "mrcnn", f"{name}.py"), encoding="utf8") as f:
            source = apply_edits(f"{name}.py", f.read())
        path = os.path.join(edited_dir, f"{name}.py")
        with open(path, "w", encoding="utf8") as f:
            f.write(source)
        module = types.ModuleType(f"{PACKAGE}.{name}")
        module.__file__ = path
        sys.modules[module.__name__] = module
        setattr(package, name, module)
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 (the reference code)
    return package


def reference_config(config_module: types.ModuleType, min_confidence: float):
    """The reference network's matterport Config."""

    class ParityConfig(config_module.Config):
        NAME = "parity"
        BACKBONE = "resnet50"
        NUM_CLASSES = 1 + 3
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        IMAGE_MIN_DIM = 256
        IMAGE_MAX_DIM = 256
        IMAGE_RESIZE_MODE = "square"
        POST_NMS_ROIS_INFERENCE = 200
        DETECTION_MAX_INSTANCES = 20
        DETECTION_MIN_CONFIDENCE = min_confidence

    return ParityConfig()


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def config_dict(config) -> dict:
    """The fields ``config.display()`` prints, JSON-able (``save_best_only``, a field of the
    stored config.py that upstream master does not have, left out)."""
    out = {}
    for name in dir(config):
        if name.startswith("__") or callable(getattr(config, name)) or name == "save_best_only":
            continue
        out[name] = _jsonable(getattr(config, name))
    return out


def _attr_strings(value) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def _load_attribute(obj, name: str) -> list[str]:
    """tf-keras' ``load_attributes_from_hdf5_group``: ``name`` or its chunks ``name0``, ..."""
    if name in obj.attrs:
        return [] if len(obj.attrs[name]) == 0 else _attr_strings(obj.attrs[name])
    out, i = [], 0
    while f"{name}{i}" in obj.attrs:
        out += _attr_strings(obj.attrs[f"{name}{i}"])
        i += 1
    return out


def h5_layout(path: str) -> dict:
    """The layout of a Keras 2 ``save_weights`` file, for ``manifest.json``."""
    import h5py

    with h5py.File(path, "r") as f:
        layer_names = _load_attribute(f, "layer_names")
        # tf-keras creates the layer groups in sorted order, then top_level_model_weights.
        order = sorted(layer_names) + ["top_level_model_weights"]
        if set(order) != set(f.keys()):
            raise RuntimeError(f"unexpected groups in {path}: {sorted(set(f.keys()) ^ set(order))}")
        groups = []
        for name in order:
            g = f[name]
            weights = [
                {"name": w, "shape": list(g[w].shape), "dtype": str(g[w].dtype)}
                for w in _load_attribute(g, "weight_names")
            ]
            groups.append({"name": name, "weights": weights})
        return {
            "root_attrs": {
                "backend": _attr_strings(f.attrs["backend"])[0],
                "keras_version": _attr_strings(f.attrs["keras_version"])[0],
            },
            "layer_names": layer_names,
            "groups": groups,
        }


def compare_h5(ours: str, theirs: str) -> None:
    """Every object of both files at the same path, with the same attributes (names, values,
    dtypes) and, for datasets, the same shape and dtype."""
    import h5py

    def objects(f) -> dict[str, object]:
        found = {"/": f}
        f.visititems(lambda name, obj: found.__setitem__(name, obj))
        return found

    with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
        oa, ob = objects(a), objects(b)
        if set(oa) != set(ob):
            raise RuntimeError(f"objects differ: {sorted(set(oa) ^ set(ob))[:10]}")
        for name in oa:
            x, y = oa[name], ob[name]
            if type(x) is not type(y):
                raise RuntimeError(f"{name}: {type(x).__name__} vs {type(y).__name__}")
            if set(x.attrs) != set(y.attrs):
                raise RuntimeError(f"{name}: attributes {sorted(x.attrs)} vs {sorted(y.attrs)}")
            for key in x.attrs:
                u, v = np.asarray(x.attrs[key]), np.asarray(y.attrs[key])
                if u.dtype != v.dtype or u.shape != v.shape or not np.array_equal(u, v):
                    raise RuntimeError(f"{name}: attribute {key}: {u!r} vs {v!r}")
            if isinstance(x, h5py.Dataset) and (x.shape != y.shape or x.dtype != y.dtype):
                raise RuntimeError(f"{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")


def set_generated_weights(keras_model, manifest: dict, seed: int) -> None:
    """``set_weights`` of the generated arrays, layer by layer, matched by weight name."""
    expected = ref.weights_for(manifest, seed)
    for layer in keras_model.layers:
        if layer.weights:
            layer.set_weights([expected[(layer.name, w.name)] for w in layer.weights])


def model_inputs(model, image: np.ndarray):
    """matterport's ``detect`` inputs for one image: molded images, metas, windows, and the
    (normalized) anchors, without and with the batch axis."""
    molded, metas, windows = model.mold_inputs([image])
    anchors = model.get_anchors(molded[0].shape)
    return molded, metas, windows, anchors, np.broadcast_to(anchors, (1,) + anchors.shape)


def calibrate_class_bias(model, manifest: dict, seed: int, images: list[np.ndarray]) -> dict:
    """The one value that is not drawn: the bias of ``mrcnn_class_logits``, set so that each
    class's logit averages 0 over the 200 proposals of the two photos, plus
    :data:`BG_LOGIT_OFFSET` for the background. Random heads otherwise give one class (a
    constant offset of the pooled features) to every proposal of an image. Returns the
    manifest's ``overrides``."""
    import tf_keras

    keras_model = model.keras_model
    set_generated_weights(keras_model, manifest, seed)
    layer = keras_model.get_layer("mrcnn_class_logits")
    probe = tf_keras.Model(keras_model.inputs, layer.output)
    logits = []
    for image in images:
        molded, metas, _, _, anchors = model_inputs(model, image)
        logits.append(probe.predict([molded, metas, anchors], verbose=0)[0])
    (bias,) = [w.name for w in layer.weights if w.name.endswith("bias:0")]
    drawn = ref.weights_for(manifest, seed, groups=[layer.name])[(layer.name, bias)]
    offset = np.zeros(drawn.shape, np.float64)
    offset[0] = BG_LOGIT_OFFSET
    value = (drawn - np.concatenate(logits).mean(axis=0) + offset).astype(np.float32)
    return {layer.name: {bias: [float(v) for v in value]}}


def check_loaded_weights(keras_model, manifest: dict, seed: int) -> int:
    """The weights ``load_weights(by_name=True)`` put in the model equal, bit for bit, those
    that ``set_weights`` of the generated arrays gives, and cover every weight of the model
    and of the file. Returns the number of weights."""
    expected = ref.weights_for(manifest, seed)
    loaded = [w.numpy().copy() for w in keras_model.weights]
    used = set()
    for layer in keras_model.layers:
        if layer.weights:
            values = [expected[(layer.name, w.name)] for w in layer.weights]
            used.update((layer.name, w.name) for w in layer.weights)
            layer.set_weights(values)
    unused = set(expected) - used
    if unused:
        raise RuntimeError(f"weights in the file that no layer took: {sorted(unused)[:5]}")
    for w, value in zip(keras_model.weights, loaded):
        if not np.array_equal(w.numpy(), value):
            raise RuntimeError(f"{w.name}: load_weights and set_weights differ")
    return len(loaded)


def read_image(path: str) -> np.ndarray:
    import skimage.io

    image = skimage.io.imread(path)
    if image.ndim != 3:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def std_summary(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.std(v)) for k, v in values.items()}


def record(matterport_dir: str, out: str, min_confidence: float, seed: int, keep_h5: str | None):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import h5py
    import skimage
    import tensorflow as tf
    import tf_keras

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    started = time.time()
    work = tempfile.mkdtemp(prefix="mport_rec_")
    matterport = load_matterport(matterport_dir, os.path.join(work, PACKAGE))
    config = reference_config(matterport.config, min_confidence)
    model = matterport.model.MaskRCNN(mode="inference", config=config, model_dir=work)
    keras_model = model.keras_model
    built = time.time()

    # 1. tf-keras' own layout of this model's weight file.
    theirs = os.path.join(work, "tf_keras_save_weights.h5")
    keras_model.save_weights(theirs)
    manifest = {
        "description": "matterport/Mask_RCNN inference reference: the layout of tf-keras' "
        "save_weights('x.h5') of its inference model (tests/matterport_reference.py writes the "
        "seeded weights in it), the Config, and what was recorded. See README.md.",
        "seed": seed,
        **h5_layout(theirs),
    }

    images = [read_image(os.path.join(TINY_COCO, name)) for name in IMAGES]
    manifest["overrides"] = calibrate_class_bias(model, manifest, seed, images)

    # 2. The seeded file: same layout as tf-keras', loaded by matterport's own load_weights
    # into a model whose weights were zeroed first.
    ours = keep_h5 or os.path.join(work, "matterport_reference.h5")
    ref.write_keras2_h5(ours, manifest, seed)
    compare_h5(ours, theirs)
    for w in keras_model.weights:
        w.assign(np.zeros(w.shape, w.dtype.as_numpy_dtype))
    model.load_weights(ours, by_name=True)
    n_weights = check_loaded_weights(keras_model, manifest, seed)
    loaded = time.time()

    # 3. Inference on two photos.
    probe = tf_keras.Model(
        keras_model.inputs,
        [keras_model.get_layer(n).output for n in list(STAGES.values()) + list(BACKBONE.values())],
    )
    os.makedirs(out, exist_ok=True)
    per_image = []
    for file_name, image in zip(IMAGES, images):
        molded, metas, windows, anchors, batch_anchors = model_inputs(model, image)
        values = probe.predict([molded, metas, batch_anchors], verbose=0)
        stages = dict(zip(list(STAGES) + list(BACKBONE), [v[0] for v in values]))
        # The probe is the inference graph: its detections are those of keras_model.predict.
        outputs = keras_model.predict([molded, metas, batch_anchors], verbose=0)
        if not (
            np.array_equal(outputs[0][0], stages["mrcnn_detection"])
            and np.array_equal(outputs[3][0], stages["mrcnn_mask"])
        ):
            raise RuntimeError("probe and keras_model.predict disagree")
        result = model.detect([image], verbose=0)[0]
        masks = np.asarray(result["masks"], dtype=bool)
        arrays = {
            "image": image.astype(np.uint8),
            "molded_image": molded[0].astype(np.float32),
            "image_meta": metas[0],
            "window": np.asarray(windows[0], dtype=np.int32),
            "anchors": anchors.astype(np.float32),
            **{k: stages[k][..., :P_CHANNELS].astype(np.float32) for k in ("P2", "P3", "P4", "P5", "P6")},
            **{
                k: stages[k].astype(np.float32)
                for k in ("rpn_class", "rpn_bbox", "rpn_rois", "mrcnn_class", "mrcnn_bbox")
            },
            "mrcnn_detection": stages["mrcnn_detection"].astype(np.float32),
            "mrcnn_mask": stages["mrcnn_mask"].astype(np.float32),
            "rois": np.asarray(result["rois"], dtype=np.int32),
            "class_ids": np.asarray(result["class_ids"], dtype=np.int32),
            "scores": np.asarray(result["scores"], dtype=np.float32),
            "masks_packed": np.packbits(masks.ravel()),
            "masks_shape": np.asarray(masks.shape, dtype=np.int64),
        }
        name = os.path.splitext(file_name)[0] + ".npz"
        np.savez_compressed(os.path.join(out, name), **arrays)
        detections = stages["mrcnn_detection"]
        rpn_fg = stages["rpn_class"][:, 1]
        per_image.append(
            {
                "file_name": file_name,
                "fixture": name,
                "original_shape": list(image.shape),
                "window": [int(v) for v in windows[0]],
                "scale": float(metas[0][11]),
                "num_detections": int((detections[:, 4] > 0).sum()),
                "detect_rois": int(len(result["class_ids"])),
                "class_ids": [int(c) for c in result["class_ids"]],
                "scores": [round(float(s), 4) for s in result["scores"]],
                "num_nonzero_proposals": int((np.abs(stages["rpn_rois"]).sum(axis=1) > 0).sum()),
                "rpn_fg_prob": {
                    "min": float(rpn_fg.min()),
                    "mean": float(rpn_fg.mean()),
                    "max": float(rpn_fg.max()),
                    "std": float(rpn_fg.std()),
                },
                "activation_std": std_summary(
                    {k: stages[k] for k in list(BACKBONE) + ["P2", "P3", "P4", "P5", "P6"]}
                ),
            }
        )
    done = time.time()

    manifest.update(
        {
            "config": config_dict(config),
            "calibration": {
                "mrcnn_class_logits bias": "drawn value - mean logit over the 200 proposals of "
                "both photos (weights drawn from the seed) + bg_logit_offset on class 0",
                "bg_logit_offset": BG_LOGIT_OFFSET,
            },
            "images": per_image,
            "p_channels": P_CHANNELS,
            "num_weights": n_weights,
            "num_parameters": int(keras_model.count_params()),
            "edits": [dataclasses.asdict(e) for e in EDITS],
            "versions": {
                "python": platform.python_version(),
                "tensorflow": tf.__version__,
                "tf_keras": tf_keras.__version__,
                "numpy": np.__version__,
                "h5py": h5py.__version__,
                "scikit-image": skimage.__version__,
            },
            "recorded_on": RECORDED_ON,
            "seconds": {
                "build": round(built - started, 1),
                "weights": round(loaded - built, 1),
                "inference": round(done - loaded, 1),
            },
        }
    )
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    shutil.rmtree(work)  # the edited sources, both weight files (unless --keep-h5), logs
    return manifest

KEYS = (
    ("image", "[H, W, 3] uint8", "the photo as decoded by skimage.io.imread (the input of detect)"),
    ("molded_image", "[256, 256, 3] float32", "mold_inputs: resized, centred on the square, MEAN_PIXEL subtracted"),
    ("image_meta", "[16] float64", "compose_image_meta: id 0, original shape, molded shape, window, scale, 4 zeros"),
    ("window", "[4] int32", "(y1, x1, y2, x2) of the image in the molded one, pixels, y2/x2 exclusive"),
    ("anchors", "[16368, 4] float32", "get_anchors: normalized (y1, x1, y2, x2), P2..P6 order, 3 ratios per cell"),
    ("P2 .. P6", "[64,64,8] .. [4,4,8] float32", f"FPN outputs fpn_p2..fpn_p6, channels 0..{P_CHANNELS - 1} only"),
    ("rpn_class", "[16368, 2] float32", "RPN (bg, fg) probabilities, in anchor order"),
    ("rpn_bbox", "[16368, 4] float32", "RPN deltas (dy, dx, log dh, log dw), before RPN_BBOX_STD_DEV"),
    ("rpn_rois", "[200, 4] float32", "ProposalLayer 'ROI': normalized proposals, zero rows pad"),
    ("mrcnn_class", "[200, 4] float32", "class probabilities of the proposals"),
    ("mrcnn_bbox", "[200, 4, 4] float32", "class-specific deltas, before BBOX_STD_DEV"),
    ("mrcnn_detection", "[20, 6] float32", "DetectionLayer: normalized (y1, x1, y2, x2, class, score), zero rows pad"),
    ("mrcnn_mask", "[20, 28, 28, 4] float32", "mask probabilities of the 20 detection slots, all classes"),
    ("rois", "[N, 4] int32", "detect(): boxes in original-image pixels"),
    ("class_ids", "[N] int32", "detect()"),
    ("scores", "[N] float32", "detect()"),
    ("masks_packed", "uint8", "detect() masks [H, W, N] bool, np.packbits of the C-order ravel"),
    ("masks_shape", "[3] int64", "(H, W, N): np.unpackbits(p)[:H*W*N].reshape(H, W, N)"),
)


def write_readme(out: str, manifest: dict, matterport_dir: str, command: str) -> None:
    """README.md of the fixture folder, from the manifest."""
    source = os.path.join(matterport_dir, "SOURCE.txt")
    provenance = open(source).read().strip() if os.path.exists(source) else "(no SOURCE.txt)"
    cfg = manifest["config"]
    lines = [
        "# matterport/Mask_RCNN inference reference",
        "",
        "What matterport's own `mrcnn/model.py` computes, run on TF 2.21 with tf-keras (Keras 2)",
        "by `scripts/record_matterport_fixtures.py`, for a ResNet-50 Mask R-CNN with seeded random",
        "weights, on two tiny_coco photos: the reference for this project's reproduction of",
        "matterport's inference. The weight file is not stored (180 MB):",
        "`tests.matterport_reference.write_keras2_h5(path)` rebuilds it, with NumPy and h5py only,",
        "in the layout of tf-keras' `save_weights(\"x.h5\")` (matterport's `mask_rcnn_*.h5` layout).",
        "",
        f"Recorded on {manifest['recorded_on']} with:",
        "",
        "```",
        command,
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()) + ".",
        f"Time: {sum(manifest['seconds'].values()):.0f} s on 2 CPU cores (building the model "
        f"{manifest['seconds']['build']} s, weights {manifest['seconds']['weights']} s, "
        f"inference {manifest['seconds']['inference']} s; about 25 s with imports).",
        "",
        "## Files",
        "",
        "- `manifest.json`: the layout of the weight file (`root_attrs`, `layer_names`, `groups`:",
        "  every layer group in file order with its weight names, shapes, dtypes), `seed`,",
        "  `overrides` (the calibrated class-logit bias), the Config (`config`: the fields",
        "  `config.display()` prints), the TF2 `edits`, per-image summaries (`images`),",
        "  `versions`.",
    ]
    for image in manifest["images"]:
        lines.append(
            f"- `{image['fixture']}`: `train2017/{image['file_name']}` "
            f"({image['original_shape'][1]} x {image['original_shape'][0]}), one array per key below."
        )
    lines += ["", "| key | shape, dtype | what |", "|---|---|---|"]
    lines += [f"| `{k}` | {shape} | {what} |" for k, shape, what in KEYS]
    lines += [
        "",
        "## matterport's source",
        "",
        "```",
        provenance,
        "```",
        "",
        "## TF2 edits (applied to the source text at load time, each matched exactly)",
        "",
    ]
    def one_line(text: str) -> str:
        return " / ".join(line.strip() for line in text.strip().splitlines())

    for edit in manifest["edits"]:
        lines.append(
            f"- `{edit['file']}` x{edit['count']}: `{one_line(edit['old'])}` -> "
            f"`{one_line(edit['new'])}`: {edit['why']}."
        )
    lines += [
        "",
        "## Config (matterport's field names; everything else matterport's default)",
        "",
        "NAME parity, BACKBONE resnet50, NUM_CLASSES 4, GPU_COUNT 1, IMAGES_PER_GPU 1,",
        "IMAGE_MIN_DIM 256, IMAGE_MAX_DIM 256, IMAGE_RESIZE_MODE square, POST_NMS_ROIS_INFERENCE 200,",
        f"DETECTION_MAX_INSTANCES 20, DETECTION_MIN_CONFIDENCE {cfg['DETECTION_MIN_CONFIDENCE']}",
        f"(PRE_NMS_LIMIT {cfg['PRE_NMS_LIMIT']}, RPN_NMS_THRESHOLD {cfg['RPN_NMS_THRESHOLD']},",
        f"DETECTION_NMS_THRESHOLD {cfg['DETECTION_NMS_THRESHOLD']}, RPN_ANCHOR_SCALES "
        f"{cfg['RPN_ANCHOR_SCALES']}, RPN_ANCHOR_RATIOS {cfg['RPN_ANCHOR_RATIOS']},",
        f"BACKBONE_STRIDES {cfg['BACKBONE_STRIDES']}, RPN_BBOX_STD_DEV {cfg['RPN_BBOX_STD_DEV']},",
        f"BBOX_STD_DEV {cfg['BBOX_STD_DEV']}, MEAN_PIXEL {cfg['MEAN_PIXEL']}, TRAIN_BN False:",
        "BatchNorm in inference mode, epsilon 1e-3). All fields: `manifest.json` `config`.",
        "",
        "## Weights",
        "",
        f"Seed {manifest['seed']}; {manifest['num_parameters']} parameters in "
        f"{manifest['num_weights']} weights. Uniform draws (see `tests/matterport_reference.py`",
        "`weight_rule`): kernels He-uniform by fan-in (gain 1/64 for `conv1`, whose input is",
        "0-255 pixels less the mean; sqrt(1/2) for the linear outputs, half that for the class",
        "logits), biases U(-0.05, 0.05), BN gamma U(0.5, 1.5) (U(0.1, 0.3) for `bn*_branch2c`,",
        "U(0.3, 0.6) for the shortcut `bn*_branch1`), beta and moving mean U(-0.1, 0.1), moving",
        "variance U(0.5, 1.5). One value is calibrated, not drawn (`overrides`): the bias of",
        "`mrcnn_class_logits` = drawn bias - mean logit over the 200 proposals of both photos",
        f"+ {manifest['calibration']['bg_logit_offset']} on the background; without it a random",
        "head gives one class to every proposal of an image. The recorder checks that tf-keras'",
        "own `save_weights` file and `write_keras2_h5`'s have the same objects, attributes,",
        "shapes and dtypes, and that matterport's `load_weights(path, by_name=True)` of the",
        "written file (into zeroed weights) equals `set_weights` of the generated arrays, bit",
        "for bit.",
        "",
        "## Per image",
        "",
    ]
    for image in manifest["images"]:
        std = ", ".join(f"{k} {v:.2f}" for k, v in image["activation_std"].items())
        lines += [
            f"- `{image['file_name']}`: window {image['window']}, scale {image['scale']}; "
            f"{image['num_detections']} detections (`detect`: {image['detect_rois']}), "
            f"classes {image['class_ids']}, scores {image['scores']}; "
            f"{image['num_nonzero_proposals']} non-zero proposals; RPN fg probability mean "
            f"{image['rpn_fg_prob']['mean']:.2f}, std {image['rpn_fg_prob']['std']:.2f}; "
            f"activation std {std}.",
        ]
    lines += ["", NOTES.strip(), ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


NOTES = """
## matterport behaviour a re-implementation must match

- Coordinates: `norm_boxes` maps pixel boxes with exclusive (y2, x2) to normalized ones by
  `(b - (0, 0, 1, 1)) / (h - 1, w - 1, h - 1, w - 1)`; `denorm_boxes` is the inverse with
  `np.around` (half to even) and int32. So a window (y1, x1, y2, x2) = (56, 0, 200, 256) is
  (0.2196, 0, 0.7804, 1) normalized, and a zero-area normalized box becomes a box one pixel
  wide (or high) after `denorm_boxes`: `unmold_detections`' zero-area filter (area <= 0)
  does not remove it. Detections clipped flat against the window edge (proposals in the
  padding) therefore come back as 1-pixel slivers with their own (tiny) masks; both photos
  have some.
- Anchors: `generate_anchors` centres at `shift * stride` (not `+ stride / 2`), heights
  `scale / sqrt(ratio)`, widths `scale * sqrt(ratio)` (ratio = width/height), order per level:
  rows (y), then columns (x), then ratios (0.5, 1, 2); levels P2..P6; then `norm_boxes`
  (the 32-pixel square anchor at (0, 0) is (-16, -16, 16, 16) -> x2 - x1 = 31/255; anchors
  are not clipped).
- Resizing ("square"): scale = max(1, min_dim / min(h, w)), then min(scale, max_dim / max(h, w))
  if round(max(h, w) * scale) > max_dim; new size `round(h * scale), round(w * scale)`;
  bilinear `skimage.transform.resize(order=1, mode="constant", preserve_range=True)`, no
  anti-aliasing, then cast back to uint8 (truncation); padding centred (top = (max_dim - h) // 2);
  `mold_image` subtracts MEAN_PIXEL only (float32).
- RPN: softmax over 2 logits per anchor (fg = index 1); deltas times RPN_BBOX_STD_DEV; top
  `min(PRE_NMS_LIMIT, anchors)` by fg score over all levels together (sorted), boxes decoded
  with `apply_box_deltas_graph` (centre/size, `exp` unclamped), clipped to [0, 1] (the whole
  square, padding included: not the window), `tf.image.non_max_suppression` at 0.7 to
  POST_NMS_ROIS_INFERENCE, zero rows padding.
- RoI level: `roi_level = min(5, max(2, 4 + round(log2(sqrt(h * w) / (224 / sqrt(H * W))))))`
  with h, w normalized and H, W the molded image size (`image_shape` of the meta), `tf.round`
  (half to even); a zero-padded proposal has area 0: log2(0) = -inf, cast to int32 gives
  INT_MIN on CPU, so level 2. RoIAlign is
  `tf.image.crop_and_resize` of the normalized box straight to 7x7 (14x14 for masks), bilinear,
  one sample per bin, box corners at pixel centres (no half-pixel offset, no averaging).
- Classifier head on all 200 proposal rows, zero padding included (their scores are real
  outputs of the head on a degenerate box).
- Detection layer: per proposal, argmax class and its probability; class-specific deltas
  times BBOX_STD_DEV applied to the proposal; clipped to the window (normalized); keep
  class > 0 and score >= DETECTION_MIN_CONFIDENCE (set intersection: keep is sorted by
  proposal index); per-class `tf.image.non_max_suppression` at DETECTION_NMS_THRESHOLD with
  max DETECTION_MAX_INSTANCES; then top DETECTION_MAX_INSTANCES by score (`tf.nn.top_k`,
  ties by lower index); zero rows pad. Zero-padded proposals (box 0,0,0,0) are NOT removed:
  they go through the head and can become detections if their class and score pass.
- Masks: the mask head runs on the 20 detection boxes (padding rows included); `detect`
  takes the detection's class channel, `unmold_mask` resizes the 28x28 probabilities to the
  pixel box (bilinear, no anti-aliasing) and thresholds at >= 0.5.
- `unmold_detections` counts detections up to the first row with class 0, then maps boxes
  from the molded window to the original image: normalize by the window, then `denorm_boxes`
  with the original shape.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matterport-dir", default=DEFAULT_MATTERPORT)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--min-confidence", type=float, default=0.35)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--keep-h5", help="also keep the seeded weight file at this path")
    args = parser.parse_args(argv)
    manifest = record(args.matterport_dir, args.out, args.min_confidence, args.seed, args.keep_h5)
    command = "/work/venvs/mport/bin/python scripts/record_matterport_fixtures.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_readme(args.out, manifest, args.matterport_dir, command.strip())
    for image in manifest["images"]:
        print(
            image["file_name"],
            "detections",
            image["num_detections"],
            "classes",
            image["class_ids"],
            "scores",
            image["scores"],
        )
        print("  activation std", {k: round(v, 3) for k, v in image["activation_std"].items()})
        print("  rpn fg prob", image["rpn_fg_prob"])
    print("seconds", manifest["seconds"])


if __name__ == "__main__":
    main()
