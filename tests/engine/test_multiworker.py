"""MultiWorkerMirroredStrategy for real: worker processes on localhost ports, one CPU device each.

Every multi-process test starts its workers in their own process groups and
kills the groups when a bounded wait (``HANG``) runs out, so a hung collective fails
the test instead of hanging the suite. No test asserts how fast anything happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mrcnn.engine import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
# Seconds after which a worker is taken for hung (and killed): a bound that only catches hangs,
# far above the minutes these runs take on a loaded 2-core machine, never a speed requirement.
HANG = 3600


# ----- process helpers ---------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Workers:
    """``n`` processes of ``argv`` with TF_CONFIG for a localhost cluster; logs in ``log_dir``."""

    def __init__(self, argv: list[str], n: int, log_dir, tag: str = "run") -> None:
        ports = _free_ports(n)
        self.logs = [os.path.join(log_dir, f"{tag}-worker{i}.log") for i in range(n)]
        self.procs = []
        for i in range(n):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, TF_CONFIG=_tf_config(ports, i),
                       CUDA_VISIBLE_DEVICES="")
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def output(self, i: int) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def kill(self, i: int) -> None:
        try:
            os.killpg(self.procs[i].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[i].wait()

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes; None for a process still running at the deadline (then killed)."""
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        self.close()
        return codes

    def close(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                self.kill(i)

    def tails(self) -> str:
        return "\n".join(f"--- worker {i} ---\n{self.output(i)[-3000:]}" for i in range(len(self.procs)))


# ----- unit tests of the pieces -------------------------------------------------------------
def test_shards_are_disjoint_balanced_and_cover_everything():
    ids = np.arange(103) * 7
    for n in (1, 2, 3, 8):
        shards = [distribute.shard_image_ids(ids, n, i, seed=4) for i in range(n)]
        joined = np.concatenate(shards)
        assert sorted(joined.tolist()) == sorted(ids.tolist())  # disjoint and complete
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # The same on every worker (seeded), different for another seed, not the dataset's order.
    a = distribute.shard_image_ids(ids, 2, 0, seed=4)
    assert np.array_equal(a, distribute.shard_image_ids(ids, 2, 0, seed=4))
    assert not np.array_equal(a, distribute.shard_image_ids(ids, 2, 0, seed=5))
    assert not np.array_equal(a, ids[0::2])
    with pytest.raises(ValueError, match="outside"):
        distribute.shard_image_ids(ids, 2, 2)
    with pytest.raises(ValueError, match="cannot be split"):
        distribute.shard_image_ids(ids[:2], 3, 0)


def test_tf_config_errors_name_the_problem(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match="not in cluster"):
        distribute.read_tf_config()
    with pytest.raises(ValueError, match="unknown strategy 'tpu'"):
        distribute.make_strategy("tpu")


def test_single_process_strategies_batch_and_paths(tiny_config):
    import tensorflow as tf

    strategy = distribute.make_strategy("auto")  # no GPU here: the default strategy, as plain fit
    assert strategy is tf.distribute.get_strategy()
    info = distribute.worker_info(strategy)
    assert info == distribute.WorkerInfo(None, 0, 1, True)
    one = distribute.make_strategy("one-device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    config = tiny_config(IMAGES_PER_GPU=3, LEARNING_RATE=0.02, LR_REFERENCE_BATCH=16)
    scaled = distribute.scale_config(config, one)
    assert scaled.BATCH_SIZE == 3 and config.GPU_COUNT == 1
    line = distribute.describe(scaled, one)
    assert "1 replica(s) x 3 image(s) = global batch 3" in line and f"{0.02 * 3 / 16:g}" in line
    assert "3x3 convolutions winograd-large (TRAINING_CONV_ALGORITHM 'auto')" in line  # CPU host, float32
    assert distribute.final_weights_path("/o", info) == os.path.join("/o", "final.weights.h5")
    other = distribute.WorkerInfo("worker", 2, 3, False)
    assert distribute.final_weights_path("/o", other) == os.path.join("/o", "workers", "2", "final.weights.h5")


def test_cli_multi_worker_without_tf_config_is_a_clear_error(monkeypatch, capsys, tmp_path):
    from mrcnn.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = main(["train", "--strategy", "multi-worker", "--config", "mrcnn.data.synthetic:ShapesDemoConfig",
                 "--dataset", "shapes", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "needs the TF_CONFIG environment variable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_worker_callbacks_route_files_away_from_out(tmp_path):
    import keras

    from mrcnn.engine.training import default_callbacks

    out = str(tmp_path / "out")
    chief_info, other_info = distribute.WorkerInfo("worker", 0, 2, True), distribute.WorkerInfo("worker", 1, 2, False)
    chief = distribute.worker_callbacks(default_callbacks(out), chief_info, out)
    assert [type(c) for c in chief] == [type(c) for c in default_callbacks(out)]
    other = distribute.worker_callbacks(default_callbacks(out), other_info, out)
    assert not any(isinstance(c, keras.callbacks.TensorBoard) for c in other)
    backup = next(c for c in other if hasattr(c, "backup_dir"))
    assert backup.backup_dir == os.path.join(out, "backup")  # restores from the chief's backup ...
    for attr in ("folder", "filepath", "log_dir", "path"):
        for c in other:
            if isinstance(getattr(c, attr, None), str):
                assert not getattr(c, attr).startswith(out), (type(c).__name__, attr)
    keras_backup = distribute.worker_callbacks([keras.callbacks.BackupAndRestore(os.path.join(out, "b"))],
                                               other_info, out)[0]
    assert isinstance(keras_backup, distribute.WorkerBackupAndRestore)
    assert keras_backup.reader.backup_dir == os.path.join(out, "b")
    assert not keras_backup.writer.backup_dir.startswith(out)


# ----- two workers against one process -------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from mrcnn.engine import distribute
    strategy = distribute.make_strategy("multi-worker")  # first: it configures the runtime's cluster
    import tensorflow as tf
    # The stock-ops RoIAlign's CPU gradient races between threads without this.
    tf.config.experimental.enable_op_determinism()
    import keras
    sys.path.insert(0, sys.argv[1])
    from conftest import TinyConfig
    from mrcnn import MaskRCNN
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.data.synthetic import ShapesDataset
    from mrcnn.engine.training import default_callbacks

    out = sys.argv[2]
    info = distribute.worker_info(strategy)
    n = info.num_workers
    # Samples large enough to take every candidate: the losses are then deterministic.
    fields = dict(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, RPN_TRAIN_ANCHORS_PER_IMAGE=2048, TRAIN_ROIS_PER_IMAGE=512,
                  POST_NMS_ROIS_TRAINING=100, TRAIN_FLIP_PROB=0.0, WARMUP_STEPS=0, GRADIENT_CLIP_NORM=None,
                  ROI_ALIGN_IMPLEMENTATION="portable")
    config = TinyConfig(IMAGES_PER_GPU=1, **fields)
    ds = ShapesDataset(); ds.load_shapes(n, height=64, width=64, seed=7)
    batch = next(iter(build_dataset(ds, config, training=False, batch_size=n)))

    def worker_input(context):  # worker i trains on image i of the batch
        i = context.input_pipeline_id
        return tf.data.Dataset.from_tensors({k: v[i:i + 1] for k, v in batch.items()}).repeat()

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = MaskRCNN(config)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    initial = model.get_weights()
    distribute.enable_multi_worker_fit(model)
    callbacks = distribute.worker_callbacks(default_callbacks(out, tensorboard=False), info, out)
    history = model.fit(strategy.distribute_datasets_from_function(worker_input), epochs=3, steps_per_epoch=1,
                        verbose=0, callbacks=callbacks).history
    np.savez(os.path.join(out, f"worker{info.task_index}.npz"), *model.get_weights())
    result = {"replicas": strategy.num_replicas_in_sync, "chief": info.is_chief, "history": history}
    if info.is_chief:  # the reference: one process, all images in one batch, same initial weights
        single = MaskRCNN(TinyConfig(IMAGES_PER_GPU=n, **fields))
        single.set_weights(initial)
        single.compile(optimizer=keras.optimizers.SGD(0.01))
        data = tf.data.Dataset.from_tensors(batch).repeat()
        result["single"] = single.fit(data, epochs=3, steps_per_epoch=1, verbose=0).history
        np.savez(os.path.join(out, "single.npz"), *single.get_weights())
        np.savez(os.path.join(out, "initial.npz"), *initial)
    print("RESULT " + json.dumps(result), flush=True)
    """
)


def _result(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _arrays(path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_match_one_process(tmp_path, num_workers):
    """n workers x 1 image = one process x n images: same losses, same weights, for 3 steps."""
    workers = Workers([sys.executable, "-c", WORKER, TESTS, str(tmp_path)], num_workers, tmp_path)
    codes = workers.wait(timeout=HANG)
    assert codes == [0] * num_workers, workers.tails()
    results = [_result(workers.output(i)) for i in range(num_workers)]
    assert [r["replicas"] for r in results] == [num_workers] * num_workers
    assert [r["chief"] for r in results] == [True] + [False] * (num_workers - 1)
    single = results[0]["single"]
    for r in results:
        for name, values in single.items():
            assert len(r["history"][name]) == 3
            for step, (got, want) in enumerate(zip(r["history"][name], values)):
                assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (name, step, got, want)
    assert single["loss"][0] > single["loss"][2] > 0  # it trained
    w0 = _arrays(tmp_path / "worker0.npz")
    ref, initial = _arrays(tmp_path / "single.npz"), _arrays(tmp_path / "initial.npz")
    # All-reduced gradients: the workers hold bit-identical weights.
    for i in range(1, num_workers):
        assert all(np.array_equal(a, b) for a, b in zip(w0, _arrays(tmp_path / f"worker{i}.npz")))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, initial))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w0, ref))
    scale = max(float(np.max(np.abs(a))) for a in ref)
    assert moved > 1e-3
    print(f"{num_workers} workers: weights moved {moved:.3g}, differ from one process by {diff:.3g} "
          f"(largest weight {scale:.3g})")
    assert diff <= 1e-4 * scale, (diff, scale, moved)
    # Only the chief wrote checkpoints into OUT (the other worker's went to a temporary folder).
    assert "epoch_003.weights.h5" in os.listdir(tmp_path / "checkpoints")
    assert not (tmp_path / "workers").exists()


# ----- the CLI: a killed worker, a restart that resumes, equal weights ------------------------
CONFIG = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import TinyConfig

    class MultiWorkerTiny(TinyConfig):
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        IMAGES_PER_GPU = 1
        ROI_ALIGN_IMPLEMENTATION = "portable"
    """
)


def _h5_arrays(path) -> dict[str, np.ndarray]:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _backup_steps(backup_dir) -> list[int]:
    if not os.path.isdir(backup_dir):
        return []
    steps = []
    for name in os.listdir(backup_dir):
        if name.endswith(".json") and name.startswith("step_"):
            steps.append(int(name[len("step_"):-len(".json")]))
    return steps


@pytest.mark.slow
def test_cli_multi_worker_kill_resume_and_equal_weights(tmp_path):
    (tmp_path / "mwcfg.py").write_text(CONFIG.format(tests=TESTS))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "mrcnn", "train", "--strategy", "multi-worker",
            "--config", f"{tmp_path / 'mwcfg.py'}:MultiWorkerTiny", "--dataset", "shapes",
            "--train-images", "8", "--val-images", "2", "--epochs", "3", "--steps-per-epoch", "5",
            "--val-steps", "1", "--seed", "5", "--check", "none", "--deterministic", "--out", str(out)]
    first = Workers(argv, 2, tmp_path, "first")
    try:
        deadline = time.monotonic() + HANG
        while not _backup_steps(out / "backup") and time.monotonic() < deadline:
            assert all(p.poll() is None for p in first.procs), first.tails()
            time.sleep(0.1)
        assert _backup_steps(out / "backup"), first.tails()
        first.kill(1)
        # The survivor fails at its next all-reduce instead of waiting for the dead peer forever
        # (a hang is what the bound catches; how soon it notices is not asserted).
        codes = first.wait(timeout=HANG)
        assert codes[0] is not None, "worker 0 hung after its peer was killed\n" + first.tails()
        assert codes[0] == 4, first.tails()
        assert "lost another worker" in first.output(0) and "start all workers again" in first.output(0)
    finally:
        first.close()
    assert "MultiWorkerMirroredStrategy: 2 workers, this is worker 0 (chief); 2 replica(s) x 1 image(s) = " \
           "global batch 2" in first.output(0), first.output(0)[-2000:]
    assert not (out / "final.weights.h5").exists()
    resumed_from = max(_backup_steps(out / "backup"))
    assert 5 <= resumed_from < 15

    second = Workers(argv, 2, tmp_path, "second")
    codes = second.wait(timeout=HANG)
    assert codes == [0, 0], second.tails()
    for i in range(2):  # both resumed from the chief's backup, at the same step
        text = second.output(i)
        assert "val_loss" in text, text[-2000:]  # validation runs through the wrapped test_step
        assert f"at global step {resumed_from} " in text, second.tails()
        assert f"from {out / 'backup' / f'step_{resumed_from:08d}.weights.h5'}" in text, second.tails()
    chief, other = out / "final.weights.h5", out / "workers" / "1" / "final.weights.h5"
    a, b = _h5_arrays(chief), _h5_arrays(other)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # Only the chief writes checkpoints and logs into --out.
    assert (out / "checkpoints").is_dir() and (out / "logs").is_dir()
    assert sorted(os.listdir(out / "workers" / "1")) == ["final.weights.h5"]
