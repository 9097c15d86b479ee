"""Optimizers and learning-rate schedules (Detectron2's ``solver``): what ``MaskRCNN.compile()``
builds from the Config. Below the model floor: the model uses it, it never uses the model."""

from mrcnn.solver.optimizer import make_optimizer, make_schedule

__all__ = ["make_optimizer", "make_schedule"]
