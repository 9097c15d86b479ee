#!/usr/bin/env python
"""Benchmark RoIAlign forward + backward: the custom op vs the stock-ops path.

Workload (training size): features 2x200x200x256, 1024 boxes 16-112 px in image pixels
(800x800 images), spatial_scale 0.25, 14x14 output, sampling_ratio 2, aligned.

Times are the median of several interleaved runs in one process (both implementations
inside tf.function). Peak memory is measured per implementation in a fresh subprocess:
the peak RSS (VmHWM) of a process that sets up the inputs, then runs the step a few
times, minus the RSS right before the first step.

    .venv/bin/python scripts/bench_roi_align.py [--repeats 7] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mrcnn.ops.roi_pooling import roi_align  # noqa: E402

IMPLS = ("custom", "portable")


def make_inputs(seed: int = 0):
    gen = tf.random.Generator.from_seed(seed)
    features = gen.normal([2, 200, 200, 256])
    n = 1024
    size = gen.uniform([n, 2], 16.0, 112.0)
    corner = gen.uniform([n, 2], 0.0, 1.0) * (800.0 - size)
    boxes = tf.concat([corner, corner + size], axis=1)  # (y1, x1, y2, x2)
    indices = gen.uniform([n], 0, 2, dtype=tf.int32)
    upstream = gen.normal([n, 14, 14, 256])
    return features, boxes, indices, upstream


def make_step(impl: str, backward: bool = True):
    @tf.function
    def step(features, boxes, indices, upstream):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = roi_align(features, boxes, indices, 14, 0.25, 2, True, implementation=impl)
        if not backward:
            return out[0, 0, 0, 0]
        # The upstream gradient goes straight in, so only RoIAlign's own work is timed.
        grad = tape.gradient(out, features, output_gradients=upstream)
        return out[0, 0, 0, 0] + grad[0, 0, 0, 0]

    return step


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(impl: str) -> None:
    inputs = make_inputs()
    step = make_step(impl)
    before = status_kib("VmRSS")
    for _ in range(3):
        float(step(*inputs))
    # VmHWM is this process' own peak RSS (ru_maxrss would include the parent's peak,
    # which survives fork + exec on Linux).
    peak = status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": impl, "peak_mib": peak / 1024, "step_mib": (peak - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    from mrcnn.ops import custom_roi_align

    if not custom_roi_align.is_available():
        sys.exit(f"custom op unavailable: {custom_roi_align.unavailable_reason()}")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs visible, "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}")
    inputs = make_inputs()
    results = {}
    for label, backward in (("forward+backward", True), ("forward only", False)):
        steps = {impl: make_step(impl, backward) for impl in IMPLS}
        for impl in IMPLS:  # trace + warm up
            float(steps[impl](*inputs))
        times = {impl: [] for impl in IMPLS}
        for _ in range(args.repeats):
            for impl in IMPLS:  # interleaved
                start = time.perf_counter()
                float(steps[impl](*inputs))
                times[impl].append(time.perf_counter() - start)
        med = {impl: statistics.median(t) for impl, t in times.items()}
        # On a loaded machine the load drifts between repeats; the ratio within each
        # interleaved pair is steadier than the ratio of the medians.
        paired = statistics.median(p / c for p, c in zip(times["portable"], times["custom"]))
        results[label] = med
        print(f"{label:17s} custom {med['custom'] * 1e3:8.1f} ms   portable "
              f"{med['portable'] * 1e3:8.1f} ms   speed-up x{med['portable'] / med['custom']:.1f}"
              f" (median of paired ratios x{paired:.1f})   (median of {args.repeats})")

    if not args.no_memory:
        for impl in IMPLS:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", impl],
                                  capture_output=True, text=True, check=True)
            mem = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"peak memory {impl:8s}: process peak RSS {mem['peak_mib']:7.0f} MiB, "
                  f"step's increase over the inputs {mem['step_mib']:7.0f} MiB")


if __name__ == "__main__":
    main()
