"""Keras callbacks for training Mask R-CNN."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import keras

from mrcnn.evaluate import evaluate_dataset, format_metrics


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

    ``last_metrics`` holds the full result (per-class table included) of the
    latest evaluation.
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

    def _write_scalars(self, scalars: dict[str, float], step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # tf.summary.scalar lives in the tensorboard package, which TensorFlow no
        # longer installs; the record it writes is this one (a float tensor tagged
        # for the "scalars" plugin), which TensorBoard reads the same way.
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writer.as_default():
            for name, value in scalars.items():
                if not math.isnan(value):  # undefined metrics (no GT of that size) are not plotted
                    tf.summary.write(
                        tag=name, tensor=tf.constant(value, tf.float32), step=step, metadata=metadata
                    )
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` cleanly once ``minutes`` of training have passed.

    The check runs after every batch, so the model stops within one step of the
    budget; ``fit`` then finishes normally (checkpoint callbacks still run at
    ``on_train_end``) and ``stopped_early`` tells whether the budget was hit.
    """

    def __init__(self, minutes: float, verbose: bool = True) -> None:
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.verbose = verbose
        self.stopped_early = False
        self._start: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start = time.monotonic()

    def elapsed_minutes(self) -> float:
        return 0.0 if self._start is None else (time.monotonic() - self._start) / 60.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._start is not None and time.monotonic() - self._start >= self.seconds:
            if not self.stopped_early and self.verbose:
                print(f"\n[mrcnn] time budget of {self.seconds / 60:.1f} min reached; stopping")
            self.stopped_early = True
            self.model.stop_training = True
