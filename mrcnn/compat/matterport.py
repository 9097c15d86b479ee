"""matterport/Mask_RCNN's ``modellib.MaskRCNN(mode=..., config=..., model_dir=...)``.

``mrcnn.model.MaskRCNN`` called the matterport way (a ``mode=`` keyword, or a mode string
as first argument) returns a :class:`MatterportMaskRCNN` (``MaskRCNN.__new__`` dispatches
on that; ``MaskRCNN(config)`` is unchanged). It is a thin object around one
:class:`mrcnn.model.MaskRCNN` (``keras_model``) whose methods call the packages:
``train`` -> :func:`mrcnn.engine.matterport.train` (the engine's ``run_training``),
``load_weights`` -> :func:`mrcnn.checkpoint.matterport.load_weights`, ``detect`` ->
``MaskRCNN.detect``. See docs/matterport.md for what differs from matterport.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrcnn.config import Config

MODES = ("training", "inference")


class MatterportMaskRCNN:
    """matterport's model object: ``keras_model``, ``train``, ``detect``, ``load_weights``,
    ``find_last``, ``get_imagenet_weights``, ``set_trainable``, ``mold_inputs``.

    Args:
        mode: "training" or "inference" (the same network here; the mode only decides
            which of ``train``/``detect`` may be called, as in matterport).
        config: a :class:`mrcnn.config.Config` (subclass).
        model_dir: the folder of the run folders (``<name><YYYYmmddTHHMM>/``).
    """

    def __init__(self, mode: str, config: Config, model_dir: str | os.PathLike) -> None:
        from mrcnn.model import MaskRCNN

        if mode not in MODES:
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        if not isinstance(config, Config):
            raise TypeError(f"config must be a mrcnn.config.Config, got {type(config).__name__}")
        self.mode = mode
        self.config = config
        self.model_dir = os.fspath(model_dir)
        self.keras_model = MaskRCNN(config)
        self.epoch = 0
        self.set_log_dir()

    # ----- run folders --------------------------------------------------------------
    def set_log_dir(self, model_path: str | os.PathLike | None = None) -> None:
        """A new run folder, or the one ``model_path`` (``.../<name><time>/mask_rcnn_<name>_<epoch>.h5``)
        sits in, going on from its epoch (matterport's resume)."""
        from mrcnn.engine import matterport as runs

        self.epoch = 0
        self.log_dir = os.path.join(self.model_dir, runs.run_dir_name(self.config, datetime.datetime.now()))
        found = runs.epoch_of(model_path, self.config) if model_path is not None else None
        if found is not None:
            self.log_dir, self.epoch = found
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{self.config.NAME.lower()}_*epoch*.h5")

    def find_last(self) -> str:
        """The newest weights file under ``model_dir`` (matterport's run folders and ``mrcnn train`` ones)."""
        from mrcnn.engine.matterport import find_last

        return find_last(self.model_dir, self.config)

    def get_imagenet_weights(self) -> str:
        """The path of torchvision's ImageNet checkpoint of ``config.BACKBONE`` (downloaded once;
        offline, an error with the URL and where to put the file)."""
        from mrcnn.checkpoint.imagenet import download_imagenet_weights

        return str(download_imagenet_weights(self.config.BACKBONE))

    # ----- weights --------------------------------------------------------------------
    def load_weights(self, filepath: str | os.PathLike, by_name: bool = False,
                     exclude: Sequence[str] | None = None):
        """Load weights (see :func:`mrcnn.checkpoint.matterport.load_weights`); a checkpoint of a
        matterport-named run folder makes training go on in that folder from its epoch.

        A matterport Keras 2 ``.h5`` (``mask_rcnn_coco.h5``, a model trained with matterport) on a
        model whose Config is not matterport's architecture is loaded into a model built from
        :func:`mrcnn.configs.with_matterport_architecture` of the Config, which then becomes
        ``keras_model`` (and its Config ``self.config``), so the script gets matterport's
        detections unchanged. A load that fails leaves the object as it was."""
        from mrcnn.checkpoint.matterport import load_weights, weights_kind
        from mrcnn.configs import has_matterport_architecture, with_matterport_architecture
        from mrcnn.model import MaskRCNN

        config, model = self.config, self.keras_model
        if weights_kind(filepath) == "keras2" and not has_matterport_architecture(config):
            # A matterport .h5 needs matterport's network: a model built from the script's Config
            # on MatterportConfig's base (matterport's defaults where the script sets nothing), as
            # matterport itself would build it. It replaces this object's model once the load has
            # succeeded (a failed load changes nothing); nothing loaded before is kept.
            config = with_matterport_architecture(config)
            model = MaskRCNN(config)
        report = load_weights(model, filepath, by_name=by_name, exclude=list(exclude or []))
        if model is not self.keras_model:
            self.config, self.keras_model = config, model
            print(f"mrcnn: {os.fspath(filepath)} is a matterport Keras 2 model: using matterport's architecture "
                  "(mrcnn.configs.MatterportConfig) with this script's Config fields")
        self.set_log_dir(filepath)
        return report

    def set_trainable(self, layer_regex: str, keras_model: Any = None, indent: int = 0, verbose: int = 1) -> list[str]:
        """Train only the layers ``layer_regex`` selects (:func:`mrcnn.engine.matterport.set_trainable`)."""
        from mrcnn.engine.matterport import set_trainable

        return set_trainable(keras_model or self.keras_model, layer_regex, verbose=verbose)

    # ----- training ---------------------------------------------------------------------
    def train(self, train_dataset: Any, val_dataset: Any, learning_rate: float, epochs: int, layers: str,
              augmentation: Any = None, custom_callbacks: Sequence[Any] | None = None,
              no_augmentation_sources: Sequence[str] | None = None) -> None:
        """Train up to epoch ``epochs`` (the total) at ``learning_rate`` (as given) the ``layers``
        selected: "heads", "3+", "4+", "5+", "all" or a regular expression over layer paths.
        ``augmentation``: None or fn(sample, seed) -> sample (imgaug is not supported)."""
        from mrcnn.engine import matterport as runs

        if self.mode != "training":
            raise RuntimeError("Create model in training mode: MaskRCNN(mode='training', ...)")
        if no_augmentation_sources:
            raise ValueError("no_augmentation_sources is not supported (docs/matterport.md)")
        self.epoch = runs.train(self.keras_model, self.config, self.log_dir, self.epoch, train_dataset, val_dataset,
                                learning_rate, epochs, layers, augmentation, custom_callbacks)

    # ----- inference --------------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray], verbose: int = 0) -> list[dict]:
        """One dict per image: "rois" [N, 4] (y1, x1, y2, x2), "class_ids" [N], "scores" [N],
        "masks" bool [H, W, N] (``MaskRCNN.detect``)."""
        if self.mode != "inference":
            raise RuntimeError("Create model in inference mode: MaskRCNN(mode='inference', ...)")
        if verbose:
            print(f"Processing {len(images)} images")
            for image in images:
                print(f"image                    shape: {np.shape(image)}")
        from mrcnn.configs import has_matterport_architecture

        if has_matterport_architecture(self.config) and self.config.IMAGE_RESIZE_MODE == "square":
            return [matterport_detect(self.keras_model, image) for image in images]
        return self.keras_model.detect(list(images), verbose=verbose)

    def mold_inputs(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(molded_images [N, H, W, 3] float32, image_metas [N, 12 + NUM_CLASSES], windows [N, 4]).

        The images are resized and padded as ``detect`` does (bottom/right padding; with
        matterport's architecture matterport's molding, centred), raw RGB 0-255 (this model
        normalises inside). image_metas in matterport's layout:
        image id 0, original shape, padded shape, window (y1, x1, y2, x2), scale (of the
        height), active class ids (all ones).
        """
        from mrcnn.configs import has_matterport_architecture
        from mrcnn.inference.preprocess import prepare_image_batch

        if has_matterport_architecture(self.config) and self.config.IMAGE_RESIZE_MODE == "square":
            # What this object's detect() feeds such a model: matterport's own molding.
            from mrcnn.data.loader import sanitize_image

            molded = [matterport_mold(sanitize_image(image, f"mold_inputs() image {i}"), self.config)
                      for i, image in enumerate(images)]
            batch = np.stack([m for m, _, _ in molded]).astype(np.float32)
            windows = np.array([w for _, w, _ in molded], np.int32)
            scales = np.array([[s, s] for _, _, s in molded], np.float32)
        else:
            batch, sizes, scales = prepare_image_batch(list(images), self.config)
            windows = np.array([[0, 0, h, w] for h, w in sizes], np.int32)
        metas = np.array([
            [0, *np.shape(image)[:2], 3, *batch.shape[1:3], 3, *window, float(scale[0]),
             *np.ones(self.config.NUM_CLASSES)]
            for image, window, scale in zip(images, windows, scales)
        ], np.float32)
        return batch, metas, windows


def matterport_mold(image: np.ndarray, config: Config) -> tuple[np.ndarray, tuple[int, int, int, int], float]:
    """matterport's molding of one uint8 RGB image, before its mean subtraction (this model
    subtracts it): (uint8 [S, S, 3] square, window (y1, x1, y2, x2), scale)."""
    from mrcnn.data.resize import resize_image

    molded, window, scale, _, _ = resize_image(image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
                                               mode="square")
    return molded, tuple(int(v) for v in window), float(scale)


def matterport_detect(model: Any, image: np.ndarray) -> dict:
    """matterport's ``detect`` of one image with a model of matterport's architecture
    (:class:`mrcnn.configs.MatterportConfig`): its molding (``utils.resize_image`` "square":
    the short side up to IMAGE_MIN_DIM, never down unless the long side passes
    IMAGE_MAX_DIM, bilinear, truncated to uint8, centred on the square), the network at that
    offset, and its unmolding (boxes through ``norm_boxes`` / ``denorm_boxes``, rounded;
    each 28x28 mask resized bilinearly to its box and thresholded at 0.5; zero-area boxes
    dropped). Same keys as :meth:`mrcnn.model.MaskRCNN.detect`, "rois" int32 as matterport's.
    """
    import skimage.transform
    import tensorflow as tf

    from mrcnn.data.loader import sanitize_image

    image = sanitize_image(image, "detect() image")
    molded, window, _ = matterport_mold(image, model.config)
    y1, x1, y2, x2 = window
    out = model({"images": tf.constant(molded[None], tf.float32),
                 "image_sizes": tf.constant([[y2 - y1, x2 - x1]], tf.int32),
                 "image_offsets": tf.constant([[y1, x1]], tf.int32)})
    n = int(out["num_detections"][0])
    canvas = np.array(molded.shape[:2], np.float64)
    # matterport's normalised frame: far edges one pixel in, divided by (size - 1).
    scale = np.tile(canvas - 1.0, 2)
    shift = np.array([0.0, 0.0, 1.0, 1.0])
    boxes = (np.asarray(out["boxes"][0, :n], np.float64) - shift) / scale
    norm_window = (np.array(window, np.float64) - shift) / scale
    wh = norm_window[2:] - norm_window[:2]
    boxes = (boxes - np.tile(norm_window[:2], 2)) / np.tile(wh, 2)
    height, width = image.shape[:2]
    rois = np.around(boxes * np.array([height - 1, width - 1, height - 1, width - 1]) + shift).astype(np.int32)
    keep = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]) > 0
    class_ids = np.asarray(out["class_ids"][0, :n], np.int32)[keep]
    scores = np.asarray(out["scores"][0, :n], np.float32)[keep]
    masks28 = np.asarray(out["masks"][0, :n], np.float32)[keep] if "masks" in out else None
    rois = rois[keep]
    result = {"rois": rois, "class_ids": class_ids, "scores": scores}
    if masks28 is not None:
        masks = np.zeros((height, width, len(rois)), bool)
        for i, (top, left, bottom, right) in enumerate(rois):
            resized = skimage.transform.resize(masks28[i], (bottom - top, right - left), order=1, mode="constant",
                                               anti_aliasing=False)
            masks[top:bottom, left:right, i] = resized >= 0.5
        result["masks"] = masks
    return result
