"""tf.data service on localhost: one dispatcher and two worker processes started by the CLI.

Each image of the test records has its own width, so the resized width in
``image_sizes`` names the image a consumer received. Timeouts are generous and
only there to turn a hang into a failure; nothing asserts on wall-clock speed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.data import RecordDataset, build_dataset
from mrcnn.data.coco import CocoDataset
from mrcnn.data.records_write import write_records
from tests.conftest import TinyConfig

ROOT = Path(__file__).resolve().parents[2]
HANG = 240  # seconds: only a hang gets near this
READY = re.compile(r"^tf\.data service (dispatcher|worker) serving on port \d+", re.MULTILINE)


class ServiceConfig(TinyConfig):
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 1024
    IMAGE_RESIZE_MODE = "pad32"
    TRAIN_PADDING = "batch"
    IMAGES_PER_GPU = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(root: Path, n: int) -> tuple[Path, dict[int, int]]:
    """n images of height 40 and width 41 + i (one image per shard file, so one split = one image);
    returns the folder and {resized width: image index}."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        w = 41 + i
        Image.fromarray(np.full((40, w, 3), i * 7 % 256, np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 40, "width": w})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]], "bbox": [5, 5, 25, 25], "area": 625})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "box"}]}))
    dataset = CocoDataset(root / "ann.json", root / "images")
    write_records(dataset, root / "records", num_shards=n, progress=False)
    # Short side 40 -> 64: width 41 + i -> floor((41 + i) * 1.6), distinct for distinct i.
    return root / "records", {int(np.floor((41 + i) * 64 / 40)): i for i in range(n)}


class Service:
    """A dispatcher and workers as `mrcnn data-service` processes on 127.0.0.1."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
        self.logs = []

        def start(*args: str) -> subprocess.Popen:
            log = open(tmp / f"service-{len(self.logs)}.log", "w")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            return subprocess.Popen([sys.executable, "-m", "mrcnn", "data-service", *args], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)

        self.dispatcher = start("dispatcher", "--port", str(self.port), "--worker-timeout", "3")
        self.workers = [start("worker", "--port", str(_free_port()), "--dispatcher", f"127.0.0.1:{self.port}",
                              "--host", "127.0.0.1") for _ in range(workers)]
        self.address = f"grpc://127.0.0.1:{self.port}"
        self._wait_for_workers(workers)

    def _wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            for log in self.logs:
                log.flush()
            ready = [bool(READY.search(Path(log.name).read_text())) for log in self.logs]
            if sum(ready) == count + 1:
                return
            for p, log in zip([self.dispatcher, *self.workers], self.logs):
                assert p.poll() is None, Path(log.name).read_text()[-2000:]
            time.sleep(0.5)
        raise AssertionError("data service processes did not start")

    def stop(self) -> None:
        for p in [*self.workers, self.dispatcher]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.dispatcher]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


@pytest.fixture
def service(tmp_path):
    svc = Service(tmp_path, workers=2)
    yield svc
    svc.stop()


def _widths(batch) -> list[int]:
    return [int(w) for w in batch["image_sizes"].numpy()[:, 1]]


def test_one_epoch_reads_every_element_exactly_once(tmp_path, service):
    """DYNAMIC sharding (processing_mode "distributed_epoch"): no element lost, none twice."""
    folder, image_of = _records(tmp_path, 16)
    ds = build_dataset(RecordDataset(folder), ServiceConfig(), training=True, repeat=False, seed=3,
                       data_service=service.address)
    seen = collections.Counter()
    for batch in ds:
        seen.update(image_of[w] for w in _widths(batch))
        assert sum(seen.values()) <= 16 * 2, "an epoch does not end"  # bounded loop
    assert seen == collections.Counter(range(16))


CONSUMER = """
import sys
from mrcnn.data import RecordDataset, build_dataset
from tests.engine.test_data_service import ServiceConfig
ds = build_dataset(RecordDataset(sys.argv[1]), ServiceConfig(), training=True, repeat=False, seed=3,
                   data_service=sys.argv[2])
for batch in ds:
    print("W", *batch["image_sizes"].numpy()[:, 1], flush=True)
print("END", flush=True)
"""
IDLE = 30  # seconds without an element after the kill: the stream has given all it will give


def test_a_killed_worker_never_causes_a_repeat_and_the_survivor_lives(tmp_path, service):
    """SIGKILL one of two workers mid-epoch: no element is ever delivered twice (the dynamic
    sharding's at-most-once guarantee) and the survivor lives on; how many elements still
    arrive is measured and printed, not asserted, because TensorFlow does not bound it.

    TF 2.21's client blocks on the dead worker's task (``allow_skip`` off: blocking reads,
    retried every few seconds), so the epoch's end never comes and, in some runs, nothing
    more arrives at all (measured 0 to 36 of the 36 left, docs/distributed.md). The consumer is
    therefore its own process: the test stops reading when nothing arrives for IDLE seconds
    and kills it."""
    import queue
    import threading

    n = 40
    folder, image_of = _records(tmp_path, n)
    err = open(tmp_path / "consumer.err", "w")  # noqa: SIM115 - closed below
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(folder), service.address],
                                env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in consumer.stdout], daemon=True).start()
    seen: collections.Counter = collections.Counter()
    after_kill, ended = 0, False
    try:
        while True:
            try:
                line = lines.get(timeout=HANG if not seen else IDLE)
            except queue.Empty:
                break
            if line.startswith("END"):
                ended = True
                break
            seen.update(image_of[int(w)] for w in line.split()[1:])
            if sum(seen.values()) == 4 and service.workers[0].poll() is None:
                os.kill(service.workers[0].pid, signal.SIGKILL)
                service.workers[0].wait(timeout=30)
            elif service.workers[0].poll() is not None:
                after_kill += 1
            assert sum(seen.values()) <= 2 * n, "an epoch does not end"  # bounded loop
    finally:
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=30)
        err.close()
    repeated = sum(c - 1 for c in seen.values() if c > 1)
    lost = n - len(seen)
    print(f"\n[data service] killed 1 of 2 workers after 4 of {n} elements: received {sum(seen.values())} "
          f"({after_kill} after the kill), lost {lost}, repeated {repeated}, epoch end reached: {ended}")
    assert service.workers[0].poll() is not None  # the kill happened mid-epoch
    assert repeated == 0, seen  # at most once: a split is never handed out twice
    assert service.workers[1].poll() is None, (tmp_path / "consumer.err").read_text()[-2000:]


def test_python_datasets_are_refused_with_the_fix(tmp_path):
    from mrcnn.data.synthetic import ShapesDataset

    shapes = ShapesDataset()
    shapes.load_shapes(2, seed=0)
    with pytest.raises(ValueError, match="data_service needs a RecordDataset"):
        build_dataset(shapes, ServiceConfig(), training=True, data_service="grpc://127.0.0.1:1")
    folder, _ = _records(tmp_path, 2)
    with pytest.raises(ValueError, match="PROTOCOL://HOST:PORT"):
        build_dataset(RecordDataset(folder), ServiceConfig(), training=True, data_service="127.0.0.1:1")
