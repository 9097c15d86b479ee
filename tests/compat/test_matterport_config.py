"""Config says what it ignores (#21 item 8): matterport field names and misspellings of a
Config field warn once, when the subclass is defined; user-defined fields stay silent and
round-trip through config.json."""

import json
import warnings

import pytest

from mrcnn.config import MATTERPORT_FIELDS, Config


def _define(attrs: dict, base=Config) -> tuple[type, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = type("UserConfig", (base,), attrs)
    return cls, [str(w.message) for w in caught if "mrcnn:" in str(w.message)]


@pytest.mark.parametrize("name", sorted(MATTERPORT_FIELDS))
def test_every_matterport_only_field_warns_once_with_advice(name):
    _, messages = _define({name: 1})
    assert len(messages) == 1
    assert f"UserConfig.{name} is a matterport Config field" in messages[0]
    assert MATTERPORT_FIELDS[name] in messages[0]


def test_use_mini_mask_says_what_to_use():
    _, messages = _define({"USE_MINI_MASK": False})
    assert "use MINI_MASK_SHAPE = None" in messages[0]


def test_matterport_table_names_only_fields_this_config_lacks():
    # A name in the table that Config has would warn about a field that works.
    assert not [n for n in MATTERPORT_FIELDS if hasattr(Config, n)]


def test_misspelled_field_warns_with_the_close_match():
    _, messages = _define({"DETECTON_MIN_CONFIDENCE": 0.9, "IMAGE_MAX_DIMS": 256})
    assert len(messages) == 2
    assert any("did you mean DETECTION_MIN_CONFIDENCE?" in m for m in messages)
    assert any("did you mean IMAGE_MAX_DIM?" in m for m in messages)


def test_known_fields_and_user_fields_are_silent():
    cls, messages = _define({"NAME": "x", "DETECTION_MIN_CONFIDENCE": 0.9, "MY_DATA_ROOT": "/data",
                             "NUM_TILES": 4, "lowercase_thing": 1})
    assert messages == []
    # Instances, from_dict and subclasses of the subclass do not repeat anything.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls()
        cls()
    assert not [w for w in caught if "mrcnn:" in str(w.message)]
    _, again = _define({"MY_DATA_ROOT": "/other"}, base=cls)
    assert again == []


def test_warning_points_at_the_class_statement():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Mine(Config):  # noqa: F841 - defining it is the test
            TRAIN_BN = False

    (w,) = [w for w in caught if "mrcnn:" in str(w.message)]
    assert w.filename == __file__
    assert "BACKBONE_NORM" in str(w.message)


class RoundTripConfig(Config):
    NAME = "roundtrip"
    MY_DATA_ROOT = "/data/cells"
    USE_MINI_MASK = False  # warns at definition (module import), still carried as data


def test_user_and_matterport_fields_round_trip_through_config_json(tmp_path):
    cfg = RoundTripConfig()
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    saved = json.loads(path.read_text())
    assert saved["MY_DATA_ROOT"] == "/data/cells" and saved["USE_MINI_MASK"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = Config.from_dict(saved)
    assert type(back) is RoundTripConfig
    assert back.MY_DATA_ROOT == "/data/cells" and back.USE_MINI_MASK is False
    assert not [w for w in caught if "mrcnn:" in str(w.message)]


def test_matterport_loss_weights_keys_are_named_in_the_error():
    weights = {"rpn_class_loss": 1.0, "rpn_bbox_loss": 1.0, "mrcnn_class_loss": 1.0, "mrcnn_bbox_loss": 1.0,
               "mrcnn_mask_loss": 2.0}
    with pytest.raises(ValueError, match=r"Config.LOSS_WEIGHTS=.*matterport's names; here: \{'mrcnn_bbox_loss': "
                                         r"'box_loss', 'mrcnn_class_loss': 'class_loss', 'mrcnn_mask_loss': "
                                         r"'mask_loss', 'rpn_bbox_loss': 'rpn_box_loss'\}"):
        Config(LOSS_WEIGHTS=weights)
    Config(LOSS_WEIGHTS={"rpn_class_loss": 1.0, "rpn_box_loss": 1.0, "class_loss": 1.0, "box_loss": 1.0,
                         "mask_loss": 2.0})
