"""Optimiser, learning-rate schedule and the standard callbacks for ``model.fit``."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from mrcnn.config import Config


@keras.saving.register_keras_serializable(package="mrcnn")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base_lr * warmup_factor``, then x0.1 at each of ``steps``.

    torchvision's / Detectron2's "WarmupMultiStepLR" with linear warm-up.
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
        if self.warmup_steps > 0:
            alpha = tf.minimum(step / self.warmup_steps, 1.0)
            decay = decay * (self.warmup_factor * (1.0 - alpha) + alpha)
        return self.base_lr * decay

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "steps": list(self.steps),
            "gamma": self.gamma,
        }


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    """SGD with momentum, weight decay on everything but norm parameters (Detectron2)."""
    schedule = WarmupStepDecay(
        config.LEARNING_RATE, config.WARMUP_STEPS, config.WARMUP_FACTOR, config.LR_STEPS
    )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=config.LEARNING_MOMENTUM,
        weight_decay=config.WEIGHT_DECAY or None,
        global_clipnorm=config.GRADIENT_CLIP_NORM,
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return optimizer


def default_callbacks(
    out_dir: str,
    checkpoint_every_epoch: bool = True,
    tensorboard: bool = True,
    backup: bool = True,
) -> list[keras.callbacks.Callback]:
    """Checkpoint (weights each epoch + last), TensorBoard, BackupAndRestore under ``out_dir``.

    ``BackupAndRestore`` lets an interrupted ``fit`` resume from the last finished
    epoch when started again with the same ``out_dir``.
    """
    os.makedirs(out_dir, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = []
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup")))
    if checkpoint_every_epoch:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                os.path.join(out_dir, "checkpoints", "epoch_{epoch:03d}.weights.h5"),
                save_weights_only=True,
            )
        )
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), write_graph=False))
    return callbacks
