"""Every weight file: the project's own backups and checkpoints, readers of foreign
checkpoints (torchvision ``.pth``, Detectron2 ``.pkl``/``.pth``) with their key maps,
conversion into a model, ImageNet backbones and pretrained starts (``--init``).
"""

from mrcnn.checkpoint.convert import convert_detectron2, convert_torchvision

__all__ = ["convert_detectron2", "convert_torchvision"]
