"""The README's "Use it on your own data" path, executed as a user copies it: the snippet
between ``<!-- own-data:start -->`` and ``<!-- own-data:end -->`` runs on labelme files
made from generated shapes (fast, a 128 px plan of a few steps) and, unchanged, on 10 real
nuclei images (slow: segm AP50 >= 0.2 on 10 held-out images after its 60 steps).
Plus the polygon helper it uses, ``mrcnn.data.polygons_to_mask``."""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from skimage import draw, io

from mrcnn.cli import mask_to_polygons
from mrcnn.data import polygons_to_mask, polygons_to_masks

ROOT = Path(__file__).resolve().parents[2]
# ../shared/datasets beside the project (MRCNN_SHARED_DATASETS overrides it, e.g. in a worktree).
SHARED = Path(os.environ.get("MRCNN_SHARED_DATASETS") or ROOT.parent / "shared" / "datasets")
NUCLEI = SHARED / "nuclei" / "stage1_train"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- own-data:start -->(.*?)<!-- own-data:end -->", text, re.S)
    assert section, "README.md lost its own-data markers"
    (code,) = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    return code


def write_labelme(folder: Path, name: str, image: np.ndarray, masks: np.ndarray, labels: list[str]) -> None:
    """One image and its labelme JSON (polygons traced on pixel edges by mask_to_polygons)."""
    folder.mkdir(parents=True, exist_ok=True)
    io.imsave(folder / f"{name}.png", image, check_contrast=False)
    shapes = []
    for k, label in enumerate(labels):
        for poly in mask_to_polygons(masks[:, :, k], tolerance=0.0):
            shapes.append({"label": label, "points": np.reshape(poly, (-1, 2)).tolist(), "shape_type": "polygon"})
    doc = {"imagePath": f"{name}.png", "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1]),
           "shapes": shapes}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def run_snippet(code: str, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, "README.md#own-data", "exec"), namespace)  # noqa: S102 - the README's code
    return namespace


def replace_once(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"README snippet no longer has {old!r}"
    return code.replace(old, new)


# ----- polygons_to_mask ----------------------------------------------------------------------
def test_polygons_to_mask_pixel_edges_and_forms():
    flat = [10, 5, 30, 5, 30, 15, 10, 15]  # COCO flat, on pixel edges
    mask = polygons_to_mask(flat, 40, 60)
    assert mask.dtype == bool and mask.shape == (40, 60) and mask.sum() == 200
    assert mask[5:15, 10:30].all()
    points = np.reshape(flat, (-1, 2))
    assert np.array_equal(polygons_to_mask(points.tolist(), 40, 60), mask)  # [(x, y), ...]
    assert np.array_equal(polygons_to_mask(points, 40, 60), mask)  # float array [K, 2]
    # A COCO segmentation list is the union of its parts.
    two = polygons_to_mask([flat, [40, 20, 50, 20, 50, 30]], 40, 60)
    assert two.sum() > 200 and np.array_equal(two[:, :35], mask[:, :35])
    # Clipped at the image border.
    assert polygons_to_mask([-5, -5, 5, -5, 5, 5, -5, 5], 10, 10).sum() == 25
    stacked = polygons_to_masks([flat, flat], 40, 60)
    assert stacked.shape == (40, 60, 2) and stacked.sum() == 400


def test_polygons_to_mask_inverts_mask_to_polygons():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = np.zeros((64, 80), bool)
        for _ in range(3):
            r, c = rng.integers(0, 64), rng.integers(0, 80)
            mask[draw.ellipse(r, c, rng.integers(3, 15), rng.integers(3, 15), shape=mask.shape)] = True
        back = polygons_to_mask(mask_to_polygons(mask, tolerance=0.0), 64, 80)
        assert np.array_equal(back, mask)


@pytest.mark.parametrize("bad, words", [
    ([1, 2, 3, 4, 5], "5 numbers"), ([0, 0, 1, 1], "2 point"), ([[0, 0], [1, 1], [np.nan, 2]], "NaN"),
    ("0 0 1 1", "list or array"),
])
def test_polygons_to_mask_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        polygons_to_mask(bad, 10, 10)


# ----- the README snippet --------------------------------------------------------------------
def test_readme_own_data_snippet_runs_on_generated_labelme_files(tmp_path, monkeypatch):
    from mrcnn.data.synthetic import ShapesDataset

    shapes = ShapesDataset()
    shapes.load_shapes(6, seed=3)
    for i in shapes.image_ids:
        masks, class_ids = shapes.load_mask(i)
        write_labelme(tmp_path / "mydata" / ("train" if i < 4 else "val"), f"img{i}", shapes.load_image(i),
                      masks, ["nucleus"] * len(class_ids))
    code = readme_snippet()
    # The only changes: a 128 px plan of 4 steps instead of 256 px and 60 steps (CPU test budget).
    code = replace_once(code, "IMAGE_MIN_DIM = IMAGE_MAX_DIM = 256", "IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128")
    code = replace_once(code, "STEPS_PER_EPOCH = 20", "STEPS_PER_EPOCH = 2")
    code = replace_once(code, "TOTAL_STEPS = 60", "TOTAL_STEPS = 4")
    ns = run_snippet(code, tmp_path, monkeypatch)
    train, val, metrics = ns["train"], ns["val"], ns["metrics"]
    assert len(train.image_ids) == 4 and len(val.image_ids) == 2
    masks, class_ids = train.load_mask(0)
    ref_masks, _ = shapes.load_mask(0)
    assert np.array_equal(masks.any(-1), ref_masks.any(-1))  # the polygons gave the masks back
    assert set(class_ids.tolist()) == {1}
    assert set(metrics) >= {"bbox", "segm"} and 0.0 <= metrics["segm"]["AP50"] <= 1.0
    assert int(ns["model"].optimizer.iterations.numpy()) == 4
    run = tmp_path / "runs" / "nuclei"
    assert (run / "val0.png").is_file() and (run / "backup").is_dir()
    assert io.imread(run / "val0.png").shape[:2] == val.load_image(0).shape[:2]


def _nuclei_ids() -> list[str]:
    """256x256 nuclei images, in a fixed order by a hash of the id (deterministic split)."""
    ids = []
    for folder in sorted(NUCLEI.iterdir()):
        image = folder / "images" / f"{folder.name}.png"
        if image.is_file() and io.imread(image).shape[:2] == (256, 256):
            ids.append(folder.name)
    return sorted(ids, key=lambda s: zlib.crc32(s.encode()))


@pytest.mark.slow
@pytest.mark.skipif(not NUCLEI.is_dir(), reason="needs ../shared/datasets/nuclei (the 2018 Data Science Bowl)")
def test_readme_own_data_snippet_learns_nuclei_from_scratch(tmp_path, monkeypatch):
    """The snippet as written on 10 training + 10 held-out nuclei images of 256 x 256."""
    ids = _nuclei_ids()[:20]
    for k, image_id in enumerate(ids):
        folder = NUCLEI / image_id
        image = io.imread(folder / "images" / f"{image_id}.png")[:, :, :3]
        masks = np.stack([io.imread(p) > 0 for p in sorted((folder / "masks").glob("*.png"))], axis=-1)
        write_labelme(tmp_path / "mydata" / ("train" if k < 10 else "val"), image_id, image, masks,
                      ["nucleus"] * masks.shape[-1])
    ns = run_snippet(readme_snippet(), tmp_path, monkeypatch)
    metrics = ns["metrics"]
    print(ns["format_metrics"](metrics))
    assert int(ns["model"].optimizer.iterations.numpy()) == 60
    assert metrics["segm"]["AP50"] >= 0.2, metrics["segm"]
    assert os.path.isfile(tmp_path / "runs" / "nuclei" / "val0.png")
