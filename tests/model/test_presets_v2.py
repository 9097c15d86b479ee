"""The torchvision v2 / Detectron2 LSJ presets and the LSJ training recipe."""

import numpy as np
import pytest


def test_presets_carry_each_sources_architecture_and_conventions():
    from mrcnn.configs import (
        PRESETS,
        Detectron2COCO,
        Detectron2LSJ,
        LSJRecipe,
        TorchvisionCOCO,
        TorchvisionCOCOv2,
    )

    v2 = TorchvisionCOCOv2()
    assert (v2.BACKBONE_NORM, v2.FPN_NORM, v2.RPN_HEAD_CONVS, v2.BOX_HEAD, v2.HEAD_NORM) == (
        "bn", "bn", 2, "4conv1fc", "bn")
    for field in ("MEAN_PIXEL", "STD_PIXEL", "INPUT_CHANNEL_ORDER", "STRIDE_IN_1X1", "BBOX_REG_WEIGHTS",
                  "ROI_ALIGN_ALIGNED", "NUM_CLASSES"):
        assert getattr(v2, field) == getattr(TorchvisionCOCO, field), field
    lsj = Detectron2LSJ()
    assert (lsj.BACKBONE_NORM, lsj.FPN_NORM, lsj.RPN_HEAD_CONVS, lsj.BOX_HEAD, lsj.HEAD_NORM) == (
        "syncbn", "syncbn", 2, "4conv1fc", "syncbn")
    assert lsj.FREEZE_BACKBONE_STAGES == 0
    for field in ("MEAN_PIXEL", "STD_PIXEL", "INPUT_CHANNEL_ORDER", "STRIDE_IN_1X1", "ROI_ALIGN_ALIGNED",
                  "ROI_ALIGN_SAMPLING_RATIO", "NUM_CLASSES"):
        assert getattr(lsj, field) == getattr(Detectron2COCO, field), field
    assert Detectron2LSJ(BACKBONE="resnet101").BACKBONE == "resnet101"
    recipe = LSJRecipe()
    assert recipe.BATCH_SIZE == 64 and recipe.effective_lr() == pytest.approx(0.1)
    assert (recipe.TRAIN_SCALE_JITTER, recipe.TRAIN_CROP_SIZE, recipe.WEIGHT_DECAY, recipe.WEIGHT_DECAY_NORM) == (
        (0.1, 2.0), 1024, 4e-5, 0.0)
    assert PRESETS["torchvision_v2"] is TorchvisionCOCOv2 and PRESETS["detectron2_lsj"] is Detectron2LSJ


@pytest.mark.parametrize("field,value", [("FPN_NORM", "ln"), ("RPN_HEAD_CONVS", 3), ("BOX_HEAD", "3fc"),
                                         ("HEAD_NORM", "frozen_bn"), ("BACKBONE_NORM", "sync")])
def test_architecture_fields_are_validated(field, value):
    from mrcnn.configs import TorchvisionCOCOv2

    with pytest.raises(ValueError, match=f"Config.{field}="):
        TorchvisionCOCOv2(**{field: value})


def test_default_model_has_no_v2_parts():
    """The defaults keep the v1 model: no norm layer outside the backbone, one RPN conv, 2fc."""
    from conftest import TinyConfig

    from mrcnn import MaskRCNN

    model = MaskRCNN(TinyConfig())
    paths = [v.path for v in model.weights]
    assert not [p for p in paths if p.startswith(("fpn/", "roi_heads/")) and "norm" in p]
    assert not [p for p in paths if "rpn_conv2" in p]
    assert any("fc7" in p for p in paths)


def test_lsj_recipe_trains_three_steps_at_a_small_size():
    """The recipe (scale jitter 0.1-2.0, square crop, flip, SyncBN everywhere, lr 0.1 at
    batch 64 scaled linearly, weight decay 4e-5) at 64 px on two CPU images: 3 finite steps
    that move the weights and the BatchNorm statistics."""
    import keras

    from mrcnn import MaskRCNN
    from mrcnn.configs import LSJRecipe
    from mrcnn.data.pipeline import build_dataset
    from samples.shapes.shapes import ShapesDataset

    config = LSJRecipe(
        NAME="lsj_tiny", NUM_CLASSES=4, CLASS_NAMES=None, BACKBONE="resnet18", BACKBONE_BASE_WIDTH=8,
        FPN_CHANNELS=16, FPN_FC_LAYERS_SIZE=32, MASK_HEAD_CONV_CHANNELS=16, MASK_HEAD_NUM_CONVS=2,
        RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, TRAIN_CROP_SIZE=64,
        IMAGES_PER_GPU=2, GPU_COUNT=1, PRE_NMS_LIMIT_TRAINING=300, POST_NMS_ROIS_TRAINING=100,
        TRAIN_ROIS_PER_IMAGE=32, TOTAL_STEPS=3, LR_STEPS=(2,), WARMUP_STEPS=1, STEPS_PER_EPOCH=3,
        ROI_ALIGN_IMPLEMENTATION="portable", ROI_ALIGN_SAMPLING_RATIO=2, MAX_GT_INSTANCES=6)
    assert config.effective_lr() == pytest.approx(0.1 * 2 / 64)
    ds = ShapesDataset()
    ds.load_shapes(6, height=96, width=96, seed=3)
    data = build_dataset(ds, config, training=True, seed=0)
    shapes = {tuple(next(iter(data))["images"].shape)}
    assert shapes == {(2, 64, 64, 3)}
    keras.utils.set_random_seed(0)
    model = MaskRCNN(config)
    model.compile()
    before = {v.path: v.numpy().copy() for v in model.weights}
    history = model.fit(data, epochs=1, steps_per_epoch=3, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["loss"][0] > 0
    moved = {p for p, v in ((v.path, v.numpy()) for v in model.weights) if not np.array_equal(v, before[p])}
    assert any("moving_mean" in p and p.startswith("fpn/") for p in moved)
    assert any("moving_variance" in p and p.startswith("roi_heads/") for p in moved)
    assert any(p.endswith("fc6/kernel") for p in moved)
