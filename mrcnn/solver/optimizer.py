"""The optimizer and learning-rate schedules the Config describes (torch-semantics SGD, AdamW,
warm-up + step or cosine decay, weight decay without the norms, loss scaling)."""

from __future__ import annotations

import math
import re
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from mrcnn.config import Config

# Variables that are the affine parameters of a normalisation layer (BatchNorm,
# GroupNorm, LayerNorm and FrozenBatchNorm all name them so): Detectron2's
# WEIGHT_DECAY_NORM applies to these.
NORM_VARIABLE_NAMES = ("gamma", "beta")
# Matches "gamma", "layer/gamma" and TF's "gamma:0" (the TF backend hands the
# optimizer the underlying tf.Variable inside a distribution strategy update).
NORM_VARIABLE_PATTERN = r"(^|/)(" + "|".join(NORM_VARIABLE_NAMES) + r")(:\d+)?$"


def _warmup_factor(step: tf.Tensor, warmup_steps: int, warmup_factor: float) -> tf.Tensor:
    """Linear warm-up multiplier: warmup_factor at step 0, 1 from ``warmup_steps`` on."""
    if warmup_steps <= 0:
        return tf.constant(1.0)
    alpha = tf.minimum(step / warmup_steps, 1.0)
    return warmup_factor * (1.0 - alpha) + alpha


@keras.saving.register_keras_serializable(package="mrcnn")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base_lr * warmup_factor``, then x ``gamma`` at each of ``steps``.

    torchvision's / Detectron2's "WarmupMultiStepLR" with linear warm-up (the
    warm-up multiplies the step decay, as Detectron2's ``WarmupParamScheduler``).
    ``step`` is the optimizer's iteration count (0 for the first update).
    """

    def __init__(self, base_lr: float, warmup_steps: int = 1000, warmup_factor: float = 0.001,
                 steps: tuple[int, ...] = (), gamma: float = 0.1):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.steps = tuple(int(s) for s in steps)
        self.gamma = float(gamma)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay = tf.constant(1.0)
        for boundary in self.steps:
            decay = decay * tf.where(step >= boundary, self.gamma, 1.0)
        return self.base_lr * decay * _warmup_factor(step, self.warmup_steps, self.warmup_factor)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "steps": list(self.steps),
            "gamma": self.gamma,
        }


@keras.saving.register_keras_serializable(package="mrcnn")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up times half a cosine: ``base_lr * w(t) * 0.5 * (1 + cos(pi * t / total))``.

    Detectron2's ``WarmupCosineLR`` (end value 0): the cosine runs over the whole
    run, ``total_steps`` steps, and stays at 0 after it.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 1000,
                 warmup_factor: float = 0.001):
        if int(total_steps) <= 0:
            raise ValueError(f"WarmupCosineDecay needs total_steps > 0, got {total_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = tf.minimum(step / float(self.total_steps), 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.base_lr * cosine * _warmup_factor(step, self.warmup_steps, self.warmup_factor)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }


@keras.saving.register_keras_serializable(package="mrcnn")
class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum and *coupled* L2 weight decay: ``torch.optim.SGD``'s update.

    Per variable ``w`` with gradient ``g`` (after clipping), learning rate ``lr``::

        d = g + wd * w                (wd = weight_decay, or norm_weight_decay for
                                       norm gammas/betas, see NORM_VARIABLE_NAMES)
        buf = momentum * buf + d      (buf starts at 0, so the first buf is d)
        w = w - lr * (d + momentum * buf if nesterov else buf)

    Keras' own ``SGD(weight_decay=...)`` instead shrinks ``w`` by ``lr * wd * w``
    outside the momentum (decoupled), about 1/(1 - momentum) = 10x weaker at
    momentum 0.9; and it accumulates ``lr * g`` in the velocity, which differs
    from torch as soon as the rate changes. This class is torch's formula
    exactly (torchvision's and Detectron2's training recipe).

    Args:
        weight_decay: L2 coefficient for every trainable variable but norm ones.
        norm_weight_decay: the coefficient for variables named like a norm
            layer's affine parameters (``gamma``/``beta``); Detectron2 uses 0.
        Other arguments as ``keras.optimizers.SGD``.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 norm_weight_decay=0.0, name="torch_sgd", **kwargs):
        # The base class's decoupled decay stays off (None): ours is in update_step.
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), nesterov=nesterov,
                         weight_decay=None, name=name, **kwargs)
        self.l2 = float(weight_decay or 0.0)
        self.norm_l2 = float(norm_weight_decay or 0.0)
        self._norm_pattern = re.compile(NORM_VARIABLE_PATTERN)

    def is_norm_variable(self, variable) -> bool:
        """True for a normalisation layer's gamma/beta (matched on the variable's own name)."""
        return self._norm_pattern.search(variable.name) is not None

    def _decay_for(self, variable) -> float:
        return self.norm_l2 if self.is_norm_variable(variable) else self.l2

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        wd = self._decay_for(variable)  # a Python float: decided once per variable at trace time
        if wd:
            g = ops.add(g, ops.multiply(ops.cast(wd, variable.dtype), variable))
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(lr, g))
            return
        buf = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buf, ops.add(ops.multiply(momentum, buf), g))
        step = ops.add(g, ops.multiply(momentum, buf)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(lr, step))

    def get_config(self):
        config = super().get_config()
        config.update({"weight_decay": self.l2, "norm_weight_decay": self.norm_l2})
        return config


def planned_steps(config: Config, total_steps: int | None = None, epochs: int | None = None) -> int | None:
    """Length of the run in global steps: ``total_steps``, else ``epochs x STEPS_PER_EPOCH``,
    else ``config.TOTAL_STEPS`` (None when none is known)."""
    if total_steps is not None:
        return int(total_steps)
    if epochs is not None:
        return int(epochs) * int(config.STEPS_PER_EPOCH)
    return None if config.TOTAL_STEPS is None else int(config.TOTAL_STEPS)


def auto_lr_steps(total_steps: int) -> tuple[int, ...]:
    """The decay steps at 2/3 and 8/9 of a run (the 1x schedule: 60k and 80k of 90k)."""
    return (int(round(total_steps * 2 / 3)), int(round(total_steps * 8 / 9)))


def make_schedule(config: Config, total_steps: int | None = None) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule of ``config`` for a run of ``total_steps`` (None = TOTAL_STEPS).

    Base rate ``config.effective_lr()``; "step": decays at LR_STEPS, or at
    :func:`auto_lr_steps` when LR_STEPS is empty and the length is known;
    "cosine" needs the length (ValueError otherwise).
    """
    base_lr = config.effective_lr()
    total_steps = planned_steps(config, total_steps)
    if config.LR_SCHEDULE == "cosine":
        if total_steps is None:
            raise ValueError("Config.LR_SCHEDULE='cosine' needs the run's length: set Config.TOTAL_STEPS "
                             "or pass total_steps/epochs to make_optimizer")
        return WarmupCosineDecay(base_lr, total_steps, config.WARMUP_STEPS, config.WARMUP_FACTOR)
    steps = tuple(config.LR_STEPS)
    if not steps and total_steps is not None:
        steps = auto_lr_steps(total_steps)
    return WarmupStepDecay(base_lr, config.WARMUP_STEPS, config.WARMUP_FACTOR, steps)


def describe_optimizer(config: Config, total_steps: int | None = None) -> str:
    """One line saying the optimizer, the scaled rate and the schedule (printed by make_optimizer)."""
    lr = config.effective_lr()
    if config.LR_REFERENCE_BATCH is None:
        rate = f"lr {lr:g}"
    else:
        rate = (f"lr {lr:g} (= LEARNING_RATE {config.LEARNING_RATE:g} x {config.BATCH_SIZE} images"
                f" / {config.LR_REFERENCE_BATCH})")
    if config.OPTIMIZER == "sgd":
        name = (f"SGD momentum {config.LEARNING_MOMENTUM:g}, L2 weight decay {config.WEIGHT_DECAY:g}"
                f" (norm {config.WEIGHT_DECAY_NORM:g})")
    else:
        name = f"AdamW weight decay {config.WEIGHT_DECAY:g} (norm {config.WEIGHT_DECAY_NORM:g})"
    schedule = make_schedule(config, total_steps)
    if isinstance(schedule, WarmupCosineDecay):
        plan = f"cosine to 0 over {schedule.total_steps} steps"
    elif schedule.steps:
        plan = f"x0.1 at steps {list(schedule.steps)}"
    else:
        plan = "constant (run length unknown: set TOTAL_STEPS or LR_STEPS)"
    warm = f", warm-up {config.WARMUP_STEPS} steps from x{config.WARMUP_FACTOR:g}" if config.WARMUP_STEPS else ""
    return f"[mrcnn] {name}; {rate}{warm}; then {plan}"


def make_optimizer(config: Config, total_steps: int | None = None, epochs: int | None = None,
                   verbose: bool = True) -> keras.optimizers.Optimizer:
    """The optimizer of ``config`` with its warm-up + step (or cosine) schedule.

    Args:
        config: reads OPTIMIZER, LEARNING_RATE/LR_REFERENCE_BATCH (via
            ``effective_lr()``), LEARNING_MOMENTUM, WEIGHT_DECAY, WEIGHT_DECAY_NORM,
            LR_SCHEDULE, WARMUP_*, LR_STEPS, TOTAL_STEPS, GRADIENT_CLIP_NORM.
        total_steps / epochs: the run's planned length (see :func:`planned_steps`);
            it places the automatic decay steps and the cosine.
        verbose: print :func:`describe_optimizer`'s line.

    "sgd" is :class:`TorchSGD` (torch semantics, coupled L2); "adamw" is Keras'
    AdamW (decoupled by definition) with norm parameters excluded when
    WEIGHT_DECAY_NORM is 0. With ``MIXED_PRECISION="float16"`` it is wrapped in a
    dynamic ``keras.optimizers.LossScaleOptimizer``.
    """
    total = planned_steps(config, total_steps, epochs)
    schedule = make_schedule(config, total)
    if verbose:
        print(describe_optimizer(config, total), flush=True)
    if config.OPTIMIZER == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=config.WEIGHT_DECAY or None,
            global_clipnorm=config.GRADIENT_CLIP_NORM,
        )
        if not config.WEIGHT_DECAY_NORM:
            optimizer.exclude_from_weight_decay(var_names=[NORM_VARIABLE_PATTERN])
    else:
        optimizer = TorchSGD(
            learning_rate=schedule,
            momentum=config.LEARNING_MOMENTUM,
            weight_decay=config.WEIGHT_DECAY,
            norm_weight_decay=config.WEIGHT_DECAY_NORM,
            global_clipnorm=config.GRADIENT_CLIP_NORM,
        )
    if verbose and config.MIXED_PRECISION == "float16":
        print("[mrcnn] float16 compute: dynamic loss scaling (initial 2^15)", flush=True)
    return with_loss_scaling(optimizer, config)


def with_loss_scaling(optimizer: keras.optimizers.Optimizer, config: Config) -> keras.optimizers.Optimizer:
    """``optimizer`` in a dynamic ``LossScaleOptimizer`` when ``config.MIXED_PRECISION`` is
    "float16" and it is not one already (the fixed x1 guard of ``runner.guard_optimizer``
    is replaced by one around the same inner optimizer); else ``optimizer`` itself.

    float16 gradients underflow without scaling; bfloat16 has float32's exponent range
    and needs none. Dynamic: from 2^15, x2 after 2000 finite steps, /2 and the step
    skipped on an overflow.
    """
    if config.MIXED_PRECISION != "float16":
        return optimizer
    if is_nonfinite_guard(optimizer):
        # float16 needs a real scale, and the dynamic scaler skips non-finite steps as well.
        optimizer = optimizer.inner_optimizer
    elif isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer  # a real (dynamic) scaler already
    return keras.optimizers.LossScaleOptimizer(optimizer)


# dynamic_growth_steps of the fixed-scale (x1) LossScaleOptimizer that only detects
# non-finite gradients (mrcnn.engine.runner.guard_optimizer): a growth that never comes.
FIXED_SCALE_GROWTH_STEPS = 2**31 - 1


def is_nonfinite_guard(optimizer: Any) -> bool:
    """True for ``runner.guard_optimizer``'s fixed x1 ``LossScaleOptimizer`` (a non-finite
    step detector), False for a real dynamic loss scaler or a bare optimizer."""
    return (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            and optimizer.dynamic_growth_steps >= FIXED_SCALE_GROWTH_STEPS)
