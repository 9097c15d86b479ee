"""What the loader met while reading one input pipeline: a :class:`DataHealth` record.

Each :func:`mrcnn.data.build_dataset` pipeline owns one (``dataset.data_health`` on
the ``tf.data.Dataset`` it returns; pass ``health=`` to share one). The loader
counts into it, :meth:`mrcnn.model.MaskRCNN.fit` takes it from the dataset it fits
(``model.data_health``) to raise the first bad sample as itself, and
:class:`mrcnn.engine.callbacks.DataHealthLogger` logs it at each epoch end. Nothing
is kept at module level: two pipelines in one process count apart.
"""

from __future__ import annotations

import threading
import warnings

COUNTER_KEYS = ("empty_masks_dropped", "instances_truncated", "bad_samples_skipped")


class DataHealth:
    """Counters, skipped ids and the first bad sample of one input pipeline.

    Thread-safe: ``tf.data`` runs the loader in several threads at once.

    Attributes (read them through :meth:`snapshot` while a pipeline runs):
        counters: ``{"empty_masks_dropped", "instances_truncated",
            "bad_samples_skipped"}`` -> count since creation (or :meth:`reset`).
        skipped_ids: internal ids skipped under ``ON_BAD_SAMPLE="skip"``, in the order met.
        first_bad_sample: the first :class:`~mrcnn.data.loader.BadSampleError` raised
            under ``ON_BAD_SAMPLE="raise"`` (None until one is), so that ``fit`` can
            report it without the TF traceback around it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self.skipped_ids: list[int] = []
        self.first_bad_sample: Exception | None = None
        # image id -> its BadSampleError, so that a skipped sample is read (and counted) once.
        self.known_bad: dict[int, Exception] = {}
        self._warned: set[str] = set()

    def count(self, key: str, amount: int, message: str) -> None:
        """Add ``amount`` to ``counters[key]``; warn ``message`` the first time only."""
        with self._lock:
            self.counters[key] += int(amount)
            first = key not in self._warned
            self._warned.add(key)
        if first:
            warnings.warn(message, UserWarning, stacklevel=3)

    def record_bad(self, error: Exception) -> None:
        """Keep ``error`` as :attr:`first_bad_sample` unless one is kept already."""
        with self._lock:
            if self.first_bad_sample is None:
                self.first_bad_sample = error

    def skip(self, image_id: int, error: Exception) -> bool:
        """Count ``image_id`` as skipped (once). True when this is the first skip of all."""
        with self._lock:
            if image_id in self.known_bad:
                return False
            self.known_bad[image_id] = error
            self.counters["bad_samples_skipped"] += 1
            self.skipped_ids.append(int(image_id))
            first = "bad_samples_skipped" not in self._warned
            self._warned.add("bad_samples_skipped")
            return first

    def snapshot(self) -> tuple[dict[str, int], list[int]]:
        """(a copy of ``counters``, a copy of ``skipped_ids``), read under the lock."""
        with self._lock:
            return dict(self.counters), list(self.skipped_ids)

    def reset(self) -> None:
        """Zero the counters, forget the bad samples and re-arm the warnings."""
        with self._lock:
            self.counters = dict.fromkeys(COUNTER_KEYS, 0)
            self.skipped_ids.clear()
            self.known_bad.clear()
            self._warned.clear()
            self.first_bad_sample = None

    def __repr__(self) -> str:
        counts, ids = self.snapshot()
        return f"DataHealth({counts}, skipped_ids={ids})"

