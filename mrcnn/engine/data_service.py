"""tf.data service processes: the dispatcher and the workers that run input pipelines for trainers.

``mrcnn data-service dispatcher --port P`` and ``mrcnn data-service worker --port Q
--dispatcher HOST:P`` call these; a trainer then passes ``--data-service
grpc://HOST:P`` (``build_dataset(..., data_service=...)``) and its whole records
pipeline (decode, augmentation, batching) runs on the workers. See
docs/distributed.md for the layout (CPU hosts beside a multi-GPU trainer), the
sharding policy and what a lost worker costs.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import tensorflow as tf


def start_dispatcher(port: int, work_dir: str | None = None, worker_timeout_s: float = 30.0) -> Any:
    """Start a dispatcher on ``port`` (all interfaces) and return the server.

    ``work_dir``: journal folder (fault tolerant mode) so that a restarted
    dispatcher resumes its jobs; None keeps its state in memory.
    ``worker_timeout_s``: a worker silent for this long counts as lost (its
    splits are not handed out again: dynamic sharding is at most once).
    """
    _check_port(port)
    if worker_timeout_s <= 0:
        raise ValueError(f"--worker-timeout must be > 0 seconds, got {worker_timeout_s}")
    config = tf.data.experimental.service.DispatcherConfig(
        port=int(port), work_dir=work_dir, fault_tolerant_mode=work_dir is not None,
        worker_timeout_ms=int(worker_timeout_s * 1000))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int, host: str = "localhost") -> Any:
    """Start a worker on ``port`` registered with ``dispatcher`` (``HOST:PORT``); return the server.

    ``host``: the name trainers reach this worker at (the worker advertises
    ``host:port``), so on a CPU host beside the trainers pass its own host name.
    """
    _check_port(port)
    if "://" in dispatcher:
        dispatcher = dispatcher.split("://", 1)[1]
    if ":" not in dispatcher:
        raise ValueError(f"--dispatcher must be HOST:PORT, got {dispatcher!r}")
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher, worker_address=f"{host}:%port%", port=int(port))
    return tf.data.experimental.service.WorkerServer(config)


def _check_port(port: int) -> None:
    if not 0 < int(port) < 65536:
        raise ValueError(f"--port must be 1..65535, got {port}")


def serve_until_signal(server: Any) -> None:
    """Block until SIGINT/SIGTERM, then stop ``server``."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop()
