"""Building blocks for a training/evaluation script on your own data (what the samples use).

* :func:`parse_set` turns repeated ``--set FIELD=VALUE`` options (Python
  literals) into a dict of Config overrides.
* :func:`make_config` builds a Config subclass from an optional saved
  ``config.json`` plus those overrides; :func:`find_run_config` finds the
  ``config.json`` a training run wrote beside (or one folder above) its weights.
* :func:`build_model` builds a :class:`~mrcnn.model.MaskRCNN` and loads weights
  with an error that says what to do when they do not fit.
* :class:`MetricCurve` is a :class:`~mrcnn.engine.callbacks.CocoEvaluationCallback`
  that also records each evaluation against training minutes (taken from a
  :class:`~mrcnn.engine.callbacks.TimeBudget`, which does not count the evaluation)
  into a JSON file: an AP-vs-time curve.
* :func:`json_ready` (from :mod:`mrcnn.fileio`) replaces NaN (undefined COCO metrics) by None
  for strict JSON; files are written with :func:`mrcnn.fileio.write_json` (atomic, fsynced).
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrcnn.config import Config
from mrcnn.engine.callbacks import CocoEvaluationCallback, TimeBudget
from mrcnn.fileio import json_ready, write_json


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``["BACKBONE='resnet34'", "IMAGES_PER_GPU=4"]`` -> ``{"BACKBONE": "resnet34", "IMAGES_PER_GPU": 4}``.

    Values are Python literals; anything else is kept as a string. Raises
    ValueError for an item without ``=``.
    """
    values: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set BACKBONE=resnet34")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        values[key.strip()] = value
    return values


def make_config(cls: type[Config], overrides: dict[str, Any] | None = None,
                config_file: str | os.PathLike | None = None) -> Config:
    """``cls`` from an optional saved ``config.json`` (``Config.to_json``) plus ``overrides``.

    Raises ValueError naming the field for an override ``cls`` has no field for (a
    typo in ``--set``) or an invalid value. (Extra fields in the file are carried
    with a warning, see ``Config.from_dict``.)
    """
    unknown = sorted(k for k in (overrides or {}) if not k.isupper() or not hasattr(cls, k))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown} (--set FIELD=VALUE)")
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file}: not valid JSON ({exc})") from exc
    values.update(overrides or {})
    return cls.from_dict(values, config_class=f"{cls.__module__}:{cls.__qualname__}") if values else cls()


def find_run_config(weights: str | os.PathLike | None) -> Path | None:
    """The ``config.json`` beside ``weights`` or one folder up (where ``train`` writes it)."""
    if not weights:
        return None
    here = Path(weights).resolve().parent
    for candidate in (here / "config.json", here.parent / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def build_model(config: Config, weights: str | os.PathLike | None = None):
    """A MaskRCNN for ``config``, with ``weights`` (a ``.weights.h5``) loaded when given.

    Raises FileNotFoundError for a missing file and ValueError, saying to pass the
    run's config.json, when the weights do not fit the network.
    """
    from mrcnn.model import MaskRCNN

    model = MaskRCNN(config)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {str(path)!r} does not exist")
        try:
            model.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"cannot load {str(path)!r} into this network ({exc}). Was it trained with another "
                "configuration? Pass the run's config.json (train writes it next to the weights)."
            ) from exc
    return model


class MetricCurve(CocoEvaluationCallback):
    """COCO evaluation every ``every_n_epochs``, recorded against training minutes.

    Each evaluation appends ``{"minutes", "step", "segm_AP50", "segm_AP",
    "bbox_AP50", "bbox_AP", "eval_seconds"}`` to ``points`` and rewrites
    ``path`` (strict JSON). The minutes are ``budget.elapsed_minutes()``, and
    the evaluation's own time is excluded from the budget (``budget.exclude``),
    so neither the curve nor the stop counts it. Other arguments as
    :class:`~mrcnn.engine.callbacks.CocoEvaluationCallback` (``max_detections`` is
    passed on to the COCO scoring).
    """

    def __init__(self, dataset: Any, path: str | os.PathLike, budget: TimeBudget,
                 max_detections: int = 100, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.path = Path(path)
        self.budget = budget
        self.max_detections = int(max_detections)
        self.points: list[dict[str, Any]] = []
        self._step = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        minutes = self.budget.elapsed_minutes()
        t0 = time.monotonic()
        from mrcnn.evaluate import evaluate_dataset

        self.last_metrics = metrics = evaluate_dataset(
            self.model.detect, self.dataset, image_ids=self.image_ids, batch_size=self._batch_size(),
            progress=self.progress, iou_types=self.iou_types, max_detections=self.max_detections,
        )
        seconds = time.monotonic() - t0
        self.budget.exclude(seconds)
        point = {"minutes": round(minutes, 3), "step": self._step, "eval_seconds": round(seconds, 1)}
        for iou_type in ("segm", "bbox"):
            if iou_type in metrics:
                point[f"{iou_type}_AP50"] = metrics[iou_type]["AP50"]
                point[f"{iou_type}_AP"] = metrics[iou_type]["AP"]
        if logs is not None:
            logs.update({f"{self.prefix}{t}_{k}": v for t, vals in metrics.items() if t != "per_class"
                         for k, v in vals.items()})
        self.points.append(json_ready(point))
        write_json(self.path, json_ready({"metric": "COCO AP on the listed images against training minutes",
                               "images": [self.dataset.image_info[i]["id"] for i in
                                          (self.image_ids if self.image_ids is not None else self.dataset.image_ids)],
                               "points": self.points}))
        shown = " ".join(f"{k}={v:.4f}" for k, v in point.items() if k.endswith("AP50") and v is not None)
        print(f"[curve] {minutes:.2f} min, step {self._step}: {shown} ({point['eval_seconds']} s)", flush=True)


__all__ = ["parse_set", "make_config", "find_run_config", "build_model", "json_ready", "MetricCurve"]
