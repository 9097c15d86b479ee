"""Peak memory of ``mrcnn.evaluate.evaluate_dataset`` on large synthetic masks.

    .venv/bin/python scripts/bench_eval_memory.py [--images 200] [--size 1000] [--dets 100]

A synthetic dataset of ``--images`` images of ``--size`` x ``--size`` pixels
with 5 rectangular instances each, and a detector that returns ``--dets``
full-size boolean masks per image (rectangles near the ground truth, so the
RLEs are realistic). Prints the peak resident set size (``VmHWM``) of this
process before and after the evaluation, the growth per image, and one JSON
line for tools. The issue's bound: under 1.5 GB for 200 x 1000 x 1000 x 100.

``--keep-all`` instead keeps every result's full masks until the end (what
evaluate_dataset did before it streamed), for comparison at a small count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrcnn.data.dataset import Dataset  # noqa: E402
from mrcnn.evaluate import coco_metrics, dataset_to_coco, detections_to_coco, evaluate_dataset  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this address
    space. ``ru_maxrss`` survives ``execve``, so a process started from a large
    parent (a long pytest run) would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class BoxesDataset(Dataset):
    """Rectangles as instances; images are never decoded (load_image returns a small dummy)."""

    def __init__(self, n: int, size: int, instances: int = 5, seed: int = 0) -> None:
        super().__init__()
        self.size = size
        self.add_class("b", 1, "a")
        self.add_class("b", 2, "b")
        rng = np.random.default_rng(seed)
        self.boxes = {}
        for i in range(n):
            big = size // 5  # instances of 4-20 % of the side (40-200 px at 1000)
            y1 = rng.integers(0, size - big, instances)
            x1 = rng.integers(0, size - big, instances)
            hw = rng.integers(max(size // 25, 2), big, (instances, 2))
            self.boxes[i] = (np.stack([y1, x1, y1 + hw[:, 0], x1 + hw[:, 1]], 1), rng.integers(1, 3, instances))
            self.add_image("b", i, None, height=size, width=size)
        self.prepare()

    def load_image(self, image_id: int) -> np.ndarray:
        return np.zeros((self.size, self.size, 3), np.uint8)

    def load_mask(self, image_id: int):
        boxes, classes = self.boxes[image_id]
        masks = np.zeros((self.size, self.size, len(boxes)), bool)
        for k, (y1, x1, y2, x2) in enumerate(boxes):
            masks[y1:y2, x1:x2, k] = True
        return masks, classes.astype(np.int32)


def make_detector(dataset: BoxesDataset, dets: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    # In dataset order; cycling covers the padded copies of a short last batch (discarded).
    order = itertools.cycle(list(dataset.image_ids))

    def detect(images):
        out = []
        for _ in images:
            image_id = next(order)
            gt, classes = dataset.boxes[image_id]
            size = dataset.size
            masks = np.zeros((size, size, dets), bool)
            rois = np.zeros((dets, 4), np.float32)
            cls = np.zeros(dets, np.int32)
            for k in range(dets):
                j = k % len(gt)
                jitter = max(size // 125, 1)  # 8 px at 1000
                y1, x1, y2, x2 = np.clip(gt[j] + rng.integers(-jitter, jitter + 1, 4), 0, size)
                masks[y1:y2, x1:x2, k] = True
                rois[k] = (y1, x1, y2, x2)
                cls[k] = classes[j]
            out.append({"rois": rois, "class_ids": cls, "scores": rng.random(dets).astype(np.float32),
                        "masks": masks})
        return out

    return detect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--keep-all", action="store_true", help="old behaviour: keep every full mask")
    parser.add_argument("--json-out", help="also write the results file (streamed)")
    args = parser.parse_args(argv)

    dataset = BoxesDataset(args.images, args.size)
    detect = make_detector(dataset, args.dets)
    before = peak_rss_mb()
    start = time.perf_counter()
    if args.keep_all:
        results = []
        for i in dataset.image_ids:
            results.extend(detect([dataset.load_image(i)]))
        metrics = coco_metrics(dataset_to_coco(dataset), detections_to_coco(results, list(dataset.image_ids)))
    else:
        metrics = evaluate_dataset(detect, dataset, progress=False, json_out=args.json_out)
    seconds = time.perf_counter() - start
    after = peak_rss_mb()
    record = {
        "images": args.images, "size": args.size, "dets": args.dets, "keep_all": args.keep_all,
        "peak_rss_mb_before": round(before, 1), "peak_rss_mb": round(after, 1),
        "growth_mb_per_image": round((after - before) / args.images, 3), "seconds": round(seconds, 1),
        "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"],
    }
    print(f"peak RSS {after:.0f} MB (before evaluation {before:.0f} MB) for {args.images} images of "
          f"{args.size}x{args.size} with {args.dets} detections; {seconds:.0f} s; segm AP {record['segm_AP']:.3f}")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
