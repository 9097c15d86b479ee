"""``MaskRCNN``: the assembled model, its train/test steps and ``detect()``.

Data flow (all tensors batched, fixed-shape, padded with validity masks)::

    images -> normalise -> ResNet (C2..C5) -> FPN (P2..P6) -> RPN head
           -> proposals (per-level top-k, decode, clip, NMS)            [rpn.py]
    train: -> RoI sampling + targets                                   [targets.py]
           -> RoIAlign 7x7 -> box head ; RoIAlign 14x14 -> mask head    [roi_heads.py]
           -> losses                                                    [losses.py]
    infer: -> box head -> class-wise NMS (detection.py) -> mask head on the kept boxes
    keypoints (NUM_KEYPOINTS > 0): RoIAlign 14x14 -> keypoint head -> 56x56 heatmaps
           -> train: softmax CE per labelled keypoint; infer: peak + refinement

Input contract (what ``mrcnn.data.pipeline.build_dataset`` yields):
``images`` float32 [B, H, W, 3] RGB 0-255; ``image_sizes`` int32 [B, 2] valid
(h, w) of each image inside the padding; for training also ``gt_boxes``
[B, G, 4], ``gt_class_ids`` [B, G], ``gt_masks`` [B, G, mh, mw] and, with
keypoints, ``gt_keypoints`` [B, G, K, 3] (x, y, v) continuous input pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution

from mrcnn import losses
from mrcnn.config import Config
from mrcnn.layers.backbone import ResNet
from mrcnn.layers.detection import detect_boxes
from mrcnn.layers.fpn import FPN
from mrcnn.layers.roi_heads import BoxHead, KeypointHead, MaskHead
from mrcnn.layers.rpn import RPNHead, generate_proposals
from mrcnn.layers.targets import roi_targets, rpn_targets
from mrcnn.ops.anchors import multilevel_anchors
from mrcnn.ops.keypoints import heatmaps_to_keypoints
from mrcnn.ops.masks import paste_masks
from mrcnn.ops.roi_align import multilevel_roi_align


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN as a ``keras.Model``; weights are created at construction.

    ``model(inputs)`` runs inference and returns fixed-shape, padded detections
    (boxes in network-input pixels); ``detect(images)`` wraps it for NumPy images
    of any size; ``fit``/``evaluate`` use :meth:`train_step`/:meth:`test_step`.
    """

    def __init__(self, config: Config, **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        super().__init__(**kwargs)
        config.validate()
        self.config = config
        self.backbone = ResNet(
            config.BACKBONE,
            norm=config.BACKBONE_NORM,
            stride_in_1x1=config.STRIDE_IN_1X1,
            base_width=config.BACKBONE_BASE_WIDTH,
            gn_groups=config.GROUP_NORM_GROUPS,
            freeze_stages=config.FREEZE_BACKBONE_STAGES,
            name="backbone",
        )
        self.fpn = FPN(config.FPN_CHANNELS, name="fpn")
        self.rpn_head = RPNHead(len(config.RPN_ANCHOR_RATIOS), config.FPN_CHANNELS, name="rpn")
        self.box_head = BoxHead(config.NUM_CLASSES, config.FPN_FC_LAYERS_SIZE, name="box_head")
        self.mask_head = None
        if config.MASK_HEAD:
            self.mask_head = MaskHead(
                config.NUM_CLASSES, config.MASK_HEAD_CONV_CHANNELS, config.MASK_HEAD_NUM_CONVS, name="mask_head"
            )
        self.keypoint_head = None
        if config.NUM_KEYPOINTS:
            self.keypoint_head = KeypointHead(
                config.NUM_KEYPOINTS, config.KEYPOINT_HEAD_CONV_CHANNELS, config.KEYPOINT_HEAD_NUM_CONVS,
                name="keypoint_head",
            )
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", *config.LOSS_NAMES)
        }
        self._predict_fn = None
        self._build_weights()

    # ----- construction ---------------------------------------------------------------
    def _build_weights(self) -> None:
        side = 64
        images = tf.zeros([1, side, side, 3])
        features = self._features(images, None, training=False)
        self.rpn_head(features)
        channels = self.config.FPN_CHANNELS
        p, m = self.config.POOL_SIZE, self.config.MASK_POOL_SIZE
        self.box_head(tf.zeros([1, 1, p, p, channels]))
        if self.mask_head is not None:
            self.mask_head(tf.zeros([1, 1, m, m, channels]))
        if self.keypoint_head is not None:
            k = self.config.KEYPOINT_POOL_SIZE
            self.keypoint_head(tf.zeros([1, 1, k, k, channels]))
        self.built = True

    def get_config(self):
        return {"name": self.name, "config": self.config.to_dict(),
                "config_class": f"{type(self.config).__module__}.{type(self.config).__qualname__}"}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(Config.from_dict(config["config"]), name=config.get("name", "mask_rcnn"))

    def compile(self, optimizer=None, **kwargs):
        """Compile with SGD + warm-up/step schedule from the Config unless given an optimizer.

        Losses come from the model itself; ``jit_compile`` is off because the
        custom RoIAlign op and NMS have no XLA kernels.
        """
        from mrcnn.training import make_optimizer

        kwargs.setdefault("jit_compile", False)
        _warn_if_portable_gradients(self.config.ROI_ALIGN_IMPLEMENTATION)
        super().compile(optimizer=optimizer or make_optimizer(self.config), **kwargs)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    # ----- shared stages --------------------------------------------------------------
    def _features(self, images: tf.Tensor, image_sizes: tf.Tensor | None, training: bool) -> list[tf.Tensor]:
        mean = tf.constant(self.config.MEAN_PIXEL, tf.float32)
        std = tf.constant(self.config.STD_PIXEL, tf.float32)
        x = tf.cast(images, tf.float32)
        if self.config.INPUT_CHANNEL_ORDER == "BGR":
            x = x[..., ::-1]
        x = (x - mean) / std
        if image_sizes is not None:
            # Zero the padding after normalising, as torchvision pads normalised images.
            rows = tf.range(tf.shape(x)[1])[None, :, None] < image_sizes[:, None, 0:1]
            cols = tf.range(tf.shape(x)[2])[None, None, :] < image_sizes[:, None, 1:2]
            x = tf.where((rows & cols)[..., None], x, 0.0)
        return self.fpn(self.backbone(x, training=training))

    def _anchors(self, images: tf.Tensor, features: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return multilevel_anchors(
            tf.shape(images)[1:3],
            [tf.shape(f)[1:3] for f in features],
            self.config.RPN_ANCHOR_SCALES,
            self.config.RPN_ANCHOR_RATIOS,
            strides=None if self.config.ANCHOR_STRIDE_FROM_GRID else self.config.BACKBONE_STRIDES,
            round_to_int=self.config.ROUND_ANCHORS,
            offset=self.config.ANCHOR_OFFSET,
        )

    def _pool(self, features, boxes, size):
        c = self.config
        return multilevel_roi_align(
            features[:4], boxes, size, strides=c.BACKBONE_STRIDES[:4],
            sampling_ratio=c.ROI_ALIGN_SAMPLING_RATIO, aligned=c.ROI_ALIGN_ALIGNED,
            canonical_level=c.ROI_CANONICAL_LEVEL, canonical_size=c.ROI_CANONICAL_SIZE,
            implementation=c.ROI_ALIGN_IMPLEMENTATION,
        )

    # ----- inference ------------------------------------------------------------------
    def call(self, inputs, training=False):
        """Inference. inputs: {"images", "image_sizes"} (or an images tensor).

        Returns a dict of padded detections, D = DETECTION_MAX_INSTANCES:
        boxes [B, D, 4] (y1, x1, y2, x2) network-input pixels, scores [B, D],
        class_ids [B, D] int32 (0 = padding), num_detections [B] int32,
        masks [B, D, 28, 28] float32 probabilities of the detected class (only
        with MASK_HEAD); with NUM_KEYPOINTS = K > 0 also keypoints [B, D, K, 3]
        (x, y, score): x, y continuous network-input pixels (pixel-edge frame:
        column c's centre is c + 0.5), score in [0, 1]; zeros on padding rows.
        """
        c = self.config
        if isinstance(inputs, dict):
            images, image_sizes = inputs["images"], inputs.get("image_sizes")
        else:
            images, image_sizes = inputs, None
        images = tf.cast(images, tf.float32)
        if image_sizes is None:
            image_sizes = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
        features = self._features(images, image_sizes, training=False)
        logits, deltas = self.rpn_head(features)
        proposals, _, proposal_valid = generate_proposals(
            logits, deltas, self._anchors(images, features), image_sizes,
            c.PRE_NMS_LIMIT_INFERENCE, c.POST_NMS_ROIS_INFERENCE, c.RPN_NMS_THRESHOLD,
            c.PROPOSAL_MIN_SIZE, c.RPN_BBOX_WEIGHTS,
        )
        class_logits, box_deltas = self.box_head(self._pool(features, proposals, c.POOL_SIZE))
        det = detect_boxes(
            proposals, proposal_valid, class_logits, box_deltas, image_sizes, c.BBOX_REG_WEIGHTS,
            c.DETECTION_MIN_CONFIDENCE, c.DETECTION_NMS_THRESHOLD, c.DETECTION_MAX_INSTANCES,
            c.DETECTION_MIN_SIZE,
        )
        validf = tf.cast(det.valid, tf.float32)
        out = {
            "boxes": det.boxes,
            "scores": det.scores,
            "class_ids": det.class_ids,
            "num_detections": tf.reduce_sum(tf.cast(det.valid, tf.int32), axis=1),
        }
        if self.mask_head is not None:
            mask_logits = self.mask_head(self._pool(features, det.boxes, c.MASK_POOL_SIZE))
            masks = tf.sigmoid(_pick_class_channel(mask_logits, det.class_ids))
            out["masks"] = masks * validf[:, :, None, None]
        if self.keypoint_head is not None:
            heatmaps = self.keypoint_head(self._pool(features, det.boxes, c.KEYPOINT_POOL_SIZE))
            out["keypoints"] = heatmaps_to_keypoints(heatmaps, det.boxes) * validf[:, :, None, None]
        return out

    # ----- training -------------------------------------------------------------------
    def compute_losses(self, inputs: dict, training: bool = True) -> dict[str, tf.Tensor]:
        """The losses of ``config.LOSS_NAMES`` for one (per-replica) batch, each a scalar."""
        c = self.config
        images = tf.cast(inputs["images"], tf.float32)
        image_sizes = inputs["image_sizes"]
        gt_boxes = tf.cast(inputs["gt_boxes"], tf.float32)
        gt_class_ids = tf.cast(inputs["gt_class_ids"], tf.int32)
        features = self._features(images, image_sizes, training=training)
        logits, deltas = self.rpn_head(features)
        anchors = self._anchors(images, features)
        proposals, _, proposal_valid = generate_proposals(
            logits, deltas, anchors, image_sizes,
            c.PRE_NMS_LIMIT_TRAINING, c.POST_NMS_ROIS_TRAINING, c.RPN_NMS_THRESHOLD,
            c.PROPOSAL_MIN_SIZE, c.RPN_BBOX_WEIGHTS,
        )

        rpn = rpn_targets(
            tf.concat(anchors, axis=0), gt_boxes, gt_class_ids, c.RPN_TRAIN_ANCHORS_PER_IMAGE,
            c.RPN_POSITIVE_RATIO, c.RPN_POSITIVE_IOU, c.RPN_NEGATIVE_IOU, c.RPN_BBOX_WEIGHTS,
        )
        rpn_logits = tf.gather(tf.concat(logits, axis=1), rpn.indices, batch_dims=1)
        rpn_deltas = tf.gather(tf.concat(deltas, axis=1), rpn.indices, batch_dims=1)

        # Positives come first in the sample and number at most this many, so the
        # mask branch only needs these slots.
        num_mask_rois = int(c.TRAIN_ROIS_PER_IMAGE * c.ROI_POSITIVE_RATIO)
        roi = roi_targets(
            proposals, proposal_valid, gt_boxes, gt_class_ids,
            inputs["gt_masks"] if self.mask_head is not None else None,
            c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO, c.ROI_POSITIVE_IOU, c.BBOX_REG_WEIGHTS,
            c.MASK_SHAPE, c.MINI_MASK_SHAPE is not None, c.MASK_TARGET_THRESHOLD,
            c.ROI_ALIGN_IMPLEMENTATION, num_mask_rois=num_mask_rois,
            gt_keypoints=inputs["gt_keypoints"] if self.keypoint_head is not None else None,
            heatmap_size=c.KEYPOINT_HEATMAP_SIZE,
        )
        class_logits, box_deltas = self.box_head(self._pool(features, roi.rois, c.POOL_SIZE))
        positive = roi.valid & (roi.class_ids > 0)
        box_pred = tf.gather(box_deltas, roi.class_ids, batch_dims=2)

        mask_rois = roi.rois[:, :num_mask_rois]
        values = {
            "rpn_class_loss": losses.rpn_class_loss(rpn_logits, rpn.labels, rpn.valid),
            "rpn_box_loss": losses.box_regression_loss(
                rpn_deltas, rpn.deltas, rpn.labels > 0, rpn.valid, c.RPN_BOX_LOSS_BETA
            ),
            "class_loss": losses.classifier_loss(class_logits, roi.class_ids, roi.valid),
            "box_loss": losses.box_regression_loss(
                box_pred, roi.deltas, positive, roi.valid, c.BOX_LOSS_BETA
            ),
        }
        if self.mask_head is not None:
            mask_classes = roi.class_ids[:, :num_mask_rois]
            mask_logits = self.mask_head(self._pool(features, mask_rois, c.MASK_POOL_SIZE))
            mask_logits = _pick_class_channel(mask_logits, mask_classes)
            values["mask_loss"] = losses.mask_loss(mask_logits, roi.masks, positive[:, :num_mask_rois])
        if self.keypoint_head is not None:
            # Same slots as the mask branch: every positive is among them.
            heatmaps = self.keypoint_head(self._pool(features, mask_rois, c.KEYPOINT_POOL_SIZE))
            values["keypoint_loss"] = losses.keypoint_loss(heatmaps, roi.keypoint_targets, roi.keypoint_valid)
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
        inputs = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
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
        if self._predict_fn is None:
            self._predict_fn = tf.function(
                lambda images, sizes: self({"images": images, "image_sizes": sizes}),
                input_signature=[
                    tf.TensorSpec([None, None, None, 3], tf.float32),
                    tf.TensorSpec([None, 2], tf.int32),
                ],
            )
        return self._predict_fn

    def detect(self, images, batch_size: int | None = None, verbose: int = 0) -> list[dict]:
        """Detect instances in images of any size.

        Args:
          images: a list of images [H, W, 3] uint8 RGB (grayscale [H, W] and RGBA
            [H, W, 4] are converted), or one such image, or a batch [B, H, W, 3].
          batch_size: images per forward pass (default ``config.BATCH_SIZE``).
        Returns:
          One dict per image: "rois" float32 [N, 4] (y1, x1, y2, x2) in the original
          image's pixels, "class_ids" int32 [N], "scores" float32 [N], "masks" bool
          [H, W, N] (full-size, thresholded at DETECTION_MASK_THRESHOLD; absent when
          MASK_HEAD is False), and with NUM_KEYPOINTS = K > 0 "keypoints" float32
          [N, K, 3] (x, y, score) in the original image's pixels, COCO's
          pixel-index convention (integer x = centre of column x; see
          docs/keypoints.md); sorted by descending score.
        """
        from mrcnn.data.pipeline import prepare_image_batch

        images = _as_image_list(images)
        batch_size = batch_size or self.config.BATCH_SIZE
        fn = self._inference_function()
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch, sizes, scales = prepare_image_batch(chunk, self.config)
            out = {k: np.asarray(v) for k, v in fn(tf.convert_to_tensor(batch, tf.float32),
                                                   tf.convert_to_tensor(sizes, tf.int32)).items()}
            for i, image in enumerate(chunk):
                results.append(self._unmold(out, i, image.shape[:2], np.asarray(scales)[i]))
        return results

    def _unmold(self, out: dict, i: int, image_shape: tuple[int, int], scale: np.ndarray) -> dict:
        n = int(out["num_detections"][i])
        boxes = out["boxes"][i, :n] / np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        height, width = image_shape
        boxes = np.clip(boxes, 0, [height, width, height, width]).astype(np.float32)
        result = {
            "rois": boxes,
            "class_ids": out["class_ids"][i, :n].astype(np.int32),
            "scores": out["scores"][i, :n].astype(np.float32),
        }
        if "masks" in out:
            result["masks"] = paste_masks(
                out["masks"][i, :n], boxes, image_shape, self.config.DETECTION_MASK_THRESHOLD
            )
        if "keypoints" in out:
            kps = out["keypoints"][i, :n].astype(np.float32).copy()
            # Network-input continuous pixels -> original image, pixel-index convention.
            kps[..., 0] = kps[..., 0] / scale[1] - 0.5
            kps[..., 1] = kps[..., 1] / scale[0] - 0.5
            result["keypoints"] = kps
        return result


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


def _pick_class_channel(mask_logits: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
    """[B, R, mh, mw, K+1] logits, [B, R] class ids -> [B, R, mh, mw] of that class."""
    per_class = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
    return tf.gather(per_class, class_ids, batch_dims=2)


def _as_image_list(images) -> list[np.ndarray]:
    """Normalise detect()'s input to a list of uint8 [H, W, 3] arrays, or raise ValueError."""
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
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or min(image.shape[:2]) < 1:
            raise ValueError(f"{expected}; image {i} has shape {image.shape}")
        image = image[..., :3]
        if image.dtype != np.uint8:
            if np.issubdtype(image.dtype, np.floating) and image.size and image.max() <= 1.0:
                image = image * 255.0
            image = np.clip(image, 0, 255).astype(np.uint8)
        out.append(image)
    return out
