"""Evaluation during ``fit`` (COCO metrics and detection pictures) and the run's one
TensorBoard summary writer."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import keras

from mrcnn.evaluate import evaluate_dataset, format_metrics


class SummaryWriter:
    """The one writer of the run's own TensorBoard summaries in ``log_dir``: float scalars
    (evaluation metrics, data health) and pictures (detections at each evaluation).

    ``tf.summary.scalar``/``image`` live in the tensorboard package, which TensorFlow no
    longer installs; the records they write are these (a float tensor tagged for the
    "scalars" plugin; a string tensor of PNGs for "images"), which TensorBoard reads the
    same way.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = os.fspath(log_dir)
        self._writer: Any = None

    def writer(self) -> Any:
        """The ``tf.summary`` file writer (made on first use)."""
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def write(self, scalars: dict[str, float], step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self.writer().as_default():
            for name, value in scalars.items():
                tf.summary.write(tag=name, tensor=tf.constant(float(value), tf.float32), step=step,
                                 metadata=metadata)
        self._writer.flush()

    def write_images(self, tag: str, images: Sequence[Any], step: int) -> None:
        """uint8 ``[H, W, 3]`` pictures as one image summary (TensorBoard's "images" plugin:
        a string tensor ``[width, height, png, png, ...]``, what ``tf.summary.image`` writes)."""
        import io

        import tensorflow as tf
        from PIL import Image
        from tensorflow.core.framework import summary_pb2

        if not len(images):
            return
        pngs = []
        for picture in images:
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        height, width = images[0].shape[:2]
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "images"
        with self.writer().as_default():
            tf.summary.write(tag=tag, tensor=tf.constant([str(width), str(height), *pngs]), step=step,
                             metadata=metadata)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CocoEvaluationCallback(keras.callbacks.Callback):
    """COCO box/mask AP on a validation dataset at the end of every N-th epoch.

    Calls ``evaluate_dataset(self.model.detect, dataset, ...)`` and adds the 12
    COCO metrics per IoU type to the epoch's logs as ``val_bbox_AP``,
    ``val_segm_AP50``, ... (``{prefix}{iou_type}_{metric}``), so that ``History``
    and callbacks listed AFTER this one (``ModelCheckpoint(monitor="val_segm_AP",
    mode="max")``, ``EarlyStopping``) see them. On epochs that are skipped the
    keys are absent.

    Args:
        dataset: a prepared Dataset with ground-truth masks.
        every_n_epochs: evaluate when ``(epoch + 1) % every_n_epochs == 0``.
        image_ids: internal image ids to evaluate (default: all; a subset keeps
            the epoch-end pause short).
        log_dir: if given, the metrics are also written as TensorBoard scalars
            (same names, step = epoch index) to this folder.
        batch_size: images per ``detect`` call; default ``model.config.BATCH_SIZE``
            when the model has a config, else 1.
        iou_types: any of "bbox", "segm", "keypoints"; None (default) picks what the
            model produces (see :func:`mrcnn.evaluate.evaluate_dataset`).
        prefix: prefix of the log keys.
        progress: show a progress bar while detecting.
        print_table: print :func:`format_metrics` after each evaluation.
        images: with ``log_dir``, also draw the detections (score >= ``image_min_score``)
            on the first ``images`` evaluated images and write them to TensorBoard
            (tag ``{prefix}detections``, step = epoch index); 0 = none.
        image_min_score: the score from which a detection is drawn.

    ``last_metrics`` holds the full result (per-class table included) of the
    latest evaluation. A dataset with its own COCO annotation file (e.g.
    :class:`mrcnn.data.coco.CocoDataset`) is scored against that file
    (``evaluate_dataset(..., ground_truth="auto")``).
    """

    def __init__(
        self,
        dataset: Any,
        every_n_epochs: int = 1,
        image_ids: Sequence[int] | None = None,
        log_dir: str | os.PathLike | None = None,
        batch_size: int | None = None,
        iou_types: Sequence[str] | None = None,
        prefix: str = "val_",
        progress: bool = False,
        print_table: bool = False,
        images: int = 0,
        image_min_score: float = 0.5,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1")
        self.dataset = dataset
        self.every_n_epochs = int(every_n_epochs)
        self.image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.batch_size = batch_size
        self.iou_types = None if iou_types is None else tuple(iou_types)
        self.prefix = prefix
        self.progress = progress
        self.print_table = print_table
        self.images = int(images)
        self.image_min_score = float(image_min_score)
        self.last_metrics: dict[str, Any] | None = None
        self._writer = None

    def _batch_size(self) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        config = getattr(self.model, "config", None)
        return int(getattr(config, "BATCH_SIZE", 1) or 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        detect = getattr(self.model, "detect", None)
        if not callable(detect):
            raise TypeError(
                f"CocoEvaluationCallback needs a model with a detect() method; got {type(self.model).__name__}"
            )
        metrics = evaluate_dataset(
            detect,
            self.dataset,
            image_ids=self.image_ids,
            batch_size=self._batch_size(),
            progress=self.progress,
            iou_types=self.iou_types,
        )
        self.last_metrics = metrics
        scalars = {
            f"{self.prefix}{iou_type}_{name}": value
            for iou_type, values in metrics.items()
            if iou_type != "per_class"
            for name, value in values.items()
        }
        if logs is not None:
            # Keras hands the same dict to every later callback and to History.
            logs.update(scalars)
        if self.print_table:
            print(f"\nEpoch {epoch + 1}: COCO evaluation\n{format_metrics(metrics)}")
        if self.log_dir is not None:
            self._write_scalars(scalars, epoch)
            if self.images:
                self._write_pictures(epoch)

    def _write_pictures(self, step: int) -> None:
        """The detections on the first ``images`` evaluated images, drawn, as one image summary
        (all pictures resized to the first one's size: TensorBoard shows them as a strip)."""
        import numpy as np
        from PIL import Image

        from mrcnn.visualize import draw_instances

        ids = list(self.image_ids if self.image_ids is not None else self.dataset.image_ids)[: self.images]
        pictures = [self.dataset.load_image(int(i)) for i in ids]
        names = getattr(self.dataset, "class_names", None)
        drawn = []
        for picture, r in zip(pictures, self.model.detect(pictures)):
            keep = np.asarray(r["scores"]) >= self.image_min_score
            drawn.append(draw_instances(picture, r["rois"][keep], r["masks"][..., keep], r["class_ids"][keep],
                                        names, r["scores"][keep]))
        height, width = drawn[0].shape[:2]
        drawn = [d if d.shape[:2] == (height, width) else np.asarray(Image.fromarray(d).resize((width, height)))
                 for d in drawn]
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        self._writer.write_images(f"{self.prefix}detections", drawn, step)

    def _write_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        # Undefined metrics (no GT of that size) are not plotted.
        self._writer.write({k: v for k, v in scalars.items() if not math.isnan(v)}, step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
