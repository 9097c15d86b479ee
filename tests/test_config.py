import json
import os

import pytest

from mrcnn import Config
from mrcnn.config import load_config


def test_defaults_follow_the_paper():
    c = Config()
    assert c.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert c.RPN_ANCHOR_RATIOS == (0.5, 1.0, 2.0)
    assert (c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO) == (512, 0.25)
    assert (c.DETECTION_MIN_CONFIDENCE, c.DETECTION_NMS_THRESHOLD, c.DETECTION_MAX_INSTANCES) == (0.05, 0.5, 100)
    assert c.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert (c.IMAGE_MIN_DIM, c.IMAGE_MAX_DIM) == (800, 1333)
    assert (c.LEARNING_RATE, c.WEIGHT_DECAY, c.LEARNING_MOMENTUM) == (0.02, 1e-4, 0.9)
    assert c.IMAGE_SHAPE == (1344, 1344, 3)


def test_subclass_and_overrides():
    class Shapes(Config):
        NAME = "shapes"
        NUM_CLASSES = 4
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128

    c = Shapes(IMAGES_PER_GPU=3, GPU_COUNT=2)
    assert c.BATCH_SIZE == 6
    assert c.IMAGE_SHAPE == (128, 128, 3)
    assert c.to_dict()["NAME"] == "shapes"


@pytest.mark.parametrize(
    "field,value",
    [
        ("NUM_CLASSES", 1),
        ("NUM_CLASSES", 0),
        ("IMAGE_MIN_DIM", -5),
        ("IMAGE_MAX_DIM", 0),
        ("BACKBONE", "vgg16"),
        ("BACKBONE_NORM", "layer"),
        ("RPN_ANCHOR_SCALES", (32, 64)),
        ("ROI_POSITIVE_RATIO", 1.5),
        ("MASK_SHAPE", (14, 14)),
        ("TRAIN_ROIS_PER_IMAGE", 0),
        ("LEARNING_RATE", 0.0),
        ("ROI_ALIGN_IMPLEMENTATION", "fast"),
        ("LOSS_WEIGHTS", {"bogus_loss": 1.0}),
        ("STEM_POOL_PADDING", "valid"),
        ("RPN_HEAD_CHANNELS", 0),
        ("PROPOSAL_SELECTION", "all"),
        ("BOX_COORDINATES", "normalized"),
        ("ROI_POOLER", "roi_pool"),
        ("DETECTION_CLASS_RULE", "max"),
        ("INPUT_PADDING", "mean"),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="NUM_CLASES"):
        Config(NUM_CLASES=3)


def test_subclass_validation_runs_at_construction():
    class Bad(Config):
        NUM_CLASSES = 1

    with pytest.raises(ValueError, match="NUM_CLASSES"):
        Bad()


def test_dict_round_trip_and_display(capsys):
    c = Config(NUM_CLASSES=5, RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), LOSS_WEIGHTS={"mask_loss": 2.0})
    d = json.loads(c.to_json())
    c2 = Config.from_dict(d)
    assert c2.to_dict() == c.to_dict()
    assert c2.loss_weights()["mask_loss"] == 2.0
    c.display()
    assert "RPN_ANCHOR_SCALES" in capsys.readouterr().out


def test_adaptive_sampling_needs_the_custom_op():
    Config(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="custom")
    Config(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="auto")
    with pytest.raises(ValueError, match="ROI_ALIGN_SAMPLING_RATIO"):
        Config(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="portable")
    with pytest.raises(ValueError, match="ROI_ALIGN_SAMPLING_RATIO"):
        Config(ROI_ALIGN_SAMPLING_RATIO=-1)


def test_presets_validate_and_round_trip():
    from mrcnn.configs import Detectron2COCO, MatterportConfig, TorchvisionCOCO

    for preset in (TorchvisionCOCO(), Detectron2COCO(), MatterportConfig()):
        again = Config.from_dict(json.loads(preset.to_json()))
        assert again.to_dict() == preset.to_dict()
    assert Detectron2COCO().ROI_ALIGN_SAMPLING_RATIO == 0 and TorchvisionCOCO().NUM_CLASSES == 91


def test_export_refuses_adaptive_sampling_with_a_clear_message():
    from mrcnn.export.saved_model import portable_config

    with pytest.raises(ValueError, match="no stock-ops RoIAlign"):
        portable_config(Config(ROI_ALIGN_SAMPLING_RATIO=0, ROI_ALIGN_IMPLEMENTATION="custom"))


# ----- config class round trip (config.json records "module:qualname") ----------------------
class ScheduleConfig(Config):
    """A subclass with its own fields and a derived one (like the COCO sample's)."""

    NAME = "schedule"
    NUM_CLASSES = 3
    EPOCHS: int = 90
    TILE_SIZE: int = 64

    @property
    def TOTAL_STEPS(self) -> int:  # noqa: N802
        return self.STEPS_PER_EPOCH * self.EPOCHS


def test_config_json_rebuilds_the_subclass(tmp_path):
    c = ScheduleConfig(EPOCHS=7, STEPS_PER_EPOCH=10, TILE_SIZE=32)
    d = json.loads(c.to_json())
    assert d["config_class"] == f"{__name__}:ScheduleConfig"
    assert d["TOTAL_STEPS"] == 70
    d["STEPS_PER_EPOCH"] = 3  # derived fields are recomputed, not read back
    back = Config.from_dict(d)
    assert type(back) is ScheduleConfig
    assert (back.EPOCHS, back.TILE_SIZE, back.TOTAL_STEPS) == (7, 32, 21)
    path = tmp_path / "config.json"
    path.write_text(c.to_json())
    again = load_config(str(path))
    assert type(again) is ScheduleConfig and again.to_dict() == c.to_dict()


def test_unimportable_class_falls_back_to_a_plain_config_with_a_warning():
    d = json.loads(ScheduleConfig(EPOCHS=5).to_json())
    d["config_class"] = "no_such_module_xyz:ScheduleConfig"
    with pytest.warns(UserWarning, match=r"no_such_module_xyz.*\['EPOCHS', 'TILE_SIZE'\]"):
        back = Config.from_dict(d)
    assert type(back) is Config
    assert (back.EPOCHS, back.TILE_SIZE, back.TOTAL_STEPS, back.NUM_CLASSES) == (5, 64, 5000, 3)
    # The carried config writes the same file again (the original class name included).
    assert back.to_dict() == d


def test_class_defined_in_a_function_falls_back():
    class Local(Config):
        EXTRA_FIELD = 3

    d = json.loads(Local(EXTRA_FIELD=4).to_json())
    assert "<locals>" in d["config_class"]
    with pytest.warns(UserWarning, match="defined in a function"):
        back = Config.from_dict(d)
    assert back.EXTRA_FIELD == 4 and back.class_path() == d["config_class"]
    # Invalid values are still caught by the base checks.
    d["NUM_CLASSES"] = 1
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="NUM_CLASSES"):
        Config.from_dict(d)


def test_old_files_without_config_class_and_the_dotted_form():
    d = json.loads(ScheduleConfig().to_json())
    del d["config_class"]
    assert type(ScheduleConfig.from_dict(d)) is ScheduleConfig  # cls decides
    assert type(Config.from_dict(d, config_class=f"{__name__}.ScheduleConfig")) is ScheduleConfig


def test_nucleus_config_round_trip(tmp_path):
    from samples.nucleus.nucleus import NucleusConfig

    c = NucleusConfig()
    path = tmp_path / "config.json"
    path.write_text(c.to_json())
    back = load_config(str(path))
    assert type(back) is NucleusConfig and back.to_dict() == c.to_dict()


_ROUND_TRIP_MODULE = '''
from mrcnn import Config


class RoundTripConfig(Config):
    """A tiny network plus fields of its own (like the samples' TRAIN_CROP_SIZE / EPOCHS)."""

    NAME = "round_trip"
    NUM_CLASSES = 3
    BACKBONE = "resnet18"
    BACKBONE_NORM = "gn"
    BACKBONE_BASE_WIDTH = 16
    GROUP_NORM_GROUPS = 8
    FPN_CHANNELS = 32
    FPN_FC_LAYERS_SIZE = 64
    MASK_HEAD_CONV_CHANNELS = 32
    MASK_HEAD_NUM_CONVS = 2
    RPN_ANCHOR_SCALES = (16, 32, 64, 128, 256)
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    PRE_NMS_LIMIT_INFERENCE = 300
    POST_NMS_ROIS_INFERENCE = 100
    DETECTION_MAX_INSTANCES = 20
    EPOCHS: int = 90
    CROP_SIDE: int = 96

    @property
    def TOTAL_STEPS(self):  # noqa: N802
        return self.STEPS_PER_EPOCH * self.EPOCHS

    def validate(self):
        super().validate()
        if self.CROP_SIDE < 32:
            raise ValueError(f"Config.CROP_SIDE={self.CROP_SIDE!r}: must be >= 32")
'''

_LOAD_IN_FRESH_PROCESS = '''
import sys
import numpy as np
import mrcnn  # the only mrcnn import: it must make the saved models loadable
import keras

image = np.load(sys.argv[1])
out = {}
for tag, path in (("sub", sys.argv[2]), ("nucleus", sys.argv[3])):
    model = keras.models.load_model(path)
    config = model.config
    out[tag + "_class"] = np.array(type(config).__module__ + ":" + type(config).__qualname__)
    out[tag + "_fields"] = np.array(config.to_json())
    for key, value in model.detect([image])[0].items():
        out[tag + "_" + key] = value
np.savez(sys.argv[4], **out)
'''


@pytest.mark.slow
def test_keras_file_round_trip_after_import_mrcnn_only(tmp_path, monkeypatch):
    """model.save("x.keras"), then in a fresh process that imports only mrcnn (and keras),
    keras.models.load_model gives the same config class, fields and detections; for a
    subclass with its own fields and for the nucleus sample's config."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from mrcnn.model import MaskRCNN
    from samples.nucleus.nucleus import NucleusConfig

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "rt_config.py").write_text(_ROUND_TRIP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from rt_config import RoundTripConfig

    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    image[20:60, 30:80] = (250, 20, 20)
    np.save(tmp_path / "image.npy", image)
    configs = {
        "sub": RoundTripConfig(EPOCHS=7, CROP_SIDE=64, DETECTION_MIN_CONFIDENCE=0.0),
        "nucleus": NucleusConfig(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, DETECTION_MAX_INSTANCES=20,
                                 PRE_NMS_LIMIT_INFERENCE=300, POST_NMS_ROIS_INFERENCE=100,
                                 DETECTION_MIN_CONFIDENCE=0.0),
    }
    expected = {}
    for tag, config in configs.items():
        model = MaskRCNN(config)
        model.save(str(tmp_path / f"{tag}.keras"))
        expected[tag] = model.detect([image])[0]
        assert len(expected[tag]["scores"]) > 0  # random weights, min confidence 0: detections exist

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]))
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(tmp_path / "image.npy"),
         str(tmp_path / "sub.keras"), str(tmp_path / "nucleus.keras"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert str(got["sub_class"]) == "rt_config:RoundTripConfig"
    assert str(got["nucleus_class"]) == "samples.nucleus.nucleus:NucleusConfig"
    for tag, config in configs.items():
        assert json.loads(str(got[f"{tag}_fields"])) == json.loads(config.to_json())
        for key, value in expected[tag].items():
            np.testing.assert_allclose(got[f"{tag}_{key}"], value, atol=1e-4, err_msg=f"{tag} {key}")
    fields = json.loads(str(got["sub_fields"]))
    assert (fields["EPOCHS"], fields["CROP_SIDE"], fields["TOTAL_STEPS"]) == (7, 64, 7000)


def test_unimportable_class_without_own_fields_keeps_its_name(recwarn):
    d = json.loads(Config(NUM_CLASSES=7).to_json())
    d["config_class"] = "gone_module:GoneConfig"
    back = Config.from_dict(d)
    assert type(back) is Config and back.NUM_CLASSES == 7
    assert not [w for w in recwarn if "gone_module" in str(w.message)]  # nothing was lost
    assert json.loads(back.to_json())["config_class"] == "gone_module:GoneConfig"
