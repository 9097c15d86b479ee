"""``MaskRCNN``: the assembled model, its train/test steps and ``detect()``.

Data flow (all tensors batched, fixed-shape, padded with validity masks); each
stage is a Keras layer built from the Config once, in ``MaskRCNN.__init__``
(``Stage.from_model_config(config)``), and owns its settings::

    images -> features(): normalise -> backbone (ResNet, C2..C5) -> fpn (P2..P6)
           -> anchor_generator (AnchorGenerator)                    [layers/anchors.py]
           -> rpn (RPN): head -> proposals (per-level top-k, decode,
              clip, NMS); train: anchor targets + RPN losses        [layers/rpn.py, targets.py]
           -> roi_heads (RoIHeads)                                  [layers/roi_heads.py]
              train: RoI sampling + targets -> box_forward (box_pooler 7x7 -> box_head)
                     -> mask_logits (mask_pooler 14x14 -> mask_head) -> keypoint_heatmaps
                     -> class/box/mask/keypoint losses              [losses.py]
              infer: box_forward -> postprocess (class-wise NMS, detection.py)
                     -> mask_logits / keypoint_heatmaps on the kept boxes
    keypoints (NUM_KEYPOINTS > 0): RoIAlign 14x14 -> keypoint head -> 56x56 heatmaps
           -> train: softmax CE per labelled keypoint; infer: peak + refinement

``call`` (inference) and ``compute_losses`` (training and validation) run the same
``_forward``; only the ground truth passed to the RPN and RoI heads differs.
Box encodings are ``BoxCoder`` layers owned by the RPN and the RoI heads; the
multi-level RoIAlign is a ``RoIPooler`` per head branch.

Input contract (what ``mrcnn.data.pipeline.build_dataset`` yields):
``images`` float32 [B, H, W, 3] RGB 0-255; ``image_sizes`` int32 [B, 2] valid
(h, w) of each image inside the padding; for training also ``gt_boxes``
[B, G, 4], ``gt_class_ids`` [B, G], ``gt_masks`` [B, G, mh, mw] and, with
keypoints, ``gt_keypoints`` [B, G, K, 3] (x, y, v) continuous input pixels.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution

from mrcnn.config import Config
from mrcnn.layers.anchors import AnchorGenerator
from mrcnn.layers.backbone import ResNet
from mrcnn.layers.conv import resolve_training_conv, winograd_scope
from mrcnn.layers.fpn import FPN
from mrcnn.layers.precision import dtype_policy_scope, policy_name
from mrcnn.layers.roi_heads import RoIHeads
from mrcnn.layers.rpn import RPN


class _RunObject:
    """A plain holder: what it holds is neither tracked by Keras nor by TF checkpoints."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN as a ``keras.Model``; weights are created at construction.

    ``model(inputs)`` runs inference and returns fixed-shape, padded detections
    (boxes in network-input pixels); ``detect(images)`` wraps it for NumPy images
    of any size; ``fit``/``evaluate`` use :meth:`train_step`/:meth:`test_step`.

    Stages (each a Keras layer built from the Config here, and only here):
    ``backbone`` (ResNet), ``fpn``, ``anchor_generator``, ``rpn`` (head,
    proposals, anchor targets, RPN losses) and ``roi_heads`` (RoI sampling and
    targets, box/mask/keypoint poolers and heads, their losses, post-processing).
    """

    def __new__(cls, *args, **kwargs):
        # matterport's form, MaskRCNN(mode=..., config=..., model_dir=...) (or positional with
        # the mode string first), builds mrcnn.compat.matterport.MatterportMaskRCNN, a thin
        # object around one MaskRCNN(config) (docs/matterport.md). Imported here, not at the
        # top: compat sits above the model in the import order.
        if cls is MaskRCNN and ("mode" in kwargs or (args and isinstance(args[0], str))):
            from mrcnn.compat.matterport import MatterportMaskRCNN

            return MatterportMaskRCNN(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, config: Config, **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        # The model and its coordinate stages are float32 whatever keras' global policy;
        # Config.MIXED_PRECISION alone decides the compute stages' (layers/precision.py).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        config.validate()
        self.config = config
        with dtype_policy_scope(policy_name(config.MIXED_PRECISION)):
            self.backbone = ResNet(
                config.BACKBONE,
                norm=config.BACKBONE_NORM,
                stride_in_1x1=config.STRIDE_IN_1X1,
                base_width=config.BACKBONE_BASE_WIDTH,
                gn_groups=config.GROUP_NORM_GROUPS,
                freeze_stages=config.FREEZE_BACKBONE_STAGES,
                stem_pool_padding=config.STEM_POOL_PADDING,
                name="backbone",
            )
            self.fpn = FPN(config.FPN_CHANNELS, norm=config.FPN_NORM, gn_groups=config.GROUP_NORM_GROUPS, name="fpn")
        with dtype_policy_scope("float32"):  # each builds its own heads under the compute policy
            self.anchor_generator = AnchorGenerator.from_model_config(config, name="anchor_generator")
            self.rpn = RPN.from_model_config(config, name="rpn")
            self.roi_heads = RoIHeads.from_model_config(config, name="roi_heads")
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", *config.LOSS_NAMES)
        }
        self._predict_fn = None
        # Run objects, set by whoever runs the model (fit, mrcnn.engine.runner); neither is
        # a weight nor part of get_config. The generator sits in a plain holder: assigned
        # directly, TensorFlow would track it as a checkpoint dependency of the model.
        self._sampling = _RunObject()
        self.data_health: Any = None
        self.train_step_traces = 0
        self._build_weights()

    @property
    def sampling_generator(self) -> tf.random.Generator | None:
        """Where the RPN's anchor and the RoI heads' proposal sampling draw from in training.

        None (default): ``tf.random.uniform``. A ``tf.random.Generator``: its state
        decides the draws, so a run that saves and restores it (the step backups of
        :mod:`mrcnn.engine`) draws after a resume what the uninterrupted run would
        have drawn. Ignored under a ``tf.distribute`` strategy (a generator made
        outside it cannot be shared by replicas). Read when ``train_step`` is traced:
        set it before ``compile``/``fit``.
        """
        return self._sampling.value

    @sampling_generator.setter
    def sampling_generator(self, generator: tf.random.Generator | None) -> None:
        self._sampling.value = generator

    @property
    def training_conv_algorithm(self) -> str:
        """How ``train_step`` computes the 3x3 convolutions on this host: "direct", "winograd"
        or "winograd-large" (``Config.TRAINING_CONV_ALGORITHM`` resolved, see layers/conv.py)."""
        return resolve_training_conv(self.config.TRAINING_CONV_ALGORITHM, self.config.MIXED_PRECISION)

    # ----- construction ---------------------------------------------------------------
    def _build_weights(self) -> None:
        features = self.features(tf.zeros([1, 64, 64, 3]), None, training=False)
        shapes = [tuple(f.shape) for f in features]
        self.rpn.build(shapes)
        self.roi_heads.build(shapes)
        self.built = True

    def get_config(self):
        return {"name": self.name, "config": self.config.to_dict(),
                "config_class": self.config.class_path()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Rebuilds the recorded Config subclass ("module:qualname"), see Config.from_dict.
        config_obj = Config.from_dict(config["config"], config_class=config.get("config_class"))
        return cls(config_obj, name=config.get("name", "mask_rcnn"))

    def compile(self, optimizer=None, **kwargs):
        """Compile with SGD + warm-up/step schedule from the Config unless given an optimizer.

        With ``MIXED_PRECISION="float16"`` the optimizer (given or made) gets dynamic
        loss scaling (:func:`mrcnn.solver.optimizer.with_loss_scaling`).

        Losses come from the model itself. ``jit_compile`` follows ``Config.JIT_COMPILE``
        (default off: the custom RoIAlign op has no XLA kernel); that field also builds
        the forms XLA compiles (gather RoIAlign, static mask slots), so
        ``jit_compile=True`` without it is refused. ``jit_compile=False`` with it runs
        the same graph uncompiled.
        """
        from mrcnn.solver.optimizer import make_optimizer, with_loss_scaling

        jit = kwargs.pop("jit_compile", "auto")
        jit = self.config.JIT_COMPILE if jit == "auto" else bool(jit)
        if jit and not self.config.JIT_COMPILE:
            raise ValueError("compile(jit_compile=True) needs Config.JIT_COMPILE=True (it builds the layers in the "
                             "forms XLA compiles); set the field instead")
        if not jit:
            _warn_if_portable_gradients(self.config.roi_align_implementation())
        optimizer = with_loss_scaling(optimizer or make_optimizer(self.config), self.config)
        super().compile(optimizer=optimizer, jit_compile=jit, **kwargs)
        if jit and not self.jit_compile:
            raise ValueError("Config.JIT_COMPILE=True but Keras turned XLA off (run_eagerly=True, or "
                             "tf.config.experimental.enable_op_determinism() is on); drop those or set "
                             "JIT_COMPILE=False")

    def fit(self, *args, data_health: Any = None, **kwargs):
        """``keras.Model.fit``; a bad sample met by the input pipeline raises the loader's own
        :class:`~mrcnn.data.loader.BadSampleError` (image id, file, what is wrong and the fix),
        not the TensorFlow error that wraps it with the pipeline's traceback.

        ``data_health``: the input pipeline's :class:`~mrcnn.data.health.DataHealth`;
        default the ``data_health`` of ``x`` (what :func:`mrcnn.data.build_dataset`
        returns carries one). Kept as ``model.data_health`` for the callbacks
        (:class:`~mrcnn.engine.callbacks.DataHealthLogger`).
        """
        x = args[0] if args else kwargs.get("x")
        health = data_health if data_health is not None else getattr(x, "data_health", None)
        if health is not None:
            self.data_health = health
        optimizer = getattr(self, "optimizer", None)  # absent before compile(): Keras' own error follows
        if optimizer is not None and not optimizer.built:
            # Outside a strategy Keras would create the optimizer's slots inside the first
            # trace of train_step, and TensorFlow then traces the whole step a second time
            # (measured: 40 -> 23 s for a first 1-step fit). Same variables, same order as
            # train_step's apply_gradients, as Keras itself does under a strategy.
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)
        try:
            return super().fit(*args, **kwargs)
        except tf.errors.OpError:
            bad = getattr(self.data_health, "first_bad_sample", None)
            if bad is None:
                raise
            raise bad from None

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    # ----- the pipeline -----------------------------------------------------------------
    def features(self, images: tf.Tensor, image_sizes: tf.Tensor | None, training: bool = False,
                 image_offsets: tf.Tensor | None = None) -> list[tf.Tensor]:
        """Normalise, backbone, FPN: images [B, H, W, 3] RGB 0-255 -> [P2, P3, P4, P5, P6].

        ``image_sizes`` [B, 2] valid (h, w) (at ``image_offsets`` [B, 2] (y, x) when given,
        else at the top-left): the padding outside is zeroed after
        normalising (as torchvision pads normalised images; with ``INPUT_PADDING``
        "raw_zero" it stays what the caller padded with, black for matterport); None = no
        padding.
        """
        mean = tf.constant(self.config.MEAN_PIXEL, tf.float32)
        std = tf.constant(self.config.STD_PIXEL, tf.float32)
        x = tf.cast(images, tf.float32)
        if self.config.INPUT_CHANNEL_ORDER == "BGR":
            x = x[..., ::-1]
        x = (x - mean) / std
        if image_sizes is not None and self.config.INPUT_PADDING == "normalized_zero":
            rows = tf.range(tf.shape(x)[1])[None, :, None]
            cols = tf.range(tf.shape(x)[2])[None, None, :]
            if image_offsets is None:
                rows, cols = rows < image_sizes[:, None, 0:1], cols < image_sizes[:, None, 1:2]
            else:
                rows, cols = rows - image_offsets[:, None, 0:1], cols - image_offsets[:, None, 1:2]
                rows = (rows >= 0) & (rows < image_sizes[:, None, 0:1])
                cols = (cols >= 0) & (cols < image_sizes[:, None, 1:2])
            x = tf.where(tf.expand_dims(rows & cols, -1), x, 0.0)  # expand_dims: LiteRT-convertible
        return self.fpn(self.backbone(x, training=training), training=training)

    def _forward(self, images, image_sizes, targets: dict | None, training: bool, image_offsets=None):
        """normalise -> backbone/FPN -> anchors -> RPN -> RoI heads: (detections, losses).

        ``targets`` None: inference (detections); else the ground truth (losses).
        ``image_offsets`` [B, 2]: where each image sits in the canvas (default the top-left).
        """
        images = tf.cast(images, tf.float32)
        if image_sizes is None:
            image_sizes = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
        if image_offsets is not None:
            image_offsets = tf.cast(image_offsets, image_sizes.dtype)
        features = self.features(images, image_sizes, training=training, image_offsets=image_offsets)
        anchors = self.anchor_generator(images, features)
        generator = self.sampling_generator
        far = image_sizes if image_offsets is None else image_offsets + image_sizes
        near = tf.zeros_like(image_sizes) if image_offsets is None else image_offsets
        proposal_limits = detection_limits = image_sizes if image_offsets is None else tf.concat([near, far], 1)
        if self.config.BOX_COORDINATES == "matterport":
            # matterport clips proposals to the whole canvas and detections to the image, both
            # in its frame, where the far edge of an n-pixel extent is n - 1.
            canvas = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
            proposal_limits, detection_limits = canvas - 1, tf.concat([near, far - 1], 1)
            if targets is not None:
                targets = {**targets, "gt_boxes": tf.cast(targets["gt_boxes"], tf.float32)
                           - tf.constant([0.0, 0.0, 1.0, 1.0])}
        proposals, proposal_valid, rpn_losses = self.rpn(features, anchors, proposal_limits, targets=targets,
                                                         generator=generator)
        detections, head_losses = self.roi_heads(
            features, proposals, proposal_valid, detection_limits, targets=targets, training=training,
            generator=generator,
        )
        return detections, {**rpn_losses, **head_losses}

    # ----- inference ------------------------------------------------------------------
    def call(self, inputs, training=False):
        """Inference. inputs: {"images", "image_sizes"} (or an images tensor), optionally
        "image_offsets" [B, 2] int32 (y, x) of each image in the canvas (default the top-left;
        matterport centres its images).

        Returns a dict of padded detections, D = DETECTION_MAX_INSTANCES:
        boxes [B, D, 4] (y1, x1, y2, x2) network-input pixels, scores [B, D],
        class_ids [B, D] int32 (0 = padding), num_detections [B] int32,
        masks [B, D, 28, 28] float32 probabilities of the detected class (only
        with MASK_HEAD); with NUM_KEYPOINTS = K > 0 also keypoints [B, D, K, 3]
        (x, y, score): x, y continuous network-input pixels (pixel-edge frame:
        column c's centre is c + 0.5), score in [0, 1]; zeros on padding rows.
        """
        if isinstance(inputs, dict):
            images, image_sizes = inputs["images"], inputs.get("image_sizes")
            offsets = inputs.get("image_offsets")
        else:
            images, image_sizes, offsets = inputs, None, None
        detections, _ = self._forward(images, image_sizes, None, training=False, image_offsets=offsets)
        return detections

    # ----- training -------------------------------------------------------------------
    def compute_losses(self, inputs: dict, training: bool = True) -> dict[str, tf.Tensor]:
        """The losses of ``config.LOSS_NAMES`` for one (per-replica) batch, each a scalar.

        ``training`` only switches the training mode of the batch norms (backbone, FPN
        and heads with "bn"/"syncbn"); the RPN and RoI heads always sample as in
        training (a validation loss).
        """
        targets = {"gt_boxes": inputs["gt_boxes"], "gt_class_ids": inputs["gt_class_ids"],
                   "gt_masks": inputs.get("gt_masks"), "gt_keypoints": inputs.get("gt_keypoints")}
        _, values = self._forward(inputs["images"], inputs["image_sizes"], targets, training=training)
        return values

    def _total_loss(self, loss_values: dict[str, tf.Tensor]) -> tf.Tensor:
        weights = self.config.loss_weights()
        return tf.add_n([weights[k] * v for k, v in loss_values.items()])

    def _update_trackers(self, loss_values, total):
        self.loss_trackers["loss"].update_state(total)
        for name, value in loss_values.items():
            self.loss_trackers[name].update_state(value)
        return {name: m.result() for name, m in self.loss_trackers.items()}

    def train_step(self, data):
        if not tf.executing_eagerly() and self.optimizer.built:
            # Traces of the step that run (per replica); under Config.JIT_COMPILE, one XLA
            # compile each, so a second one means the batch shapes changed (a shape leak).
            # A trace that builds the optimizer only creates its variables: TensorFlow
            # then traces again and runs that one.
            self.train_step_traces += 1
        inputs = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape, winograd_scope(self.training_conv_algorithm):
            loss_values = self.compute_losses(inputs, training=True)
            total = self._total_loss(loss_values)
            # Gradients are summed over replicas, so each replica's loss is divided
            # by their number (what Keras' own train_step does).
            scaled = self.optimizer.scale_loss(scale_loss_for_distribution(total))
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_trackers(loss_values, total)

    def test_step(self, data):
        inputs = data[0] if isinstance(data, tuple) else data
        loss_values = self.compute_losses(inputs, training=False)
        return self._update_trackers(loss_values, self._total_loss(loss_values))

    # ----- NumPy inference --------------------------------------------------------------
    def _inference_function(self):
        """tf.function: (images [B, Hp, Wp, 3], sizes [B, 2], scales [B, 2], original sizes
        [B, 2]) -> detections in original pixels (:func:`mrcnn.inference.postprocess.to_original`)."""
        if self._predict_fn is None:
            from mrcnn.inference.postprocess import to_original

            self._predict_fn = tf.function(
                lambda images, sizes, scales, original: to_original(
                    self({"images": images, "image_sizes": sizes}), scales, original
                ),
                input_signature=[
                    tf.TensorSpec([None, None, None, 3], tf.float32),
                    tf.TensorSpec([None, 2], tf.int32),
                    tf.TensorSpec([None, 2], tf.float32),
                    tf.TensorSpec([None, 2], tf.int32),
                ],
            )
        return self._predict_fn

    def detect(
        self,
        images,
        batch_size: int | None = None,
        verbose: int = 0,
        mask_format: str = "full",
        tile_size: int | None = None,
        tile_overlap: int = 128,
    ) -> list[dict]:
        """Detect instances in images of any size.

        Args:
          images: a list of images [H, W, 3] uint8 RGB (grayscale [H, W] and RGBA
            [H, W, 4] are converted), or one such image, or a batch [B, H, W, 3].
          batch_size: images (or tiles) per forward pass, padded together to the
            largest (default ``config.BATCH_SIZE``).
          mask_format: "full" (bool [H, W, N]), "box" (a list of N bool crops, each
            covering its box plus a one-pixel fringe, with "mask_offsets" int32
            [N, 2] (y0, x0) of each crop in the image) or "rle" (a list of N COCO
            compressed RLE dicts). "box"/"rle" never allocate H x W x N.
          tile_size, tile_overlap: when ``tile_size`` is set, each image is run as
            overlapping tiles and the detections merged across seams
            (:func:`mrcnn.inference.tiling.detect_tiled`; for images much larger than the
            network input: slides, aerial photos).
        Returns:
          One dict per image: "rois" float32 [N, 4] (y1, x1, y2, x2) in the original
          image's pixels, "class_ids" int32 [N], "scores" float32 [N], "masks" in
          ``mask_format`` (thresholded at DETECTION_MASK_THRESHOLD; absent when
          MASK_HEAD is False; detections scoring below DETECTION_MASK_MIN_SCORE
          get an empty mask), and with NUM_KEYPOINTS = K > 0 "keypoints" float32
          [N, K, 3] (x, y, score) in the original image's pixels, COCO's
          pixel-index convention (integer x = centre of column x; see
          docs/keypoints.md); sorted by descending score.
        """
        # Pre- and post-processing shared with the SavedModel and every runtime export.
        from mrcnn.inference.postprocess import MASK_FORMATS, unmold
        from mrcnn.inference.preprocess import prepare_image_batch

        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        images = _as_image_list(images)
        batch_size = batch_size or self.config.BATCH_SIZE
        if tile_size is not None:
            from mrcnn.inference.tiling import detect_tiled

            return [detect_tiled(self, image, tile_size=tile_size, tile_overlap=tile_overlap,
                                 batch_size=batch_size, mask_format=mask_format, verbose=verbose)
                    for image in images]
        fn = self._inference_function()
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch, sizes, scales = prepare_image_batch(chunk, self.config)
            original = np.array([image.shape[:2] for image in chunk], np.int32)
            out = {k: np.asarray(v) for k, v in fn(tf.convert_to_tensor(batch, tf.float32),
                                                   tf.convert_to_tensor(sizes, tf.int32),
                                                   tf.convert_to_tensor(scales, tf.float32),
                                                   tf.convert_to_tensor(original, tf.int32)).items()}
            for i, image in enumerate(chunk):
                results.append(unmold(out, i, image.shape[:2], self.config, mask_format))
        return results


def _warn_if_portable_gradients(implementation: str) -> None:
    """Training through the stock-ops RoIAlign: say that its CPU gradient is racy."""
    from mrcnn.ops import custom_roi_align

    if implementation == "custom" or (implementation == "auto" and custom_roi_align.is_available()):
        return
    warnings.warn(
        "mrcnn: training with the stock-ops RoIAlign. TensorFlow's CPU gradient of "
        "crop_and_resize adds from several threads without synchronisation, so its gradients "
        "vary between runs; call tf.config.experimental.enable_op_determinism() before "
        "training to make them exact, or build the custom op (mrcnn build-ops).",
        RuntimeWarning,
        stacklevel=3,
    )


def _as_image_list(images) -> list[np.ndarray]:
    """detect()'s input as a list of uint8 [H, W, 3] RGB arrays, converted as training converts.

    Each image goes through :func:`mrcnn.data.loader.sanitize_image`, the function the
    training loader uses (uint16 scaled by 255/65535, [0, 1] floats x 255, gray and
    RGBA converted; NaN/inf, negative or > 255 floats rejected), with the image's
    index in the error message. Imported lazily: ``mrcnn.data`` sits above the model
    in the import order, and the sanitiser is plain NumPy with no model dependency.
    """
    from mrcnn.data.loader import sanitize_image

    expected = "detect() expects a list of images shaped [H, W, 3] (RGB), one image, or a batch [B, H, W, 3]"
    if isinstance(images, np.ndarray) or hasattr(images, "shape"):
        array = np.asarray(images)
        if array.ndim == 4:
            images = list(array)
        elif array.ndim == 3 or array.ndim == 2:
            images = [array]
        else:
            raise ValueError(f"{expected}; got an array of shape {array.shape}")
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"{expected}; got {type(images).__name__}")
    return [sanitize_image(image, f"detect() image {i}") for i, image in enumerate(images)]
