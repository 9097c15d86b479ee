"""Winograd F(4x4, 3x3) against TensorFlow's direct convolution, one 3x3 layer at a time.

    python scripts/bench_winograd.py [--rounds 7] [--threads 2]

For the 3x3 stride-1 convolutions of an R50-FPN training step at 512x512 with 2
images (FPN P2/P3 outputs and the RPN head at 128x128 and 64x64 with 256 channels,
ResNet stage 2 at 64x64 with 128, stage 3 at 32x32 with 256, the mask head on 40
RoIs of 14x14) and one 800x1344 P2 map: the median time of the forward pass and of
forward + backward (the gradients of the input and of the kernel, as in training),
direct and Winograd interleaved in one process (order alternating by round), their
ratio, and Winograd's largest error relative to the largest direct value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHAPES = [  # (name, input [B, H, W, C], output channels)
    ("FPN/RPN P2, 512 px", (2, 128, 128, 256), 256),
    ("FPN/RPN P3, 512 px", (2, 64, 64, 256), 256),
    ("ResNet stage 2", (2, 64, 64, 128), 128),
    ("ResNet stage 3", (2, 32, 32, 256), 256),
    ("mask head, 40 RoIs", (40, 14, 14, 256), 256),
    ("FPN/RPN P2, 800x1344", (2, 200, 336, 256), 256),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from mrcnn.ops.winograd import conv3x3_winograd

    def direct(x, kernel):
        return tf.nn.conv2d(x, kernel, 1, "SAME")

    print(f"TensorFlow {tf.__version__}, {args.threads} threads, median of {args.rounds} interleaved rounds; "
          "ratio = Winograd / direct (below 1: Winograd faster)")
    print(f"{'layer':<22} {'input':<18} {'fwd ms':>8} {'wino':>8} {'ratio':>6} {'fwd+bwd ms':>11} {'wino':>8} "
          f"{'ratio':>6} {'rel. error':>10}")
    rng = np.random.default_rng(0)
    for name, shape, filters in SHAPES:
        x = tf.constant(rng.normal(size=shape).astype(np.float32))
        kernel = tf.Variable(rng.normal(0, 0.02, (3, 3, shape[-1], filters)).astype(np.float32))
        weights = tf.constant(rng.normal(size=(*shape[:3], filters)).astype(np.float32))
        functions = {}
        for label, conv in (("direct", direct), ("winograd", conv3x3_winograd)):
            def forward(x, conv=conv, kernel=kernel):
                return conv(x, kernel)

            def backward(x, conv=conv, kernel=kernel, weights=weights):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(conv(x, kernel) * weights)
                return tape.gradient(loss, [x, kernel])

            functions[label] = (tf.function(forward), tf.function(backward))
        outputs = {label: fns[0](x).numpy() for label, fns in functions.items()}
        error = float(np.abs(outputs["winograd"] - outputs["direct"]).max() / np.abs(outputs["direct"]).max())
        for fns in functions.values():  # warm-up: tracing and oneDNN primitive caches
            [t.numpy() for t in fns[1](x)]
        times = {(label, kind): [] for label in functions for kind in (0, 1)}
        for r in range(args.rounds):
            for label in (list(functions) if r % 2 == 0 else list(functions)[::-1]):
                for kind in (0, 1):
                    start = time.perf_counter()
                    out = functions[label][kind](x)
                    tf.nest.map_structure(lambda t: t.numpy(), out)
                    times[(label, kind)].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1000.0 for k, v in times.items()}
        print(f"{name:<22} {str(list(shape)):<18} {med[('direct', 0)]:>8.1f} {med[('winograd', 0)]:>8.1f} "
              f"{med[('winograd', 0)] / med[('direct', 0)]:>6.2f} {med[('direct', 1)]:>11.1f} "
              f"{med[('winograd', 1)]:>8.1f} {med[('winograd', 1)] / med[('direct', 1)]:>6.2f} {error:>10.1e}")


if __name__ == "__main__":
    main()
