"""A plain ``model.fit`` with ``default_callbacks`` resumes at the step after a real SIGKILL.

The child process is the user's script: ``model.fit(build_dataset(ds, cfg, training=True,
seed=0, run_dir=out), epochs=3, steps_per_epoch=8, callbacks=default_callbacks(out,
config=cfg))`` with ``BACKUP_EVERY_STEPS=3``, plus two test probes: a ``map`` that writes
a fingerprint of every batch the training loop pulls, and a callback that SIGKILLs the
process at a chosen global step (so "mid-epoch" holds on every run, whatever the timing).
docs/reliability.md cites this test.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")

SCRIPT = f'''
import json, os, signal, sys
sys.path.insert(0, {TESTS!r})
import keras
import numpy as np
import tensorflow as tf
from conftest import TinyConfig
from mrcnn import MaskRCNN
from mrcnn.data.pipeline import build_dataset
from mrcnn.data.synthetic import ShapesDataset
from mrcnn.engine import default_callbacks

out, pulls, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Cfg(TinyConfig):
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKUP_EVERY_STEPS = 3
    CHECKPOINT_MONITOR = None


cfg = Cfg()
ds = ShapesDataset()
ds.load_shapes(12, height=64, width=64, seed=3)


def record(images):  # test probe: a fingerprint of each batch the training loop pulls, in order
    x = images.numpy().astype(np.float64)
    columns = np.arange(x.shape[2], dtype=np.float64)[None, None, :, None]
    # The pixel sum names the image; the column-weighted sum also tells a flipped one apart.
    prints = [[int(round(a)), int(round(b))] for a, b in zip(x.sum(axis=(1, 2, 3)),
                                                               (x * columns).sum(axis=(1, 2, 3)))]
    with open(pulls, "a") as f:
        f.write(json.dumps(prints) + "\\n")
        f.flush()
    return images


def probe(batch):
    batch = dict(batch)
    images = tf.py_function(record, [batch["images"]], batch["images"].dtype)
    images.set_shape(batch["images"].shape)
    batch["images"] = images
    return batch


class KillAt(keras.callbacks.Callback):  # test probe: a real SIGKILL at a chosen global step
    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


keras.utils.set_random_seed(1)
model = MaskRCNN(cfg)
model.compile()
data = build_dataset(ds, cfg, training=True, seed=0, run_dir=out).map(probe)
history = model.fit(data, epochs=3, steps_per_epoch=8, verbose=0,
                    callbacks=default_callbacks(out, config=cfg, tensorboard=False, callbacks=[KillAt()]))
print("RESULT " + json.dumps({{"iterations": int(model.optimizer.iterations.numpy()),
                              "epochs_run": len(history.history.get("loss", []))}}), flush=True)
'''


def _run(script, out, pulls, kill_at=0):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(script), str(out), str(pulls), str(kill_at)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _pulls(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _result(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_plain_fit_killed_mid_epoch_resumes_at_the_step_on_the_same_batches(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = _run(script, ref_out, tmp_path / "ref.jsonl")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _result(ref) == {"iterations": 24, "epochs_run": 3}
    # The input is pulled up to two batches ahead of training (prefetch): the first 24 are trained on.
    want = _pulls(tmp_path / "ref.jsonl")
    assert 24 <= len(want) <= 26
    want = want[:24]

    # Killed at global step 13: epoch 2, step 5 of 8; the newest backup is step 12.
    killed = _run(script, out, tmp_path / "killed.jsonl", kill_at=13)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_001.weights.h5"]
    steps = sorted(int(n[5:13]) for n in os.listdir(out / "backup") if n.endswith(".json"))
    assert steps[-1] == 12

    resumed = _run(script, out, tmp_path / "resumed.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "fit continues at global step 12 (epoch 2, step 4 of 8)" in log, log[-3000:]
    assert "taking over stale lock" in log  # the killed run's lock was left behind
    # 12 more steps: the rest of epoch 2 (its end at step 16 as planned) and epoch 3.
    assert _result(resumed) == {"iterations": 24, "epochs_run": 2}
    resumed_pulls = _pulls(tmp_path / "resumed.jsonl")
    assert 12 <= len(resumed_pulls) <= 14
    got = _pulls(tmp_path / "killed.jsonl")[:12] + resumed_pulls[:12]
    assert got == want  # every batch the uninterrupted run trained on, in its order, none twice

    with open(out / "logs" / "history.jsonl") as f:
        history = [json.loads(line) for line in f]
    complete = [(h["epoch"], h["step"]) for h in history if not h.get("partial")]
    assert complete == [(1, 8), (2, 16), (3, 24)]
    assert sorted(os.listdir(out / "checkpoints")) == [f"epoch_00{i}.weights.h5" for i in (1, 2, 3)]

    # The finished plan run again: says so and trains nothing.
    again = _run(script, out, tmp_path / "again.jsonl")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished: 3 epochs x 8 steps done" in again.stdout
    assert "call fit with more epochs (e.g. epochs=4)" in again.stdout
    assert _result(again) == {"iterations": 24, "epochs_run": 0}
    assert not os.path.exists(tmp_path / "again.jsonl")
