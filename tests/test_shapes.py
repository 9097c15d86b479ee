"""Synthetic shapes dataset: determinism and exact masks."""

from __future__ import annotations

import numpy as np

from mrcnn.data.synthetic import CLASS_NAMES, ShapesConfig, ShapesDataset


def make(count=6, seed=0, **kw):
    ds = ShapesDataset()
    ds.load_shapes(count, seed=seed, **kw)
    return ds


def test_config():
    c = ShapesConfig()
    assert c.NAME == "shapes" and c.NUM_CLASSES == 4
    assert c.IMAGE_SHAPE == (128, 128, 3)
    assert c.CLASS_NAMES == CLASS_NAMES == ("BG", "square", "circle", "triangle")


def test_deterministic_per_seed():
    a, b, other = make(seed=7), make(seed=7), make(seed=8)
    for i in a.image_ids:
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        ma, ca = a.load_mask(i)
        mb, cb = b.load_mask(i)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)
        # Loading twice from one dataset gives the same thing too.
        np.testing.assert_array_equal(a.load_image(i), a.load_image(i))
    assert any(
        not np.array_equal(a.load_image(i), other.load_image(i)) for i in a.image_ids
    )


def test_masks_are_exact():
    ds = make(count=20, seed=3, height=96, width=112)
    seen = set()
    for i in ds.image_ids:
        out = ds.render(i)
        image, masks, class_ids = out["image"], out["masks"], out["class_ids"]
        assert image.dtype == np.uint8 and image.shape == (96, 112, 3)
        assert masks.dtype == bool and masks.shape[:2] == (96, 112)
        n = masks.shape[2]
        assert 1 <= n <= 4 and class_ids.shape == (n,) and class_ids.dtype == np.int32
        assert set(class_ids.tolist()) <= {1, 2, 3}
        seen.update(class_ids.tolist())
        # Disjoint, non-empty, every mask pixel has its shape's colour ...
        assert masks.sum(axis=2).max() <= 1
        for k in range(n):
            assert masks[:, :, k].sum() > 0
            assert np.all(image[masks[:, :, k]] == out["colours"][k])
            # extent within 20-64 px
            rows = np.flatnonzero(masks[:, :, k].any(axis=1))
            cols = np.flatnonzero(masks[:, :, k].any(axis=0))
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 64
        # ... and everything else is background.
        assert np.all(image[~masks.any(axis=2)] == out["background"])
        # Shape colours are visibly different from the background.
        for colour in out["colours"]:
            assert np.abs(colour.astype(int) - out["background"].astype(int)).sum() >= 150
    assert seen == {1, 2, 3}


def test_square_mask_is_a_full_rectangle():
    ds = make(count=30, seed=11)
    for i in ds.image_ids:
        out = ds.render(i)
        for k in np.flatnonzero(out["class_ids"] == 1):
            m = out["masks"][:, :, k]
            rows = np.flatnonzero(m.any(axis=1))
            cols = np.flatnonzero(m.any(axis=0))
            full = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            if full.all():  # unoccluded square: a square of side 20-64
                assert rows.size == cols.size and 20 <= rows.size <= 64
                return
    raise AssertionError("no unoccluded square in 30 images")
