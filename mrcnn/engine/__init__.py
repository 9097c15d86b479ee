"""The training run: callbacks and their one builder, backups wiring, non-finite
handling, optimizer and schedule, strategies, run folder and lock.

Imports run one way: ``engine`` uses ``model``, ``data``, ``checkpoint`` and below; nothing
below imports ``engine`` (docs/architecture.md).
"""

from mrcnn.engine.hooks import build_callbacks, default_callbacks
from mrcnn.engine.runner import TrainResult, run_training
from mrcnn.engine.training import make_optimizer

__all__ = ["TrainResult", "build_callbacks", "default_callbacks", "make_optimizer", "run_training"]
