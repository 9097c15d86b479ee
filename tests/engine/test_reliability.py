"""Real faults against `mrcnn train`: SIGKILL mid-epoch, SIGTERM, a kill during a write.

Each test runs the CLI in a subprocess on the synthetic shapes data with a tiny
network (64x64 inputs) and checks what the next start of the *same command*
does. docs/reliability.md cites these tests.
"""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")

CONFIG = f'''
import sys
sys.path.insert(0, {TESTS!r})
from conftest import TinyConfig


class RelConfig(TinyConfig):
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKUP_EVERY_STEPS = 10
    STEPS_PER_EPOCH = 15
    CHECKPOINT_MONITOR = None
    # Sampling takes every candidate: a resumed process restarts TF's stateful
    # random kernels, so exact equality with an uninterrupted run needs sampling
    # that does not depend on them (1023 anchors at 64x64 <= 1024; <= 206 RoIs
    # <= 256 with no positive cap). See docs/reliability.md.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 1024
    TRAIN_ROIS_PER_IMAGE = 256
    ROI_POSITIVE_RATIO = 1.0
'''


def _command(cfg, out, epochs=3):
    return [sys.executable, "-m", "mrcnn", "train", "--config", f"{cfg}:RelConfig", "--dataset", "shapes",
            "--train-images", "8", "--val-images", "2", "--out", str(out), "--epochs", str(epochs),
            "--seed", "5", "--deterministic", "--check", "none"]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_DETERMINISTIC_OPS="1", PYTHONPATH=ROOT,
               CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "relcfg.py"
    path.write_text(CONFIG)
    return str(path)


def _start(cmd, log, **env):
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the training subprocess")


def _run(cmd, **env):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj)
        f.visititems(visit)
    return out


def _history(out):
    with open(os.path.join(out, "logs", "history.jsonl")) as f:
        return [json.loads(line) for line in f]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, cfg):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    # The uninterrupted reference runs alongside the run that is killed.
    ref = _start(_command(cfg, ref_out), tmp_path / "ref.log")
    victim = _start(_command(cfg, out), tmp_path / "victim.log")
    # Step 20's backup committed (its JSON is the marker), then a few more steps: kill -9 mid-epoch 2.
    _wait_for(lambda: os.path.exists(out / "backup" / "step_00000020.json"), victim)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not os.path.exists(out / "final.weights.h5")
    assert ref.wait(timeout=900) == 0, open(tmp_path / "ref.log").read()[-3000:]

    code, log = _run(_command(cfg, out))
    assert code == 0, log[-3000:]
    resumed_at = int(log.split("resuming")[1].split("at global step ")[1].split()[0])
    assert 20 <= resumed_at < 45 and resumed_at % 10 == 0, log[-2000:]
    assert "taking over stale lock" in log  # the killed run's lock was left behind

    got, want = _weights(out / "final.weights.h5"), _weights(ref_out / "final.weights.h5")
    assert got.keys() == want.keys() and len(got) > 50
    worst = max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) if got[k].size else 0.0
                for k in got)
    history, ref_history = _history(out), _history(ref_out)
    last, ref_last = history[-1], ref_history[-1]
    keys = ("loss", "rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
    print(f"resumed at step {resumed_at}; max |weight diff| {worst:.3g}; last-epoch loss diffs "
          f"{ {k: abs(last[k] - ref_last[k]) for k in keys} }")
    assert worst <= 1e-5, worst
    assert last["epoch"] == ref_last["epoch"] == 3 and not last.get("partial")
    # Every epoch's logged means, the one resumed mid-way included (its running means go on
    # from the backup's sums), equal the uninterrupted run's.
    assert [h["epoch"] for h in history] == [h["epoch"] for h in ref_history] == [1, 2, 3]
    for got_epoch, want_epoch in zip(history, ref_history):
        for key in keys:
            assert abs(got_epoch[key] - want_epoch[key]) <= 1e-5, (got_epoch["epoch"], key, got_epoch[key],
                                                                   want_epoch[key])
    # A completed run is not trained again by the same command.
    code, log = _run(_command(cfg, out))
    assert code == 0 and "already completed 3 epochs" in log


@pytest.mark.slow
def test_sigterm_checkpoints_then_exits_and_the_same_command_resumes(tmp_path, cfg):
    out = tmp_path / "run"
    proc = _start(_command(cfg, out), tmp_path / "run.log")
    epoch1 = out / "checkpoints" / "epoch_001.weights.h5"
    _wait_for(lambda: os.path.exists(out / "backup" / "step_00000020.json"), proc)
    before = _sha(epoch1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    log = open(tmp_path / "run.log").read()
    assert "SIGTERM: stopping after this step" in log and "run the same command again to resume" in log
    stopped = max(int(os.path.basename(p)[5:13]) for p in glob.glob(str(out / "backup" / "step_*.json")))
    assert 20 <= stopped < 45
    assert not os.path.exists(out / "checkpoints" / "epoch_002.weights.h5") or stopped >= 30

    code, log = _run(_command(cfg, out))
    assert code == 0, log[-3000:]
    assert f"at global step {stopped} " in log
    assert _sha(epoch1) == before  # the earlier epoch file is untouched
    assert sorted(os.listdir(out / "checkpoints")) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5", "epoch_003.weights.h5"]
    steps = [h["step"] for h in _history(out) if not h.get("partial")]
    assert steps == [15, 30, 45]


@pytest.mark.slow
def test_kill_during_a_backup_write_resumes_from_the_previous_backup(tmp_path, cfg):
    out = tmp_path / "run"
    # Every atomic write sleeps 3 s between writing its temporary file and renaming it.
    proc = _start(_command(cfg, out, epochs=1), tmp_path / "run.log", MRCNN_TEST_WRITE_DELAY="3")
    backup = out / "backup"
    _wait_for(lambda: os.path.exists(backup / "step_00000010.json")
              and glob.glob(str(backup / ".tmp-step_00000015.weights.h5*")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert glob.glob(str(backup / ".tmp-*"))  # the write really was in flight
    assert not os.path.exists(backup / "step_00000015.weights.h5")

    code, log = _run(_command(cfg, out, epochs=1))
    assert code == 0, log[-3000:]
    assert "at global step 10 " in log
    assert not glob.glob(str(backup / ".tmp-*"))
    assert os.path.exists(out / "final.weights.h5")


def test_same_seed_gives_the_same_initial_weights_in_two_processes():
    """What an exact resume comparison (and any reproducible run) rests on: keras.utils.set_random_seed
    fixes every initializer (a module-level unseeded initializer would be seeded at import)."""
    code = (f"import sys, hashlib, keras; sys.path.insert(0, {TESTS!r}); from conftest import TinyConfig; "
            "from mrcnn import MaskRCNN; keras.utils.set_random_seed(7); m = MaskRCNN(TinyConfig()); "
            "h = hashlib.sha256(); [h.update(v.numpy().tobytes()) for v in m.weights]; print(h.hexdigest())")
    digests = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=300).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert digests[0] == digests[1] and len(digests[0]) == 64
