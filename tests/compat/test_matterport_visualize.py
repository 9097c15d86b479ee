"""matterport's display_instances / display_top_masks / display_images (the [viz] extra):
they draw what draw_instances draws, write a file only when asked, and leave no figure open."""

from __future__ import annotations

import os

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")  # in the test extra: runs on CI
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from mrcnn import visualize  # noqa: E402


def _instances():
    image = np.full((64, 80, 3), 40, np.uint8)
    masks = np.zeros((64, 80, 2), bool)
    masks[10:30, 15:45, 0] = True
    masks[40:60, 50:70, 1] = True
    boxes = np.array([[10, 15, 30, 45], [40, 50, 60, 70]], np.float32)
    return image, boxes, masks, np.array([1, 2]), ["BG", "cat", "dog"], np.array([0.9, 0.6])


def test_display_instances_draws_and_writes_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image, boxes, masks, class_ids, names, scores = _instances()
    drawn = visualize.display_instances(image, boxes, masks, class_ids, names, scores)
    np.testing.assert_array_equal(drawn, visualize.draw_instances(image, boxes, masks, class_ids, names, scores))
    assert os.listdir(tmp_path) == [] and plt.get_fignums() == []

    out = tmp_path / "figs" / "instances.png"
    visualize.display_instances(image, boxes, masks, class_ids, names, scores, title="two", save_path=out)
    assert Image.open(out).size[0] > 100 and plt.get_fignums() == []
    # matterport's float colours in [0, 1]; show_mask=False leaves the mask interiors alone.
    no_mask = visualize.display_instances(image, boxes, masks, class_ids, names, scores, show_mask=False,
                                          colors=[(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)])
    assert (no_mask[20, 30] == image[20, 30]).all()
    assert (no_mask[29, 30] == (255, 0, 0)).all()  # the box edge in the given colour


def test_display_instances_on_a_given_axis_keeps_the_figure(tmp_path):
    image, boxes, masks, class_ids, names, scores = _instances()
    fig, ax = plt.subplots(1)
    visualize.display_instances(image, boxes, masks, class_ids, names, scores, ax=ax)
    assert plt.fignum_exists(fig.number) and len(ax.images) == 1
    plt.close(fig)


def test_display_top_masks_and_images_save(tmp_path):
    image, _, masks, class_ids, names, _ = _instances()
    visualize.display_top_masks(image, masks, class_ids, names, limit=2, save_path=tmp_path / "top.png")
    visualize.display_images([image, image], titles=["a", "b"], cols=2, save_path=tmp_path / "grid.png")
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "top.png"] and plt.get_fignums() == []
