"""How long a MultiWorkerMirroredStrategy worker takes to notice that its peer died.

Two `mrcnn train --strategy multi-worker` processes on localhost (the tiny config of
tests/engine/test_multiworker.py); once the chief's first backup is committed, worker 1 is
SIGKILLed and the seconds until worker 0 exits (status 4, "lost another worker") are
measured. tests/engine/test_multiworker.py::test_cli_multi_worker_kill_resume_and_equal_weights
checks that it exits with that status (a hang is caught there only by a generous bound); the
time it takes is measured here, not asserted in the suite.

    python scripts/bench_peer_failure.py [--repeats 1]

Prints one JSON line: {"seconds_to_exit": [...], "exit_codes": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f"""
import sys
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
from conftest import TinyConfig

class MultiWorkerTiny(TinyConfig):
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    IMAGES_PER_GPU = 1
    ROI_ALIGN_IMPLEMENTATION = "portable"
"""


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def once(folder: str) -> tuple[float, int | None]:
    cfg = os.path.join(folder, "mwcfg.py")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    out = os.path.join(folder, "out")
    argv = [sys.executable, "-m", "mrcnn", "train", "--strategy", "multi-worker", "--config",
            f"{cfg}:MultiWorkerTiny", "--dataset", "shapes", "--train-images", "8", "--val-images", "2",
            "--epochs", "4", "--steps-per-epoch", "10", "--seed", "5", "--check", "none", "--out", out]
    ports = _ports(2)
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                "task": {"type": "worker", "index": i}})
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, TF_CONFIG=tf_config,
                   CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        backup = os.path.join(out, "backup")
        while not (os.path.isdir(backup) and any(n.endswith(".json") for n in os.listdir(backup))):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited before the first backup")
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            code = procs[0].wait(timeout=1800)
        except subprocess.TimeoutExpired:
            code = None
        return time.monotonic() - killed, code
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    seconds, codes = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            s, c = once(folder)
        seconds.append(round(s, 2))
        codes.append(c)
    print(json.dumps({"seconds_to_exit": seconds, "exit_codes": codes}))


if __name__ == "__main__":
    main()
