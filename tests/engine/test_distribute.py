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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


LOSS_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mrcnn.ops.losses import keypoint_loss, mask_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 4, 3, 3)).astype(np.float32)
    targets = (rng.random((2, 4, 3, 3)) > 0.5).astype(np.float32)
    positive = np.array([[True, True, True, False], [False, True, False, False]])  # 3 vs 1
    kp_logits = rng.normal(0, 1, (2, 3, 4, 4, 2)).astype(np.float32)
    kp_targets = rng.integers(0, 16, (2, 3, 2)).astype(np.int32)
    kp_valid = np.zeros((2, 3, 2), bool)
    kp_valid[0, :, 0] = kp_valid[0, 0, 1] = kp_valid[1, 2, 1] = True  # 4 vs 1

    def losses_and_grads(lg, tg, pos, kl, kt, kv, scale):
        lg, kl = tf.convert_to_tensor(lg), tf.convert_to_tensor(kl)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([lg, kl])
            m, k = mask_loss(lg, tg, pos), keypoint_loss(kl, kt, kv)
            # What Keras' train_step differentiates: the loss divided by the replicas.
            sm, sk = m / scale, k / scale
        return m, k, tape.gradient(sm, lg), tape.gradient(sk, kl)

    single = losses_and_grads(logits, targets, positive, kp_logits, kp_targets, kp_valid, 1.0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    arrays = (logits, targets, positive, kp_logits, kp_targets, kp_valid)
    shard = lambda ctx: tuple(tf.constant(a[ctx.replica_id_in_sync_group:ctx.replica_id_in_sync_group + 1])
                              for a in arrays)
    per_replica = strategy.experimental_distribute_values_from_function(shard)
    out = strategy.run(tf.function(lambda *a: losses_and_grads(*a, 2.0)), args=per_replica)
    local = [strategy.experimental_local_results(t) for t in out]
    # Without the all-reduce each replica would normalise by its own count.
    own = [[float(mask_loss(logits[i:i + 1], targets[i:i + 1], positive[i:i + 1])) for i in (0, 1)],
           [float(keypoint_loss(kp_logits[i:i + 1], kp_targets[i:i + 1], kp_valid[i:i + 1])) for i in (0, 1)]]
    print("RESULT " + json.dumps({
        "own_count_mean": [float(np.mean(v)) for v in own],
        "single": [float(single[0]), float(single[1])],
        "replica_mean": [float(np.mean([float(v) for v in local[0]])),
                         float(np.mean([float(v) for v in local[1]]))],
        "mask_grad_diff": float(np.abs(np.concatenate([g.numpy() for g in local[2]]) - single[2].numpy()).max()),
        "kp_grad_diff": float(np.abs(np.concatenate([g.numpy() for g in local[3]]) - single[3].numpy()).max()),
        "grad_scale": float(np.abs(single[2].numpy()).max()),
    }))
    """
)


def test_mask_and_keypoint_losses_are_global_batch_means_across_replicas():
    # Replica 0 holds 3 positive RoIs (4 keypoints), replica 1 one (1): the all-reduced
    # count makes the replicas' mean loss, and their summed gradients, those of one device.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", LOSS_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(lines[0][len("RESULT "):])
    for single, mean, own in zip(r["single"], r["replica_mean"], r["own_count_mean"]):
        assert abs(mean - single) < 1e-5 * max(1.0, single), r
        # Normalising by each replica's own count would not agree with one device here.
        assert abs(own - single) > 0.01, r
    assert r["grad_scale"] > 1e-3
    assert r["mask_grad_diff"] < 1e-6 and r["kp_grad_diff"] < 1e-6, r
