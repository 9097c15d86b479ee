"""Reliability pieces with real faults: run locks, atomic writes under kill and a full file
system, torn backups, non-finite losses, bad samples, time-budget stops."""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from mrcnn import MaskRCNN
from mrcnn.data import loader
from mrcnn.data.check import DatasetCheckError, check_dataset
from mrcnn.data.dataset import Dataset
from mrcnn.data.loader import BadSampleError
from mrcnn.engine.callbacks import NonFiniteLossError, StepBackup, list_backups, restore_backup
from mrcnn.engine.runlock import RunLock, RunLockedError
from mrcnn.engine.runner import run_training
from mrcnn.fileio import atomic_save_weights, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANG = 3600  # seconds: only catches a hung subprocess; nothing here asserts speed


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")


# ----- lock ------------------------------------------------------------------------------
def test_second_run_into_the_same_folder_is_refused_and_a_dead_owner_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from mrcnn.engine.runlock import RunLock
            RunLock({str(tmp_path)!r}).acquire()
            print("locked", flush=True)
            time.sleep(120)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by another training run \\(pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The SIGKILLed owner left its lock file: stale, taken over with a warning.
    assert os.path.exists(tmp_path / "run.lock")
    with pytest.warns(UserWarning, match=f"stale lock .* pid {holder.pid}"):
        with RunLock(tmp_path) as lock:
            assert open(lock.path).read().split()[0] == str(os.getpid())
    assert not os.path.exists(tmp_path / "run.lock")


# ----- atomic writes ------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, resource, signal
    from mrcnn.fileio import atomic_write
    path, size, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        with atomic_write(path, "wb") as f:
            for _ in range(size // 65536):
                f.write(b"n" * 65536)
    except OSError as exc:
        print("OSError", exc.errno, flush=True)
        sys.exit(1)
    print("done", flush=True)
""")


def test_kill_during_write_keeps_the_old_file(tmp_path):
    """SIGKILL while atomic_write holds 4 MB in its temporary (MRCNN_TEST_WRITE_DELAY, before the
    rename): the target keeps its old content; only the temporary is torn."""
    target = tmp_path / "state.json"
    write_json(target, {"good": 1})
    env = dict(_env(), MRCNN_TEST_WRITE_DELAY="30")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(4 << 20), "0"], env=env)

    def written():  # every byte is in the temporary: the writer is inside the injected delay
        tmp = glob.glob(str(tmp_path / ".tmp-state.json.*"))
        return tmp and os.path.getsize(tmp[0]) == 4 << 20

    deadline = time.monotonic() + HANG
    while not written():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer exited or hung"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert open(target).read().replace(" ", "").replace("\n", "") == '{"good":1}'
    assert glob.glob(str(tmp_path / ".tmp-state.json.*"))  # the torn temporary, never under the real name


def test_write_that_runs_out_of_space_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "final.bin"
    target.write_bytes(b"old")
    # RLIMIT_FSIZE makes write() fail with EFBIG past 1 MB: the same code path as ENOSPC.
    out = subprocess.run([sys.executable, "-c", WRITER, str(target), str(4 << 20), str(1 << 20)],
                         env=_env(), capture_output=True, text=True, timeout=HANG)
    assert out.returncode == 1 and out.stdout.startswith("OSError"), out.stdout + out.stderr
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["final.bin"]


def _tiny_model(tiny_config, **overrides):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, **overrides)
    model = MaskRCNN(config)
    model.compile()
    model.optimizer.build(model.trainable_variables)
    return config, model


def _two_backups(tmp_path, tiny_config):
    """Backups at steps 10 and 20 of a tiny model, the kernel changed between them."""
    config, model = _tiny_model(tiny_config)
    backup = StepBackup(tmp_path, every_steps=10, steps_per_epoch=15, planned_epochs=3, extra_state={"seed": 1})
    backup.set_model(model)
    kernel = model.trainable_variables[0]
    first = kernel.numpy().copy()
    backup.step = 10
    backup.save()
    kernel.assign(first + 1.0)
    backup.step = 20
    backup.save()
    assert [s["step"] for s in list_backups(tmp_path)] == [20, 10]
    kernel.assign(first * 0.0)
    return model, kernel, first


def test_torn_backup_falls_back_to_the_previous_one_with_a_warning(tmp_path, tiny_config):
    """The newest weights file cut in half (what a crash of a non-atomic writer leaves): its size
    no longer matches the JSON, it is skipped with a warning, step 10's weights come back exactly."""
    model, kernel, first = _two_backups(tmp_path, tiny_config)
    newest = tmp_path / "step_00000020.weights.h5"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="torn backup .*step_00000020"):
        state = restore_backup(model, tmp_path)
    assert state["step"] == 10
    np.testing.assert_array_equal(kernel.numpy(), first)


def _largest_dataset_offset(path):
    """(byte offset, size) of the largest contiguous dataset in an HDF5 file."""
    found = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                found.append((obj.id.get_storage_size(), obj.id.get_offset()))
        f.visititems(visit)
    size, offset = max(found)
    return offset, size


@pytest.mark.parametrize("damage", ["weights", "header"])
def test_full_size_corrupt_backup_falls_back_to_the_previous_one(tmp_path, tiny_config, damage):
    """The newest backup keeps its recorded size but not its content. "weights": the bytes of its
    largest variable are inverted, a valid HDF5 file that loads without error: its SHA-256 no longer
    matches the JSON's. "header": the first 4 KiB are garbage, and the JSON has no checksum (as a
    backup written before checksums): h5py cannot open it. Either way a warning names the file and
    step 10's weights come back exactly."""
    model, kernel, first = _two_backups(tmp_path, tiny_config)
    newest = tmp_path / "step_00000020.weights.h5"
    data = bytearray(newest.read_bytes())
    if damage == "weights":
        offset, size = _largest_dataset_offset(newest)
        data[offset : offset + size] = bytes(255 - b for b in data[offset : offset + size])
        reason = "does not match the SHA-256"
    else:
        data[:4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        marker = tmp_path / "step_00000020.json"
        state = json.loads(marker.read_text())
        del state["weights_sha256"]
        marker.write_text(json.dumps(state))
        reason = "does not load"
    newest.write_bytes(bytes(data))
    assert newest.stat().st_size == list_backups(tmp_path)[0]["weights_bytes"]  # passes the size check
    with pytest.warns(UserWarning, match=f"step_00000020.weights.h5 .*{reason}|{reason}.*step_00000020"):
        state = restore_backup(model, tmp_path)
    assert state["step"] == 10
    np.testing.assert_array_equal(kernel.numpy(), first)


def test_atomic_save_weights_holds_optimizer_state(tmp_path, tiny_config):
    _, model = _tiny_model(tiny_config)
    model.optimizer.iterations.assign(37)
    atomic_save_weights(model, str(tmp_path / "w.weights.h5"))
    with h5py.File(tmp_path / "w.weights.h5") as f:
        names = []
        f.visit(names.append)
    assert any("optimizer" in n for n in names)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


# ----- non-finite loss ----------------------------------------------------------------------
def _shapes(n=4, seed=11):
    from samples.shapes.shapes import ShapesDataset

    ds = ShapesDataset()
    ds.load_shapes(n, seed=seed)
    return ds


def _all_weight_files_finite(folder):
    files = glob.glob(os.path.join(folder, "**", "*.weights.h5"), recursive=True)
    for path in files:
        with h5py.File(path) as f:
            bad = []

            def visit(name, obj, bad=bad):
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and not np.all(np.isfinite(obj[()])):
                    bad.append(name)
            f.visititems(visit)
            assert not bad, (path, bad[:5])
    return files


@pytest.mark.slow
def test_huge_learning_rate_stops_within_one_step_and_files_stay_finite(tmp_path, tiny_config, capsys):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, LEARNING_RATE=1e4, LR_REFERENCE_BATCH=None,
                         WARMUP_STEPS=0, GRADIENT_CLIP_NORM=None, BACKUP_EVERY_STEPS=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at global step (\d+)") as info:
        run_training(lambda: MaskRCNN(config), _shapes(), config, tmp_path / "run", epochs=2,
                     steps_per_epoch=5, seed=3, tensorboard=False, verbose=0)
    step = int(info.value.args[0].split("global step ")[1].split()[0])
    assert 2 <= step <= 10
    assert "loss" in info.value.args[0] and "the update was not applied" in info.value.args[0]
    # Backups exist for every finite step before it (BACKUP_EVERY_STEPS=1) and none after.
    steps = [s["step"] for s in list_backups(tmp_path / "run" / "backup")]
    assert max(steps) == step - 1
    files = _all_weight_files_finite(tmp_path / "run")
    assert files and not os.path.exists(tmp_path / "run" / "final.weights.h5")


@pytest.mark.slow
def test_skip_nonfinite_steps_skips_then_stops_after_n_in_a_row(tmp_path, tiny_config, capsys):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, LEARNING_RATE=1e4, LR_REFERENCE_BATCH=None,
                         WARMUP_STEPS=0, GRADIENT_CLIP_NORM=None, SKIP_NONFINITE_STEPS=2)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        run_training(lambda: MaskRCNN(config), _shapes(), config, tmp_path / "run", epochs=3,
                     steps_per_epoch=5, seed=3, tensorboard=False, verbose=0)
    printed = capsys.readouterr().out
    assert "update skipped (1 in a row, 1 in all)" in printed
    assert "update skipped (2 in a row, 2 in all)" in printed
    _all_weight_files_finite(tmp_path / "run")


# ----- signals --------------------------------------------------------------------------------
def test_first_ctrl_c_asks_for_a_stop_and_the_second_interrupts_at_once():
    """Real SIGINTs to this process: while SignalStop is installed the first one only sets
    ``signum`` and ``stop_training`` (the step finishes, the backup follows); it also puts the
    previous handler back, so a second Ctrl-C raises KeyboardInterrupt at once; at the end of
    training the handlers are as before.

    The previous handler is set to Python's own first, so the check does not depend on what
    earlier tests left: in both suites of two loaded full runs the handler found here did not
    raise on the second Ctrl-C (the test passes alone and on CI; the earlier test was not
    identified). One way to leave a dead handler, a ``run_training`` whose ``fit`` raised, is
    fixed (``release_process_state``) and checked in the bad-sample test."""
    from types import SimpleNamespace

    from mrcnn.engine.callbacks import SignalStop

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    before = signal.getsignal(signal.SIGINT)
    stop = SignalStop(verbose=False)
    stop.set_model(SimpleNamespace(stop_training=False))
    stop.on_train_begin()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.model.stop_training
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.on_train_end()
        restored = signal.signal(signal.SIGINT, outer)
    assert restored is before


# ----- a stalled input --------------------------------------------------------------------------
STALLING_FIT = """
import sys, time
import numpy as np, tensorflow as tf, keras
from mrcnn.engine.callbacks import InputStallGuard

def batches():
    for _ in range(4):
        yield np.ones((2, 4), np.float32), np.ones((2, 1), np.float32)
    print("STALLED", flush=True)
    time.sleep(3600)  # the input never delivers step 5 (a dead data worker, a hung file system)

spec = (tf.TensorSpec((2, 4), tf.float32), tf.TensorSpec((2, 1), tf.float32))
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile("sgd", "mse")
model.fit(tf.data.Dataset.from_generator(batches, output_signature=spec), epochs=1, steps_per_epoch=10,
          verbose=0, callbacks=[InputStallGuard(float(sys.argv[1]), sys.argv[2])])
print("FINISHED", flush=True)
"""


def test_a_stalled_input_ends_the_process_with_status_5_and_the_resume_hint(tmp_path):
    """A real stall: the input of step 5 never comes. The guard's watcher ends the process with
    status 5 and one line naming the backup folder; nothing after fit runs."""
    proc = subprocess.run([sys.executable, "-c", STALLING_FIT, "3", str(tmp_path / "backup")], env=_env(),
                          capture_output=True, text=True, timeout=600)  # only a broken guard gets near this
    assert proc.returncode == 5, (proc.returncode, proc.stderr[-2000:])
    assert "STALLED" in proc.stdout and "FINISHED" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mrcnn train: error:")]
    assert len(lines) == 1 and "waited more than 3 s for its input" in lines[0], proc.stderr[-2000:]
    assert lines[0].endswith(f"the same command resumes from {tmp_path / 'backup'}")


def test_input_stall_guard_lets_slow_steps_and_the_untimed_first_step_through():
    """Steps that are slow but arrive never trigger it; the first step (tracing) is not timed;
    validation after the epoch is not timed; the watcher is gone after fit."""
    import threading

    import keras
    import tensorflow as tf

    from mrcnn.engine.callbacks import InputStallGuard

    def batches():
        time.sleep(2.0)  # the first step, longer than the timeout: not timed
        for _ in range(6):
            time.sleep(0.1)
            yield np.ones((2, 4), np.float32), np.ones((2, 1), np.float32)

    exits = []
    guard = InputStallGuard(1.0, exit=exits.append)
    spec = (tf.TensorSpec((2, 4), tf.float32), tf.TensorSpec((2, 1), tf.float32))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    slow_val = tf.data.Dataset.from_tensors((np.ones((2, 4), np.float32), np.ones((2, 1), np.float32))).map(
        lambda x, y: (tf.numpy_function(lambda a: (time.sleep(2.0), a)[1], [x], tf.float32), y))
    slow_val = slow_val.map(lambda x, y: (tf.ensure_shape(x, (2, 4)), y))
    model.fit(ds, epochs=1, steps_per_epoch=6, verbose=0, validation_data=slow_val, callbacks=[guard])
    assert exits == []
    assert guard._steps == 6 and not any(t.name == "mrcnn-input-stall-guard" for t in threading.enumerate())
    with pytest.raises(ValueError, match="timeout must be > 0"):
        InputStallGuard(0)


def test_build_callbacks_adds_the_input_stall_guard_only_when_asked(tmp_path, tiny_config):
    from mrcnn.engine.callbacks import InputStallGuard
    from mrcnn.engine.hooks import build_callbacks

    config = tiny_config()
    without = build_callbacks(tmp_path / "a", config, lock=False).callbacks
    assert not any(isinstance(c, InputStallGuard) for c in without)
    (guard,) = [c for c in build_callbacks(tmp_path / "b", config, lock=False, input_timeout=600).callbacks
                if isinstance(c, InputStallGuard)]
    assert guard.timeout == 600 and guard.backup_dir == os.path.join(tmp_path / "b", "backup")


# ----- clean stop by time budget ----------------------------------------------------------------
def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.slow
def test_time_budget_stop_keeps_the_backup_and_the_same_call_resumes(tmp_path, tiny_config):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, BACKUP_EVERY_STEPS=0)
    out = tmp_path / "run"
    shapes = _shapes()

    def call(**kw):
        return run_training(lambda: MaskRCNN(config), shapes, config, out, epochs=2, steps_per_epoch=3,
                            seed=4, tensorboard=False, verbose=0, **kw)

    first = call(max_minutes=1e-6)  # the budget is spent after the first step
    assert (first.status, first.step) == ("stopped", 1)
    assert [s["step"] for s in list_backups(out / "backup")] == [1]
    assert not os.listdir(out / "checkpoints") if os.path.isdir(out / "checkpoints") else True
    done = call()
    assert done.start_step == 1 and done.status == "complete" and done.step == 6
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    again = call()
    assert again.status == "already_complete"
    with pytest.raises(Exception, match="nothing to resume"):
        run_training(lambda: MaskRCNN(config), shapes, config, tmp_path / "empty", epochs=1,
                     steps_per_epoch=3, resume="require", verbose=0)


# ----- bad samples ------------------------------------------------------------------------------
class FileShapes(Dataset):
    """Shapes rendered to JPEG files; masks and class ids kept in memory."""

    def __init__(self, folder, n=6, bad=True):
        super().__init__()
        self.add_class("s", 1, "square")
        rng = np.random.default_rng(0)
        self._gt = {}
        for i in range(n):
            image = np.full((64, 64, 3), 40, np.uint8)
            y, x = rng.integers(4, 30, 2)
            image[y : y + 24, x : x + 24] = (200, 90, 30)
            path = os.path.join(folder, f"img_{i}.jpg")
            Image.fromarray(image).save(path, quality=95)
            mask = np.zeros((64, 64, 1), bool)
            mask[y : y + 24, x : x + 24, 0] = True
            self._gt[i] = (mask, np.array([1], np.int32))
            self.add_image("s", i, path)
        if bad:
            raw = open(self.image_info[1]["path"], "rb").read()
            open(self.image_info[1]["path"], "wb").write(raw[: len(raw) // 3])  # truncated JPEG
            self._gt[3] = (np.zeros((32, 64, 1), bool), np.array([1], np.int32))  # wrong-size mask
            self._gt[4] = (self._gt[4][0], np.array([4], np.int32))  # class id 4 >= NUM_CLASSES=4
        self.prepare()

    def load_image(self, image_id):
        return np.asarray(Image.open(self.image_info[image_id]["path"]).convert("RGB"))

    def load_mask(self, image_id):
        return self._gt[image_id]


BAD = {1: "unreadable image", 3: "mask size", 4: "class id"}


def test_preflight_check_reports_every_bad_sample_by_id(tmp_path, tiny_config):
    ds = FileShapes(tmp_path)
    report = check_dataset(ds, tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64), sample=None)
    assert report.checked == 6
    assert {p.image_id: p.kind for p in report.problems} == BAD
    table = report.table()
    assert "3 bad" in table and "img_1.jpg" in table and "NUM_CLASSES=4" in table
    assert check_dataset(ds, tiny_config(), sample=2, seed=0).checked == 2


def test_bad_sample_raise_names_the_image_and_skip_finishes_the_epoch(tmp_path, tiny_config, capsys):
    ds = FileShapes(tmp_path)
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    with pytest.raises(DatasetCheckError, match=r"image ids \[1, 3, 4\]"):
        run_training(lambda: MaskRCNN(config), ds, config, tmp_path / "pre", epochs=1, steps_per_epoch=3,
                     check="all", verbose=0, tensorboard=False)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(BadSampleError) as info:
        run_training(lambda: MaskRCNN(config), ds, config, tmp_path / "raise", epochs=1, steps_per_epoch=3,
                     seed=1, verbose=0, tensorboard=False, input_timeout=600)
    # The fit raised mid-step, so Keras skipped on_train_end: the run still gave back its signal
    # handlers (Ctrl-C would otherwise reach the dead run's SignalStop) and stopped its stall watcher.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert not any(t.name == "mrcnn-input-stall-guard" for t in threading.enumerate())
    assert info.value.image_id in BAD
    assert f"image id {info.value.image_id}" in str(info.value)
    assert f"img_{info.value.image_id}.jpg" in str(info.value) and "Traceback" not in str(info.value)

    skip = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, ON_BAD_SAMPLE="skip")
    model = MaskRCNN(skip)
    with pytest.warns(UserWarning, match="skipped"):
        result = run_training(model, ds, skip, tmp_path / "skip", epochs=1,
                              steps_per_epoch=3, seed=1, verbose=0, tensorboard=False)
    assert result.status == "complete"
    # The run's own DataHealth (no module-level counters): the earlier runs' bad samples
    # in this process are not in it, and each bad id is counted once.
    counts, ids = model.data_health.snapshot()
    assert counts["bad_samples_skipped"] == 3 and sorted(ids) == [1, 3, 4]
    printed = capsys.readouterr().out
    assert "epoch 1: " in printed and "bad samples skipped: 3" in printed
    assert "skipped image ids: [" in printed


def test_build_dataset_check_raises_with_every_bad_id(tmp_path, tiny_config):
    from mrcnn.data.pipeline import build_dataset

    ds = FileShapes(tmp_path)
    with pytest.raises(DatasetCheckError, match=r"image ids \[1, 3, 4\]") as info:
        build_dataset(ds, tiny_config(), training=True, check="all")
    assert {p.image_id: p.kind for p in info.value.report.problems} == BAD


def test_decompression_bomb_names_the_path(tmp_path, tiny_config, monkeypatch):
    import PIL.Image

    ds = FileShapes(tmp_path, n=2, bad=False)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # 64x64 is then > 2x the limit
    with pytest.raises(BadSampleError, match=r"image id 0 \(path '.*img_0.jpg'\).*DecompressionBombError"):
        loader.load_instance(ds, 0, tiny_config())
    report = check_dataset(ds, tiny_config(), sample=None)
    assert [(p.image_id, p.kind) for p in report.problems] == [(0, "unreadable image"), (1, "unreadable image")]


def test_cli_resume_with_nothing_to_resume_and_restart_moves_the_old_run(tmp_path, capsys):
    from mrcnn import cli
    from mrcnn.engine.runner import _archive_previous

    out = tmp_path / "run"
    code = cli.main(["train", "--config", "samples.shapes.shapes:ShapesDemoConfig", "--dataset", "shapes",
                     "--train-images", "2", "--val-images", "1", "--out", str(out), "--resume", "--check", "none"])
    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not os.path.exists(out / "run.lock")  # released on the error
    # --restart keeps the previous run's files, out of the way.
    (out / "backup").mkdir()
    (out / "backup" / "step_00000010.json").write_text("{}")
    (out / "final.weights.h5").write_bytes(b"w")
    moved = _archive_previous(str(out))
    assert sorted(os.listdir(moved)) == ["backup", "final.weights.h5"]
    assert not os.path.exists(out / "backup") and not os.path.exists(out / "final.weights.h5")
