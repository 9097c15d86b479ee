"""Errors a Python user meets on a first day are the library's own, one sentence that
names the image, the field and the fix: a wrong-size mask in ``model.fit`` (not a
TensorFlow traceback), a dataset with more classes than NUM_CLASSES (one message, not
every image listed as bad), a COCO annotation of an unknown category."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TinyConfig

from mrcnn import Dataset
from mrcnn.data.check import ClassCountError, DatasetCheckError, check_dataset
from mrcnn.data.loader import BadSampleError
from mrcnn.data.synthetic import ShapesDataset


class WrongMaskDataset(ShapesDataset):
    """Image 1's masks are 100 x 100 while the image is 128 x 128."""

    def load_mask(self, image_id):
        masks, class_ids = super().load_mask(image_id)
        return (masks[:100, :100] if image_id == 1 else masks), class_ids


def test_fit_raises_the_loaders_error_for_a_wrong_size_mask():
    from mrcnn import MaskRCNN
    from mrcnn.data import build_dataset

    config = TinyConfig(STEPS_PER_EPOCH=1)
    ds = WrongMaskDataset()
    ds.load_shapes(2, seed=0)
    model = MaskRCNN(config)
    model.compile()
    with pytest.raises(BadSampleError) as info:
        model.fit(build_dataset(ds, config, training=True, shuffle=False, seed=0), epochs=1, steps_per_epoch=1,
                  verbose=0)
    message = str(info.value)
    assert info.value.image_id == 1 and "\n" not in message
    assert "masks shape (100, 100" in message and "(128, 128)" in message and "load_mask must return" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no TF error chained


def test_plain_fit_logs_the_pipelines_own_data_health():
    """``model.fit(build_dataset(...))`` hands the pipeline's DataHealth to the model, where
    DataHealthLogger reads it: skipped ids of this pipeline only (a second pipeline counts apart)."""
    from mrcnn import MaskRCNN
    from mrcnn.data import build_dataset
    from mrcnn.engine.callbacks import DataHealthLogger

    config = TinyConfig(ON_BAD_SAMPLE="skip")
    ds = WrongMaskDataset()
    ds.load_shapes(3, seed=0)
    model = MaskRCNN(config)
    model.compile()
    logger = DataHealthLogger(verbose=False)
    stream = build_dataset(ds, config, training=True, shuffle=False, seed=0)
    with pytest.warns(UserWarning, match=r"image id 1: .*skipped \(ON_BAD_SAMPLE"):
        model.fit(stream, epochs=1, steps_per_epoch=2, verbose=0, callbacks=[logger])
    assert model.data_health is stream.data_health
    assert stream.data_health.snapshot() == ({"empty_masks_dropped": 0, "instances_truncated": 0,
                                              "bad_samples_skipped": 1}, [1])
    assert logger.lines == ["epoch 1: empty masks dropped: 0, instances truncated: 0, bad samples skipped: 1; "
                            "skipped image ids: [1]"]
    other = build_dataset(ds, config, training=True, shuffle=False, seed=0)
    assert other.data_health is not stream.data_health and not any(other.data_health.snapshot()[0].values())


def test_dataset_with_more_classes_than_num_classes_is_one_message():
    ds = ShapesDataset()
    ds.load_shapes(5, seed=0)
    with pytest.raises(ClassCountError) as info:
        check_dataset(ds, TinyConfig(NUM_CLASSES=2))
    message = str(info.value)
    assert isinstance(info.value, DatasetCheckError)  # what `mrcnn train` reports in one line
    assert "has 4 classes (BG + 3: 'square', 'circle', 'triangle')" in message and "NUM_CLASSES=2" in message
    assert "set NUM_CLASSES = 4" in message and "\n" not in message
    # Fewer classes than the model predicts is fine (e.g. a subset of a preset's classes).
    assert check_dataset(ds, TinyConfig(NUM_CLASSES=5)).problems == []


def test_coco_unknown_category_names_file_annotation_image_and_fix(tmp_path):
    from mrcnn.data.coco import CocoDataset

    doc = {"images": [{"id": 7, "file_name": "a.png", "height": 4, "width": 4}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
           "annotations": [{"id": 12, "image_id": 7, "category_id": 2, "segmentation": [[0, 0, 2, 0, 2, 2]],
                            "area": 2, "bbox": [0, 0, 2, 2], "iscrowd": 0}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        CocoDataset(path, tmp_path)
    assert str(info.value) == (
        f"{path}: annotation 12 (image id 7) has category_id 2, which is not in 'categories' [1, 3]; "
        "add that category to 'categories' or correct the annotation's category_id")


def test_base_dataset_negative_example_is_not_a_class_count_problem():
    ds = Dataset()
    ds.add_class("x", 1, "thing")
    ds.add_image("x", image_id=0, path=None)
    ds.prepare()
    ds.load_image = lambda image_id: np.zeros((8, 8, 3), np.uint8)
    assert check_dataset(ds, TinyConfig(NUM_CLASSES=2)).problems == []
