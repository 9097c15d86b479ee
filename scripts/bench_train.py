"""Training throughput: R50-FPN, 2 images of 512x512 per step, on this CPU.

    python scripts/bench_train.py [--steps 5] [--roi-align portable|custom|auto]
    python scripts/bench_train.py --scaling [--steps 5] [--backbone resnet18] [--size 256]
    python scripts/bench_train.py --precision float32 bfloat16 [--steps 5] [--size 512]

Random images with 5 boxes each; prints steps/s (median over the timed steps
after one warm-up step) and, when the custom op is built, the same with each
RoIAlign implementation side by side.

``--scaling``: 1 image per replica, trained by 1 replica, by 2 replicas of a
``MirroredStrategy`` over two logical CPU devices, and by 2 worker processes
of a ``MultiWorkerMirroredStrategy`` on localhost ports (one CPU device each),
side by side; each in its own process (logical devices and the cluster must be
set before TensorFlow starts), timed through ``model.fit``. Scaling efficiency
= images/s with 2 replicas / (2 x images/s with 1). On one CPU the replicas
share the same cores, so the numbers show only the overheads (the all-reduce,
the second input pipeline, the gRPC ring), not a speed-up; on N GPUs or N
machines each replica has its own device.

``--precision``: the same step under each ``Config.MIXED_PRECISION`` given
("float32" = None, "bfloat16", "float16"), the models built side by side from
the same weights and their steps interleaved; prints s/step and the ratio to
float32. On a CPU, half precision pays only where it has native kernels
(bfloat16 with AVX512_BF16 / AMX; float16 convolutions fall back to Eigen).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--roi-align", nargs="*", default=None,
                        help="implementations to compare (default: portable, plus custom when built)")
    parser.add_argument("--scaling", action="store_true", help="1 vs 2 replicas (logical CPUs, 2 workers)")
    parser.add_argument("--size", type=int, default=512, help="image side (--scaling, --precision)")
    parser.add_argument("--precision", nargs="+", choices=("float32", "bfloat16", "float16"),
                        help="compare these MIXED_PRECISION settings, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return scaling_child(args)
    if args.scaling:
        return scaling(args)
    if args.precision:
        return precision(args)

    import keras
    import numpy as np
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN
    from mrcnn.ops import custom_roi_align

    impls = args.roi_align or (["portable", "custom"] if custom_roi_align.is_available() else ["portable"])
    rng = np.random.default_rng(0)
    b, g, side = 2, 5, 512
    boxes = np.zeros((b, 100, 4), np.float32)
    y1x1 = rng.uniform(0, 300, (b, g, 2))
    boxes[:, :g] = np.concatenate([y1x1, y1x1 + rng.uniform(32, 200, (b, g, 2))], -1)
    classes = np.zeros((b, 100), np.int32)
    classes[:, :g] = rng.integers(1, 91, (b, g))
    masks = np.zeros((b, 100, 56, 56), np.uint8)
    masks[:, :g, 8:48, 8:48] = 1
    batch = {
        "images": rng.uniform(0, 255, (b, side, side, 3)).astype(np.float32),
        "image_sizes": np.full((b, 2), side, np.int32),
        "gt_boxes": boxes, "gt_class_ids": classes, "gt_masks": masks,
    }
    results = {}
    for impl in impls:
        config = Config(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_MIN_DIM=side, IMAGE_MAX_DIM=side,
                        IMAGES_PER_GPU=b, ROI_ALIGN_IMPLEMENTATION=impl, FREEZE_BACKBONE_STAGES=2)
        model = MaskRCNN(config)
        model.compile()
        model.make_train_function()
        step = model.train_function
        data = iter(tf.data.Dataset.from_tensors(batch).repeat())
        step(data)  # trace + first step
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            logs = step(data)
            float(logs["loss"])
            times.append(time.perf_counter() - t)
        results[impl] = statistics.median(times)
        print(f"{impl:9s} {1 / results[impl]:.3f} steps/s ({results[impl]:.2f} s/step, "
              f"{args.backbone}-FPN, {b}x{side}x{side})", flush=True)
        del model
        keras.backend.clear_session()
    if len(results) == 2:
        print(f"speed-up custom vs portable: {results['portable'] / results['custom']:.2f}x")


# ----- 1 vs 2 replicas ---------------------------------------------------------------------
def _batch(images: int, side: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    g = 5
    boxes = np.zeros((images, 100, 4), np.float32)
    y1x1 = rng.uniform(0, side * 0.6, (images, g, 2))
    boxes[:, :g] = np.concatenate([y1x1, y1x1 + rng.uniform(side / 16, side * 0.4, (images, g, 2))], -1)
    classes = np.zeros((images, 100), np.int32)
    classes[:, :g] = rng.integers(1, 91, (images, g))
    masks = np.zeros((images, 100, 56, 56), np.uint8)
    masks[:, :g, 8:48, 8:48] = 1
    return {"images": rng.uniform(0, 255, (images, side, side, 3)).astype(np.float32),
            "image_sizes": np.full((images, 2), side, np.int32),
            "gt_boxes": boxes, "gt_class_ids": classes, "gt_masks": masks}


def scaling_child(args: argparse.Namespace) -> None:
    """One measurement: ``--child one|mirrored|multi-worker``; prints ``RESULT {json}``."""
    mode = args.child
    if mode == "multi-worker":
        from mrcnn.engine import distribute

        strategy = distribute.make_strategy("multi-worker")
    import keras
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "one":
        strategy = tf.distribute.get_strategy()
    from mrcnn import Config, MaskRCNN, distribute

    replicas = strategy.num_replicas_in_sync
    config = Config(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_MIN_DIM=args.size, IMAGE_MAX_DIM=args.size,
                    IMAGES_PER_GPU=1, FREEZE_BACKBONE_STAGES=2,
                    ROI_ALIGN_IMPLEMENTATION=(args.roi_align or ["auto"])[0])
    if mode == "multi-worker":
        one = _batch(1, args.size, seed=distribute.worker_info(strategy).task_index)
        data = strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensors(one).repeat())
    else:
        data = tf.data.Dataset.from_tensors(_batch(replicas, args.size)).repeat()
    with strategy.scope():
        model = MaskRCNN(config)
        model.compile()
    distribute.enable_multi_worker_fit(model, strategy)
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    model.fit(data, epochs=1, steps_per_epoch=args.steps + 2, verbose=0, callbacks=[Stamp()])
    step = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # after trace + first step
    print("RESULT " + json.dumps({"replicas": replicas, "s_per_step": step}), flush=True)


def _run_children(argv: list[str], n: int, timeout: float) -> list[dict]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    ports = []
    for _ in range(n):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    procs = []
    for i in range(n):
        if n > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                           "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    results = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"benchmark child failed:\n{out[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return results


def scaling(args: argparse.Namespace) -> None:
    base = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--backbone", args.backbone,
            "--size", str(args.size)] + (["--roi-align", args.roi_align[0]] if args.roi_align else [])
    rows = []
    for mode, label, n in (("one", "1 replica", 1), ("mirrored", "2 replicas, MirroredStrategy, 2 logical CPUs", 1),
                           ("multi-worker", "2 workers, MultiWorkerMirroredStrategy, localhost", 2)):
        results = _run_children(base + ["--child", mode], n, timeout=1800)
        step = max(r["s_per_step"] for r in results)  # a step ends when the slowest worker's does
        replicas = results[0]["replicas"]
        rows.append((label, replicas, step, replicas / step))
    single = rows[0][3]
    print(f"{args.backbone}-FPN, {args.size}x{args.size}, 1 image per replica, {args.steps} timed steps "
          f"({os.cpu_count()} CPU cores shared by all replicas: only the overheads show)")
    print(f"{'setting':52s} {'replicas':>8s} {'s/step':>8s} {'images/s':>9s} {'efficiency':>10s}")
    for label, replicas, step, ips in rows:
        print(f"{label:52s} {replicas:8d} {step:8.2f} {ips:9.3f} {ips / (replicas * single):10.2f}")


# ----- float32 vs half precision -----------------------------------------------------------
def precision(args: argparse.Namespace) -> None:
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN

    impl = args.roi_align[0] if args.roi_align else "auto"
    batch = _batch(2, args.size)
    data = iter(tf.data.Dataset.from_tensors(batch).repeat())
    steps, initial = {}, None
    for name in args.precision:
        config = Config(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_MIN_DIM=args.size, IMAGE_MAX_DIM=args.size,
                        IMAGES_PER_GPU=2, ROI_ALIGN_IMPLEMENTATION=impl, FREEZE_BACKBONE_STAGES=2,
                        MIXED_PRECISION=None if name == "float32" else name)
        model = MaskRCNN(config)
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        model.compile()
        model.make_train_function()
        model.train_function(data)  # trace + first step
        steps[name] = model.train_function
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t = time.perf_counter()
            float(step(data)["loss"])
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times[args.precision[0]])
    print(f"{args.backbone}-FPN, 2 images of {args.size}x{args.size}, RoIAlign {impl}, "
          f"{args.steps} interleaved steps each (median)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:9s} {median:7.2f} s/step  {base / median:5.2f}x vs {args.precision[0]}  "
              f"{[round(v, 2) for v in values]}")


if __name__ == "__main__":
    main()
