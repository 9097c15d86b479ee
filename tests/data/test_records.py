"""TFRecord shards: written from any Dataset, read with TF ops only, equal to the Python path."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from mrcnn import cli
from mrcnn.data import RecordDataset, build_dataset
from mrcnn.data import records as records_lib
from mrcnn.data.coco import CocoDataset
from mrcnn.data.loader import load_sample
from mrcnn.data.records_write import encode_example, write_records
from tests.conftest import TinyConfig
from tests.data.test_coco import TINY_COCO, needs_tiny_coco

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "emu"}]


def _polygon(rng: np.random.Generator, h: int, w: int) -> list[float]:
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    r = rng.uniform(0.1, 0.3) * min(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in pts.ravel()]


def make_coco(root: Path, n: int = 7, seed: int = 0) -> tuple[Path, Path]:
    """A COCO-format dataset: JPEG and PNG photos-like images of several sizes (one portrait,
    one without annotations), polygons with fractional bboxes, one crowd RLE per few images,
    more instances than TinyConfig.MAX_GT_INSTANCES in one image."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    sizes = [(96, 128), (120, 90), (64, 64), (100, 150), (80, 112), (128, 96), (72, 100)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([(xx * 2 + i * 10) % 256, (yy * 3) % 256, rng.integers(0, 256, (h, w))],
                          axis=-1).astype(np.uint8)
        name = f"img{i}.{'jpg' if i % 2 == 0 else 'png'}"
        Image.fromarray(pixels).save(image_dir / name, quality=90)
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        count = 0 if i == 2 else (9 if i == 3 else int(rng.integers(1, 5)))
        for k in range(count):
            poly = _polygon(rng, h, w)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": CATEGORIES[k % 3]["id"],
                         "segmentation": [poly], "area": float(mask_utils.area(rle)),
                         "bbox": [x + 0.13, y + 0.27, bw - 0.31, bh - 0.09], "iscrowd": 0})
        if i % 3 == 1:
            m = np.zeros((h, w), np.uint8, order="F")
            m[h // 3: h // 2, w // 4: w // 2] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": 7, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [w // 4, h // 3, w // 4, h // 2 - h // 3],
                         "iscrowd": 1})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path, image_dir


class RecordConfig(TinyConfig):
    NUM_CLASSES = 4
    IMAGE_RESIZE_MODE = "square"
    TRAIN_PADDING = "square"
    TRAIN_FLIP_PROB = 0.5


class FullMaskConfig(RecordConfig):
    MINI_MASK_SHAPE = None
    TRAIN_PADDING = "batch"


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[CocoDataset, Path]:
    root = tmp_path_factory.mktemp("coco")
    ann, images = make_coco(root)
    dataset = CocoDataset(ann, images)
    summary = write_records(dataset, root / "records", num_shards=3, progress=False)
    assert summary.images == 7 and len(summary.shards) == 3
    return dataset, root / "records"


def _decoded(records: RecordDataset, config) -> list[tuple[np.ndarray, ...]]:
    decode = records.decode_fn(config)
    stream = records.records(shuffle=False, repeat=False, seed=0).map(decode)
    return [tuple(t.numpy() for t in sample) for sample in stream]


@pytest.mark.parametrize("config_cls", [RecordConfig, FullMaskConfig])
def test_records_decode_to_the_loaders_samples(coco, config_cls):
    dataset, folder = coco
    config = config_cls()
    samples = _decoded(RecordDataset(folder), config)
    assert len(samples) == len(dataset.image_ids)  # unshuffled reading restores the writer's order
    for image_id, (image, boxes, class_ids, masks, _) in zip(dataset.image_ids, samples):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the 9-instance image is truncated
            want = load_sample(dataset, image_id, config)
        np.testing.assert_array_equal(image, want["image"])  # JPEG kept bit for bit, PNG lossless
        np.testing.assert_array_equal(boxes, want["boxes"])  # exact, not just close
        np.testing.assert_array_equal(class_ids, want["class_ids"])
        np.testing.assert_array_equal(masks, want["masks"])  # masks exact after the PNG round trip
    # The crowd regions arrive with negative ids, the 9-instance image truncated to MAX_GT.
    assert any((s[2] < 0).any() for s in samples)
    assert samples[3][2].shape[0] == config.MAX_GT_INSTANCES


def _batches(ds: tf.data.Dataset, steps: int) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds.take(steps)]


@pytest.mark.parametrize("config_cls", [RecordConfig, FullMaskConfig])
def test_training_batches_equal_the_python_path(coco, config_cls):
    """Same order (shuffle off), same seed: flips, resize, padding and masks agree exactly."""
    dataset, folder = coco
    config = config_cls()
    kwargs = dict(training=True, shuffle=False, seed=5, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        python = _batches(build_dataset(dataset, config, **kwargs), 6)
    records = _batches(build_dataset(RecordDataset(folder), config, **kwargs), 6)
    for a, b in zip(python, records):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_records_pipeline_has_no_python_in_it(coco):
    dataset, folder = coco
    config = RecordConfig()

    def graph(ds: tf.data.Dataset) -> str:
        return str(ds._as_serialized_graph().numpy())  # noqa: SLF001 - the dataset's GraphDef

    assert "PyFunc" in graph(build_dataset(dataset, config, training=True, seed=1))
    assert "PyFunc" not in graph(build_dataset(RecordDataset(folder), config, training=True, seed=1))


def test_resume_skips_to_the_same_batches(coco):
    """Shuffled (files and records), seeded: starting at element 4 gives the full stream's batches 2.."""
    _, folder = coco
    config = RecordConfig()
    full = _batches(build_dataset(RecordDataset(folder), config, training=True, seed=9, batch_size=2), 8)
    resumed = _batches(build_dataset(RecordDataset(folder), config, training=True, seed=9, batch_size=2,
                                     start_element=4), 6)
    for a, b in zip(full[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other = _batches(build_dataset(RecordDataset(folder), config, training=True, seed=10, batch_size=2), 8)
    assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(full, other))


def test_an_epoch_reads_every_record_once_and_shards_split_by_file(coco):
    dataset, folder = coco
    config = RecordConfig()
    records = RecordDataset(folder)
    assert records.num_images == 7 and len(records.files) == 3
    widths = sorted(int(s[0].shape[1]) for s in _decoded(records, config))
    assert widths == sorted(int(dataset.image_info[i]["width"]) for i in dataset.image_ids)
    parts = [records.shard(2, i) for i in range(2)]
    assert parts[0].files == records.files[0::2] and parts[1].files == records.files[1::2]
    assert sum(p.num_images for p in parts) == 7
    with pytest.raises(ValueError, match="cannot be split over 4 workers; write at least 4 shards"):
        records.shard(4, 0)


def _od_api_example(pixels: np.ndarray, masks: list[np.ndarray], category_ids: list[int]) -> bytes:
    """An example as the TF OD API's create_coco_tf_record.py writes it (JPEG, COCO category ids,
    normalised bbox, PNG masks, area, source id; no keypoints)."""
    import io

    h, w = pixels.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    boxes = [np.argwhere(m) for m in masks]
    png = []
    for m in masks:
        b = io.BytesIO()
        Image.fromarray(m.astype(np.uint8)).save(b, format="PNG")
        png.append(b.getvalue())

    def f(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def s(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feats = {
        "image/height": i([h]), "image/width": i([w]), "image/filename": s([b"x.jpg"]),
        "image/source_id": s([b"42"]), "image/key/sha256": s([b"0"]), "image/encoded": s([buf.getvalue()]),
        "image/format": s([b"jpeg"]),
        "image/object/bbox/xmin": f([b[:, 1].min() / w for b in boxes]),
        "image/object/bbox/xmax": f([(b[:, 1].max() + 1) / w for b in boxes]),
        "image/object/bbox/ymin": f([b[:, 0].min() / h for b in boxes]),
        "image/object/bbox/ymax": f([(b[:, 0].max() + 1) / h for b in boxes]),
        "image/object/class/text": s([b"c"] * len(masks)), "image/object/class/label": i(category_ids),
        "image/object/is_crowd": i([0] * len(masks)), "image/object/area": f([float(m.sum()) for m in masks]),
        "image/object/mask": s(png),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_reads_tf_od_api_files_with_a_label_map(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    masks = [np.zeros((40, 60), bool) for _ in range(3)]
    masks[0][5:20, 10:30] = True
    masks[1][22:38, 35:59] = True
    masks[2][1:4, 1:4] = True
    path = tmp_path / "coco_train.record-00000-of-00001"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(_od_api_example(pixels, masks, [18, 90, 5]))
    config = FullMaskConfig()
    # COCO category 18 -> class 1, 90 -> class 3; 5 is not in the map and is dropped.
    records = RecordDataset(str(tmp_path / "coco_train.record-*"), label_map={18: 1, 90: 3})
    (image, boxes, class_ids, got, _), = _decoded(records, config)
    assert image.shape == (40, 60, 3)
    np.testing.assert_array_equal(class_ids, [1, 3])
    np.testing.assert_array_equal(got, np.stack(masks[:2]).astype(np.uint8))
    np.testing.assert_allclose(boxes, [[5, 10, 20, 30], [22, 35, 38, 59]], atol=1e-4)


def test_records_without_masks_are_refused_by_name(tmp_path):
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[4])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[4])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
    }))
    path = tmp_path / "boxes.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(example.SerializeToString())
    with pytest.raises(ValueError, match=r"boxes.tfrecord: the first record has objects but no PNG masks"):
        RecordDataset(str(path))
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        RecordDataset(str(tmp_path / "nothing-*"))


def test_bad_sample_names_the_image(tmp_path):
    ann, images = make_coco(tmp_path, n=3)
    (images / "img1.png").write_bytes(b"not an image")
    dataset = CocoDataset(ann, images)
    summary = write_records(dataset, tmp_path / "skip", skip_bad=True, progress=False)
    assert summary.images == 2 and [i for i, _ in summary.skipped] == [1]
    with pytest.raises(ValueError, match=r"bad sample: image id 1 \(path '.*img1.png'\)"):
        write_records(dataset, tmp_path / "fail", progress=False)
    assert not list((tmp_path / "fail").glob("*.tfrecord*"))  # nothing half-written left behind
    with pytest.raises(FileExistsError, match="already holds records"):
        write_records(dataset, tmp_path / "skip", skip_bad=True, progress=False)


def test_cli_convert_then_records_dataset(tmp_path, capsys):
    ann, images = make_coco(tmp_path, n=4)
    out = tmp_path / "rec"
    assert cli.main(["data", "convert", "--dataset", "coco", "--annotations", str(ann), "--images",
                     str(images), "--out", str(out), "--shards", "2"]) == 0
    text = capsys.readouterr().out
    assert "wrote 4 images" in text and "2 shard(s)" in text
    meta = json.loads((out / "records.json").read_text())
    assert meta["num_images"] == 4 and meta["class_names"] == ["BG", "cat", "dog", "emu"]
    args = cli.build_parser().parse_args(["train", "--config", "x:y", "--dataset", f"records:{out}",
                                          "--out", str(tmp_path / "run")])
    records = cli.load_dataset(args, "train")
    assert isinstance(records, RecordDataset) and records.num_images == 4
    assert cli.main(["data", "convert", "--dataset", "coco", "--annotations", str(ann), "--images",
                     str(images), "--out", str(out)]) == 2
    assert "already holds records" in capsys.readouterr().err


def test_training_from_records_gives_the_python_paths_losses(coco):
    """Three optimizer steps from the same start: the losses of both inputs agree."""
    import keras

    from mrcnn.model import MaskRCNN

    dataset, folder = coco
    config = RecordConfig()
    losses = {}
    for name, source in (("python", dataset), ("records", RecordDataset(folder))):
        keras.utils.set_random_seed(0)
        model = MaskRCNN(config)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        ds = build_dataset(source, config, training=True, shuffle=False, seed=2)
        history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)
        losses[name] = history.history["loss"][0]
    np.testing.assert_allclose(losses["records"], losses["python"], rtol=1e-5)


@needs_tiny_coco
def test_tiny_coco_records_equal_the_loader():
    """Real COCO photos with polygons and crowd RLEs: every sample decodes to the loader's."""
    dataset = CocoDataset(TINY_COCO / "annotations" / "instances_train2017.json", TINY_COCO / "train2017")

    class Cfg(RecordConfig):
        NUM_CLASSES = dataset.num_classes
        MAX_GT_INSTANCES = 100

    config = Cfg()
    from mrcnn.data.records_write import ConvertSummary

    summary = ConvertSummary(out_dir="", shards=[])
    decode = records_lib._make_decoder(config, None)
    for image_id in dataset.image_ids[:20]:
        serialized = encode_example(dataset, image_id, summary)
        got = [t.numpy() for t in decode(tf.constant(serialized))]
        want = load_sample(dataset, image_id, config)
        np.testing.assert_array_equal(got[0], want["image"])
        np.testing.assert_array_equal(got[1], want["boxes"])
        np.testing.assert_array_equal(got[2], want["class_ids"])
        np.testing.assert_array_equal(got[3], want["masks"])
    assert summary.source_bytes_kept == 20  # the JPEGs are stored as they are


EXIT_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from mrcnn.configs import TorchvisionCOCO
from mrcnn.data import build_dataset
from mrcnn.data.coco import CocoDataset
root = sys.argv[1]
ds = CocoDataset(root + "/annotations/instances_train2017.json", root + "/train2017")
it = iter(build_dataset(ds, TorchvisionCOCO(IMAGES_PER_GPU=2), training=True, seed=0))
next(it)
print("iterated", flush=True)
"""


@needs_tiny_coco
def test_interpreter_exits_with_a_python_path_iterator_alive():
    """The issue's hang: a script leaves build_dataset's iterator alive and exits, with two cores
    (several load_instance calls in flight). It hung 3 times out of 3 before the exit guard."""
    import os
    import subprocess
    import sys

    cores = sorted(os.sched_getaffinity(0))[:2]
    cmd = [sys.executable, "-c", EXIT_SCRIPT, str(TINY_COCO)]
    if len(cores) == 2 and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)  # generous: only a hang gets near it
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail("the interpreter did not exit with a build_dataset iterator alive")
    assert "iterated" in out and proc.returncode == 0
