"""Files written before the package layout (round two's main) still load, and documented
module paths of that layout still import (issue #21)."""

from __future__ import annotations

import os

import numpy as np

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "saved_by_round2")


def _check_detect(model) -> None:
    ref = np.load(os.path.join(FIX, "tiny_detect.npz"))
    r = model.detect([ref["image"]])[0]
    assert len(r["scores"]) == len(ref["scores"]) > 0
    np.testing.assert_allclose(r["rois"], ref["rois"], atol=1e-3)
    np.testing.assert_allclose(r["scores"], ref["scores"], atol=1e-5)
    np.testing.assert_array_equal(r["class_ids"], ref["class_ids"])


def test_keras_file_of_round_two_loads_and_detects_the_same():
    import keras

    import mrcnn  # noqa: F401  (registers mrcnn's classes)

    model = keras.models.load_model(os.path.join(FIX, "tiny.keras"))
    assert type(model).__name__ == "MaskRCNN" and model.config.BACKBONE_BASE_WIDTH == 8
    _check_detect(model)


def test_weights_file_of_round_two_loads_and_detects_the_same():
    from mrcnn.data.synthetic import ShapesDemoConfig
    from mrcnn.model import MaskRCNN

    cfg = ShapesDemoConfig(BACKBONE_BASE_WIDTH=8, FPN_CHANNELS=16, FPN_FC_LAYERS_SIZE=64,
                           MASK_HEAD_CONV_CHANNELS=16, GROUP_NORM_GROUPS=4)
    model = MaskRCNN(cfg)
    model.load_weights(os.path.join(FIX, "tiny.weights.h5"))
    _check_detect(model)


def test_old_module_paths_are_the_new_modules():
    import mrcnn.callbacks
    import mrcnn.convert
    import mrcnn.training

    import mrcnn.checkpoint.convert
    import mrcnn.engine.callbacks
    import mrcnn.engine.training

    assert mrcnn.training is mrcnn.engine.training
    assert mrcnn.callbacks is mrcnn.engine.callbacks
    assert mrcnn.convert is mrcnn.checkpoint.convert
    assert mrcnn.training.__name__ == "mrcnn.engine.training"
