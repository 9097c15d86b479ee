"""mrcnn: Mask R-CNN for Keras 3 on TensorFlow."""

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset

__version__ = "0.1.0"
__all__ = ["Config", "Dataset", "MaskRCNN", "__version__"]


def __getattr__(name: str):
    # The model pulls in TensorFlow; keep `import mrcnn` light for config/data users.
    if name == "MaskRCNN":
        from mrcnn.model import MaskRCNN

        return MaskRCNN
    raise AttributeError(f"module 'mrcnn' has no attribute {name!r}")
