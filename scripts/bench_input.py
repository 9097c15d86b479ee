"""Input pipeline throughput: the Python path vs TFRecords, on 1 and on 2 cores, side by side.

    python scripts/bench_input.py [--data ../shared/datasets/tiny_coco] [--images 200] [--cores 1 2]

Real COCO photos with polygon masks (tiny_coco), ``TorchvisionCOCO`` at 800/1333,
training mode (flip, mini masks, batches padded by aspect-ratio group), batch 2.
The records are written once into a temporary folder (``mrcnn data convert``'s
writer, 4 shards). Each measurement runs in its own process pinned with
``taskset -c 0`` or ``-c 0,1`` (TensorFlow sizes its thread pools from the
affinity), pulls ``--warmup`` batches, then times ``--images`` images.

Prints images/s per path and core count, the 1 -> 2 core scaling of each path
and the records / Python ratio at the largest core count, with the issue's
goals (records x1.8 from 1 to 2 cores, records >= 2x Python at 2 cores).
Numbers depend on what else runs on the machine: say so when reporting them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "tiny_coco"


def _dataset(data: Path):
    from mrcnn.data.coco import CocoDataset

    return CocoDataset(data / "annotations" / "instances_train2017.json", data / "train2017")


def _config():
    from mrcnn.configs import TorchvisionCOCO

    # The COCO training recipe's input: 800/1333, pad each batch to its largest image.
    return TorchvisionCOCO(IMAGES_PER_GPU=2, TRAIN_PADDING="batch")


def measure(path: str, data: Path, records: str, images: int, warmup: int) -> dict:
    """Images/s of one pipeline in this process (called in a pinned subprocess)."""
    import warnings

    warnings.simplefilter("ignore")
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.data.records import RecordDataset

    config = _config()
    source = _dataset(data) if path == "python" else RecordDataset(records)
    ds = build_dataset(source, config, training=True, seed=0)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    seen = 0
    start = time.perf_counter()
    while seen < images:
        batch = next(it)
        seen += int(batch["images"].shape[0])
    elapsed = time.perf_counter() - start
    return {"path": path, "images": seen, "seconds": elapsed, "images_per_s": seen / elapsed,
            "affinity": sorted(os.sched_getaffinity(0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="tiny_coco folder (default ../shared/datasets)")
    parser.add_argument("--images", type=int, default=200, help="images timed per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="batches pulled before timing")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts (taskset)")
    parser.add_argument("--_measure", nargs=2, metavar=("PATH", "RECORDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure[0], args.data, args._measure[1], args.images, args.warmup)))
        return
    if not args.data.is_dir():
        raise SystemExit(f"tiny_coco not found at {args.data} (see ../shared/datasets/README.md; or pass --data)")
    available = sorted(os.sched_getaffinity(0))
    if max(args.cores) > len(available):
        raise SystemExit(f"--cores {max(args.cores)} but only {len(available)} core(s) are available")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); it pins each measurement to N cores")

    from mrcnn.data.records_write import write_records

    tmp = tempfile.mkdtemp(prefix="bench_input_")
    try:
        summary = write_records(_dataset(args.data), os.path.join(tmp, "records"), num_shards=4)
        print(summary.text(), flush=True)
        results: dict[tuple[str, int], float] = {}
        for cores in args.cores:
            cpus = ",".join(str(c) for c in available[:cores])
            for path in ("python", "records"):
                cmd = ["taskset", "-c", cpus, sys.executable, __file__, "--data", str(args.data), "--images",
                       str(args.images), "--warmup", str(args.warmup), "--_measure", path,
                       os.path.join(tmp, "records")]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
                row = json.loads(out.strip().splitlines()[-1])
                results[(path, cores)] = row["images_per_s"]
                print(f"  {path:8s} {cores} core(s): {row['images_per_s']:6.1f} img/s "
                      f"({row['images']} images in {row['seconds']:.1f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lo, hi = min(args.cores), max(args.cores)
    print(f"\nTorchvisionCOCO 800/1333 training input, batch 2, {args.images} images per cell (img/s)")
    print(f"{'cores':>6s} {'python':>8s} {'records':>8s} {'records/python':>15s}")
    for cores in args.cores:
        py, rec = results[("python", cores)], results[("records", cores)]
        print(f"{cores:6d} {py:8.1f} {rec:8.1f} {rec / py:14.2f}x")
    if hi > lo:
        for path in ("python", "records"):
            print(f"{path} scaling {lo} -> {hi} cores: x{results[(path, hi)] / results[(path, lo)]:.2f}")
        ok_scale = results[("records", hi)] / results[("records", lo)] >= 1.8
        ok_speed = results[("records", hi)] / results[("python", hi)] >= 2.0
        print(f"goal records x1.8 from {lo} to {hi} cores: {'met' if ok_scale else 'NOT met'}; "
              f"goal records >= 2x python at {hi} cores: {'met' if ok_speed else 'NOT met'}")


if __name__ == "__main__":
    main()
