"""matterport's ``mrcnn.utils`` names (#25): the Dataset methods, box/mask helpers, the
single-image AP, the resize functions and the offline download error, with hand-computed
numbers."""

from __future__ import annotations

import random
import urllib.error

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.data import Dataset


def test_dataset_is_the_package_dataset_with_matterports_methods():
    assert utils.Dataset is Dataset
    ds = utils.Dataset(class_map=None)
    ds.add_class("coco", 12, "dog")
    ds.add_class("voc", 3, "cat")
    ds.add_image("coco", image_id=7, path="/data/7.jpg")
    ds.prepare(class_map=None)
    assert ds.map_source_class_id("coco.12") == 1 and ds.map_source_class_id("voc.3") == 2
    assert ds.get_source_class_id(2, "voc") == 3
    with pytest.raises(ValueError, match="source 'voc', not 'coco'"):
        ds.get_source_class_id(2, "coco")
    assert ds.source_class_ids == {"coco": [0, 1], "voc": [0, 2]}
    assert ds.source_image_link(0) == "/data/7.jpg"
    assert ds.image_reference(0) == ""


def test_extract_bboxes_is_one_past_the_last_pixel():
    mask = np.zeros((20, 30, 2), bool)
    mask[3:8, 10:25, 0] = True
    boxes = utils.extract_bboxes(mask)
    assert boxes.dtype == np.int32
    assert boxes.tolist() == [[3, 10, 8, 25], [0, 0, 0, 0]]


def test_compute_overlaps_boxes_and_masks():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    b = np.array([[5, 5, 15, 15]], np.float32)
    np.testing.assert_allclose(utils.compute_overlaps(a, b), [[25 / 175], [50 / 250]])
    masks1 = np.zeros((10, 10, 1), bool)
    masks1[:, :5, 0] = True
    masks2 = np.zeros((10, 10, 2), bool)
    masks2[:, :, 0] = True
    masks2[:5, :, 1] = True
    np.testing.assert_allclose(utils.compute_overlaps_masks(masks1, masks2), [[0.5, 25 / 75]])
    assert utils.compute_overlaps_masks(masks1, masks2[..., :0]).shape == (1, 0)


def _instances():
    gt_masks = np.zeros((20, 20, 2), bool)
    gt_masks[0:10, 0:10, 0] = True
    gt_masks[10:20, 10:20, 1] = True
    gt_boxes = utils.extract_bboxes(gt_masks)
    # p0: gt0 exactly (class 1); p1: a lower-scored duplicate of gt0; p2: on gt1 but class 1.
    pred_masks = np.stack([gt_masks[..., 0], gt_masks[..., 0], gt_masks[..., 1]], axis=-1)
    pred_boxes = utils.extract_bboxes(pred_masks)
    return (gt_boxes, np.array([1, 2]), gt_masks, pred_boxes, np.array([1, 1, 1]),
            np.array([0.9, 0.8, 0.7]), pred_masks)


def test_compute_matches_counts_each_ground_truth_once():
    gt_match, pred_match, overlaps = utils.compute_matches(*_instances())
    # matterport's test `gt_match[j] > 0` let the duplicate match gt0 again (it was matched by
    # prediction 0); here a ground truth is matched once (docs/matterport.md).
    assert pred_match.tolist() == [0, -1, -1]
    assert gt_match.tolist() == [0, -1]
    assert overlaps.shape == (3, 2)


def test_compute_ap_by_hand():
    ap, precisions, recalls, _ = utils.compute_ap(*_instances())
    # precision 1, 1/2, 1/3 at recall 1/2; nothing reaches recall 1: AP = 1/2 * 1 + 1/2 * 0.
    assert ap == pytest.approx(0.5)
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(precisions, [1, 1, 0.5, 1 / 3, 0])
    gt = _instances()
    perfect = utils.compute_ap(gt[0], gt[1], gt[2], gt[0], gt[1], np.array([0.9, 0.8]), gt[2])[0]
    assert perfect == pytest.approx(1.0)


def test_compute_recall():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    pred = np.array([[0, 0, 10, 9], [1, 1, 10, 10], [20, 20, 24, 24]], np.float32)
    recall, positive = utils.compute_recall(pred, gt, 0.5)
    assert recall == pytest.approx(1 / 3)
    assert positive.tolist() == [0, 1]


def test_resize_image_square_scales_up_and_centres():
    image = np.full((100, 50, 3), 7, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, min_dim=64, max_dim=128, mode="square")
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(1.28)  # 64 / 50; the long side becomes 128 <= max_dim
    assert window == (0, 32, 128, 96) and padding == [(0, 0), (32, 32), (0, 0)] and crop is None
    assert (out[:, 32:96] == 7).all() and (out[:, :32] == 0).all()
    # Never scaled down by min_dim; max_dim caps the long side.
    _, _, scale, _, _ = utils.resize_image(np.zeros((400, 200, 3), np.uint8), min_dim=64, max_dim=128)
    assert scale == pytest.approx(128 / 400)


def test_resize_image_pad64_none_and_crop():
    image = np.ones((100, 50, 3), np.uint8)
    out, window, scale, padding, _ = utils.resize_image(image, mode="pad64")
    assert out.shape == (128, 64, 3) and scale == 1
    assert padding == [(14, 14), (7, 7), (0, 0)] and window == (14, 7, 114, 57)
    same, window, _, _, _ = utils.resize_image(image, mode="none")
    assert same is image and window == (0, 0, 100, 50)
    random.seed(3)
    out, window, _, _, crop = utils.resize_image(image, min_dim=40, mode="crop")
    assert out.shape == (40, 40, 3) and window == (0, 0, 40, 40) and crop[2:] == (40, 40)
    with pytest.raises(ValueError, match="resize mode"):
        utils.resize_image(image, mode="pad32")


def test_resize_mask_follows_resize_image():
    image = np.zeros((100, 50, 3), np.uint8)
    mask = np.zeros((100, 50, 1), bool)
    mask[50:, :25, 0] = True  # bottom-left quarter
    out, window, scale, padding, crop = utils.resize_image(image, min_dim=64, max_dim=128)
    resized = utils.resize_mask(mask, scale, padding, crop)
    assert resized.shape == (128, 128, 1) and resized.dtype == bool
    y1, x1, y2, x2 = utils.extract_bboxes(resized)[0]
    assert (y1, x1, y2, x2) == (64, 32, 128, 64)


def test_download_trained_weights_offline_names_the_url_and_the_place(tmp_path, monkeypatch):
    from mrcnn.checkpoint import matterport

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    dest = tmp_path / "mask_rcnn_coco.h5"
    with pytest.raises(matterport.TrainedWeightsUnavailable) as err:
        utils.download_trained_weights(str(dest))
    assert utils.COCO_MODEL_URL in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists() and not list(tmp_path.iterdir())
