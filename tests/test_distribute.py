"""Training under tf.distribute.MirroredStrategy with two logical CPU devices.

Runs in a subprocess because logical devices must be configured before
TensorFlow initialises its runtime.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mrcnn.ops import custom_roi_align

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    if sys.argv[2] == "portable":
        # TF's CPU crop_and_resize gradient races between threads without this.
        tf.config.experimental.enable_op_determinism()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from conftest import TinyConfig
    from mrcnn import MaskRCNN
    from mrcnn.data.pipeline import build_dataset
    from samples.shapes.shapes import ShapesDataset

    # Samples large enough to take every candidate: the losses are then deterministic.
    config = TinyConfig(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, RPN_TRAIN_ANCHORS_PER_IMAGE=2048,
                        TRAIN_ROIS_PER_IMAGE=512, POST_NMS_ROIS_TRAINING=100, TRAIN_FLIP_PROB=0.0,
                        WARMUP_STEPS=0, LEARNING_RATE=0.01, GRADIENT_CLIP_NORM=None,
                        ROI_ALIGN_IMPLEMENTATION=sys.argv[2])
    ds = ShapesDataset(); ds.load_shapes(2, height=64, width=64, seed=7)
    batch = next(iter(build_dataset(ds, config, training=False, batch_size=2)))
    data = tf.data.Dataset.from_tensors(batch).repeat()

    keras.utils.set_random_seed(0)
    single = MaskRCNN(config)
    initial = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.01))
    h1 = single.fit(data, epochs=1, steps_per_epoch=1, verbose=0).history

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = MaskRCNN(config)
        mirrored.set_weights(initial)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.01))
    h2 = mirrored.fit(data, epochs=1, steps_per_epoch=1, verbose=0).history
    wdiff = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights()))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), initial))
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync,
                                  "single": {k: v[0] for k, v in h1.items()},
                                  "mirrored": {k: v[0] for k, v in h2.items()},
                                  "weight_diff": wdiff, "weight_moved": moved}))
    """
)


@pytest.mark.parametrize("implementation", ["portable", "custom"])
def test_mirrored_strategy_matches_single_device(implementation):
    if implementation == "custom" and not custom_roi_align.is_available():
        pytest.skip(f"custom RoIAlign op unavailable: {custom_roi_align.unavailable_reason()}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, implementation], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["replicas"] == 2
    for name, value in result["single"].items():
        assert abs(result["mirrored"][name] - value) <= 1e-4 * max(1.0, abs(value)), (name, result)
    assert result["single"]["loss"] > 0
    # Gradients were averaged across replicas exactly as over the full batch.
    assert result["weight_moved"] > 1e-4
    assert result["weight_diff"] < 1e-4 * max(1.0, result["weight_moved"] * 100), result
