"""The documented path ``mrcnn.training``: ``default_callbacks`` (the one builder,
:mod:`mrcnn.engine.hooks`) and the optimizer builders of :mod:`mrcnn.solver`."""

from __future__ import annotations

from mrcnn.engine.hooks import default_callbacks  # noqa: F401  (re-exported: documented path)
from mrcnn.solver.optimizer import (  # noqa: F401  (re-exported: mrcnn.training's documented names)
    TorchSGD,
    WarmupCosineDecay,
    WarmupStepDecay,
    auto_lr_steps,
    describe_optimizer,
    make_optimizer,
    make_schedule,
    planned_steps,
    with_loss_scaling,
)
