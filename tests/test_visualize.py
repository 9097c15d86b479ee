"""Drawing helpers change the pixels they should and leave the rest alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mrcnn import visualize


def test_draw_instances_changes_pixels_inside_box(tmp_path):
    image = np.full((64, 80, 3), 30, np.uint8)
    masks = np.zeros((64, 80, 2), bool)
    masks[10:30, 15:45, 0] = True
    masks[40:60, 50:70, 1] = True
    boxes = np.array([[10, 15, 30, 45], [40, 50, 60, 70]], np.float32)
    out = visualize.draw_instances(
        image, boxes, masks, np.array([1, -2]), ("BG", "cat", "dog"), scores=np.array([0.9, 0.5])
    )
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not np.shares_memory(out, image) and np.all(image == 30)
    changed = np.any(out != image, axis=2)
    # Mask interiors are tinted (away from the label in the top-left corner).
    assert changed[20:29, 30:44].all()
    assert changed[50:59, 60:69].all()
    # Box outline drawn on the box's edge pixels.
    assert changed[29, 15:45].all() and changed[10:30, 44].all()
    # Far from any instance nothing changes.
    assert not changed[:8, :].any() and not changed[:38, 72:].any()
    colors = visualize.instance_colors(2)
    np.testing.assert_array_equal(out[29, 30], colors[0])  # contour pixel, solid colour

    grid = visualize.draw_grid([image, out], cols=2, gap=4)
    assert grid.shape == (64, 164, 3)
    path = tmp_path / "sub" / "vis.png"
    visualize.save_image(path, grid)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_draw_instances_without_masks_or_instances():
    image = np.zeros((32, 32, 3), np.uint8)
    out = visualize.draw_instances(image, np.array([[4, 4, 20, 20]]), None, np.array([1]))
    assert out[4, 4:20].any() and not out[25:, 25:].any()
    empty = visualize.draw_instances(image, np.zeros((0, 4)), np.zeros((32, 32, 0), bool), np.zeros(0))
    np.testing.assert_array_equal(empty, image)


def test_draw_instances_min_score_draws_only_confident_instances():
    from mrcnn.visualize import draw_instances

    image = np.zeros((40, 40, 3), np.uint8)
    masks = np.zeros((40, 40, 3), bool)
    masks[2:10, 2:10, 0] = masks[15:25, 15:25, 1] = masks[30:38, 30:38, 2] = True
    boxes = np.array([[2, 2, 10, 10], [15, 15, 25, 25], [30, 30, 38, 38]], np.float32)
    scores = np.array([0.9, 0.3, 0.6])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    out = draw_instances(image, boxes, masks, np.array([1, 1, 1]), ["BG", "a"], scores, colors=colors,
                         min_score=0.5)
    assert out[5, 5].any() and out[34, 34].any()  # 0.9 and 0.6 drawn
    assert not out[20, 20].any()  # 0.3 not drawn, its colour not used
    everything = draw_instances(image, boxes, masks, np.array([1, 1, 1]), ["BG", "a"], scores, colors=colors)
    assert everything[20, 20].any()
    # The same with box-format crops + offsets (what `mrcnn detect` passes).
    crops = [masks[2:10, 2:10, 0], masks[15:25, 15:25, 1], masks[30:38, 30:38, 2]]
    offsets = np.array([[2, 2], [15, 15], [30, 30]])
    boxed = draw_instances(image, boxes, crops, np.array([1, 1, 1]), ["BG", "a"], scores, colors=colors,
                           mask_offsets=offsets, min_score=0.5)
    assert np.array_equal(boxed, out)
    with pytest.raises(ValueError, match="min_score needs scores"):
        draw_instances(image, boxes, masks, np.array([1, 1, 1]), min_score=0.5)
