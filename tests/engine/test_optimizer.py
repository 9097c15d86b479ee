"""The optimiser step is torch's SGD, norm parameters are not decayed, the schedule's values."""

import math

import keras
import numpy as np
import pytest

from mrcnn import Config
from mrcnn.solver.optimizer import (
    TorchSGD,
    WarmupCosineDecay,
    WarmupStepDecay,
    auto_lr_steps,
    describe_optimizer,
    make_optimizer,
    make_schedule,
)


def torch_sgd_reference(params, grads_per_step, lrs, momentum, wd, decayed):
    """torch.optim.SGD (dampening 0, no nesterov) written out in NumPy, float64."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    bufs = {}
    for grads, lr in zip(grads_per_step, lrs):
        for k, p in params.items():
            d = grads[k].astype(np.float64) + (wd * p if decayed[k] else 0.0)
            bufs[k] = d if k not in bufs else momentum * bufs[k] + d
            params[k] = p - lr * bufs[k]
    return params


def _variables(rng):
    kernel = keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="kernel")
    bias = keras.Variable(rng.normal(size=(4,)).astype(np.float32), name="bias")
    gamma = keras.Variable(rng.normal(1.0, 0.1, size=(4,)).astype(np.float32), name="gamma")
    beta = keras.Variable(rng.normal(size=(4,)).astype(np.float32), name="beta")
    return [kernel, bias, gamma, beta]


@pytest.mark.parametrize("norm_wd", [0.0, 1e-4])
def test_two_steps_equal_torch_sgd_formula(norm_wd):
    rng = np.random.default_rng(0)
    variables = _variables(rng)
    start = {v.name: v.numpy() for v in variables}
    # Large weight decay relative to the gradients so that a decoupled or missing
    # decay would show far above the tolerance; lr changes between the steps so
    # that accumulating lr*g (Keras SGD) instead of g (torch) would show too.
    wd, momentum, lrs = 1e-4, 0.9, [0.5, 0.25]
    schedule = WarmupStepDecay(lrs[0], warmup_steps=0, steps=(1,), gamma=0.5)
    opt = TorchSGD(learning_rate=schedule, momentum=momentum, weight_decay=wd, norm_weight_decay=norm_wd)
    grads_per_step = [{v.name: rng.normal(size=v.shape).astype(np.float32) * 1e-3 for v in variables}
                      for _ in range(2)]
    for grads in grads_per_step:
        opt.apply_gradients([(grads[v.name], v) for v in variables])
    decayed = {"kernel": True, "bias": True, "gamma": norm_wd > 0, "beta": norm_wd > 0}
    if norm_wd:
        assert norm_wd == wd  # the reference below uses one coefficient
    expected = torch_sgd_reference(start, grads_per_step, lrs, momentum, wd, decayed)
    for v in variables:
        np.testing.assert_allclose(v.numpy(), expected[v.name], rtol=0, atol=1e-6)
    # The decay's contribution is well above the tolerance: without it, kernel differs.
    no_decay = torch_sgd_reference(start, grads_per_step, lrs, momentum, 0.0, decayed)
    assert np.abs(no_decay["kernel"] - expected["kernel"]).max() > 1e-5


def test_keras_decoupled_sgd_is_not_torch():
    """The reason for TorchSGD: Keras' SGD(weight_decay) misses torch's step by far more than 1e-6."""
    rng = np.random.default_rng(1)
    w = keras.Variable(rng.normal(size=(50,)).astype(np.float32) * 10, name="kernel")
    start = {"kernel": w.numpy()}
    grads = [{"kernel": np.zeros(50, np.float32)} for _ in range(2)]
    opt = keras.optimizers.SGD(learning_rate=0.5, momentum=0.9, weight_decay=1e-2)
    for g in grads:
        opt.apply_gradients([(g["kernel"], w)])
    expected = torch_sgd_reference(start, grads, [0.5, 0.5], 0.9, 1e-2, {"kernel": True})
    assert np.abs(w.numpy() - expected["kernel"]).max() > 1e-3


def test_norm_variables_excluded_in_a_model():
    """In a real Keras model (Dense + GroupNorm + BatchNorm), only gammas/betas escape the decay."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.GroupNormalization(2),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    opt = TorchSGD(learning_rate=1.0, momentum=0.0, weight_decay=0.1)
    before = [v.numpy().copy() for v in model.trainable_variables]
    opt.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    names = []
    for v, b in zip(model.trainable_variables, before):
        shrunk = not np.allclose(v.numpy(), b)
        names.append(v.name)
        if v.name in ("gamma", "beta"):
            np.testing.assert_array_equal(v.numpy(), b)
        elif np.any(b != 0):
            assert shrunk
            np.testing.assert_allclose(v.numpy(), b * 0.9, rtol=1e-6)
    assert names.count("gamma") == 2 and names.count("beta") == 2


def test_optimizer_serialises():
    opt = TorchSGD(learning_rate=WarmupCosineDecay(0.1, 100, 10), momentum=0.9, weight_decay=1e-4,
                   norm_weight_decay=0.0, global_clipnorm=5.0)
    again = TorchSGD.from_config(opt.get_config())
    assert (again.l2, again.norm_l2, again.momentum, again.global_clipnorm) == (1e-4, 0.0, 0.9, 5.0)
    assert isinstance(again._learning_rate, WarmupCosineDecay) and again._learning_rate.total_steps == 100
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, TorchSGD) and restored.l2 == 1e-4


def test_effective_lr_is_linear_in_the_global_batch():
    assert Config(IMAGES_PER_GPU=2).effective_lr() == pytest.approx(0.0025)
    assert Config(IMAGES_PER_GPU=2, GPU_COUNT=8).effective_lr() == pytest.approx(0.02)
    assert Config(IMAGES_PER_GPU=4, LR_REFERENCE_BATCH=None).effective_lr() == pytest.approx(0.02)
    line = describe_optimizer(Config(IMAGES_PER_GPU=2, TOTAL_STEPS=900))
    assert "lr 0.0025" in line and "[600, 800]" in line and "weight decay 0.0001" in line


def test_step_schedule_at_boundaries():
    assert auto_lr_steps(90000) == (60000, 80000)
    config = Config(IMAGES_PER_GPU=2, WARMUP_STEPS=10, WARMUP_FACTOR=0.001, TOTAL_STEPS=900)
    s = make_schedule(config, 900)
    assert s.steps == (600, 800)
    base = 0.0025
    assert float(s(0)) == pytest.approx(base * 0.001)
    assert float(s(5)) == pytest.approx(base * (0.001 * 0.5 + 0.5))
    assert float(s(10)) == pytest.approx(base)
    assert float(s(599)) == pytest.approx(base)
    assert float(s(600)) == pytest.approx(base * 0.1)
    assert float(s(799)) == pytest.approx(base * 0.1)
    assert float(s(800)) == pytest.approx(base * 0.01)
    # Explicit LR_STEPS win; unknown length without LR_STEPS = constant after warm-up.
    assert make_schedule(Config(LR_STEPS=(100,)), 900).steps == (100,)
    assert make_schedule(Config(), None).steps == ()
    # The length from epochs x STEPS_PER_EPOCH.
    opt = make_optimizer(Config(STEPS_PER_EPOCH=30), epochs=3, verbose=False)
    assert opt.learning_rate is not None and opt._learning_rate.steps == (60, 80)


def test_cosine_schedule_values():
    config = Config(IMAGES_PER_GPU=16, LR_SCHEDULE="cosine", WARMUP_STEPS=0, TOTAL_STEPS=100)
    s = make_schedule(config, 100)
    assert isinstance(s, WarmupCosineDecay)
    assert float(s(0)) == pytest.approx(0.02)
    assert float(s(50)) == pytest.approx(0.01)
    assert float(s(25)) == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert float(s(100)) == pytest.approx(0.0, abs=1e-9) and float(s(150)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="TOTAL_STEPS"):
        make_schedule(Config(LR_SCHEDULE="cosine"), None)


def test_adamw_stays_available():
    opt = make_optimizer(Config(OPTIMIZER="adamw", LEARNING_RATE=8e-3, IMAGES_PER_GPU=2), verbose=False)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert float(opt._learning_rate(10**6)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="OPTIMIZER"):
        Config(OPTIMIZER="lamb")
    with pytest.raises(ValueError, match="WEIGHT_DECAY_NORM"):
        Config(OPTIMIZER="adamw", WEIGHT_DECAY_NORM=0.5)
