"""Inference options measured side by side: sizes, batches, mask gating, tiles, XLA.

    python scripts/bench_detect.py [--backbone resnet50] [--runs 3] [--parts sizes,batch,masks,xla,tiles]

One model (random weights, 91 classes, torchvision's 800/1333 resize), one
process, interleaved where two settings are compared:

- sizes: 20 images of 20 different sizes, the first call of each size vs the
  same images again (steady state): ``detect()`` traces one graph for all sizes
  (a shape-relaxed signature), so only the first call of all pays for tracing;
  what remains per new size is oneDNN's primitive set-up.
- batch: images/s at 800x1216 for ``batch_size`` 1, 2 and 4.
- masks: time per image with DETECTION_MASK_MIN_SCORE at 0 and at the score
  quantiles that leave half and a tenth of the detections with a mask (random
  weights give every detection a score near 1/91, so fixed cut-offs like 0.3
  would leave none: the quantiles stand in for them).
- xla: backbone + FPN with and without ``jit_compile``.
- tiles: a 2000x3000 image by 800-pixel tiles (overlap 128) vs the same image
  resized into one 800x1333 pass, and the peak RSS of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _time(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", default="sizes,batch,masks,xla,tiles")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    import numpy as np
    import tensorflow as tf

    from mrcnn import Config, MaskRCNN

    rng = np.random.default_rng(0)
    base = dict(NUM_CLASSES=91, BACKBONE=args.backbone, IMAGE_RESIZE_MODE="pad32", DETECTION_MIN_CONFIDENCE=0.0)
    model = MaskRCNN(Config(**base))
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"{args.backbone}-FPN, 91 classes, random weights, {threads} threads, {args.runs} runs")

    if "sizes" in parts:
        sizes = [(int(h), int(w)) for h, w in zip(rng.integers(300, 700, 20), rng.integers(300, 700, 20))]
        images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        first: list[float] = []
        for image in images:
            first += _time(lambda image=image: model.detect([image]), 1)
        steady = []
        for image in images:
            steady += _time(lambda image=image: model.detect([image]), 1)
        print(f"[sizes] 20 sizes in 300..700 px: first call {first[0]:.1f} s (tracing), next 19 new sizes "
              f"median {statistics.median(first[1:]):.2f} s; the same 20 again median "
              f"{statistics.median(steady):.2f} s; graphs traced: "
              f"{model._inference_function().experimental_get_tracing_count()}")

    if "batch" in parts:
        images = [rng.integers(0, 255, (800, 1216, 3), dtype=np.uint8) for _ in range(4)]
        for n in (1, 2, 4):
            model.detect(images[:n], batch_size=n)
        per = {n: [] for n in (1, 2, 4)}
        for _ in range(args.runs):
            for n in (1, 2, 4):
                per[n] += _time(lambda n=n: model.detect(images, batch_size=n), 1)
        for n in (1, 2, 4):
            print(f"[batch] batch_size {n}: {4 / statistics.median(per[n]):.3f} images/s "
                  f"({statistics.median(per[n]) / 4:.2f} s/image)")

    if "masks" in parts:
        image = rng.integers(0, 255, (800, 1216, 3), dtype=np.uint8)
        scores = np.sort(model.detect([image])[0]["scores"])
        cuts = {"0 (all 100)": 0.0, "median (50)": float(scores[len(scores) // 2]),
                "90th pct (10)": float(scores[int(len(scores) * 0.9)])}
        gated = {}
        for name, cut in cuts.items():
            m = MaskRCNN(Config(**base, DETECTION_MASK_MIN_SCORE=cut))
            m.set_weights(model.get_weights())
            m.detect([image])
            gated[name] = m
        times = {name: [] for name in cuts}
        for _ in range(args.runs):
            for name, m in gated.items():
                times[name] += _time(lambda m=m: m.detect([image]), 1)
        for name in cuts:
            print(f"[masks] DETECTION_MASK_MIN_SCORE at {name}: {statistics.median(times[name]):.2f} s/image")
        del gated

    if "xla" in parts:
        x = tf.constant(rng.uniform(0, 255, (1, 800, 1216, 3)).astype(np.float32))
        sizes = tf.constant([[800, 1216]], tf.int32)
        plain = tf.function(lambda x, s: model.features(x, s, training=False))
        xla = tf.function(lambda x, s: model.features(x, s, training=False), jit_compile=True)
        for fn in (plain, xla):
            [f.numpy() for f in fn(x, sizes)]
        t_plain, t_xla = [], []
        for _ in range(args.runs):
            t_plain += _time(lambda: [f.numpy() for f in plain(x, sizes)], 1)
            t_xla += _time(lambda: [f.numpy() for f in xla(x, sizes)], 1)
        a, b = statistics.median(t_plain), statistics.median(t_xla)
        print(f"[xla] backbone+FPN 800x1216: oneDNN graph {a:.2f} s, jit_compile {b:.2f} s "
              f"({a / b:.2f}x)")

    if "tiles" in parts:
        image = rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t_one = _time(lambda: model.detect([image], mask_format="box"), 1)[0]
        t_tiles = _time(lambda: model.detect([image], mask_format="box", tile_size=800, tile_overlap=128), 1)[0]
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        from mrcnn.inference.tiling import tile_grid

        n = len(tile_grid(image.shape, 800, 128))
        print(f"[tiles] 2000x3000: one resized pass {t_one:.1f} s; {n} tiles of 800 px {t_tiles:.1f} s "
              f"({t_tiles / n:.2f} s/tile); peak RSS {rss1:.0f} MiB (before {rss0:.0f} MiB)")


if __name__ == "__main__":
    main()
