"""mrcnn: Mask R-CNN for Keras 3 on TensorFlow.

``Config`` and ``Dataset`` are light (NumPy only); ``MaskRCNN`` is resolved on first
access because it imports TensorFlow. ``import mrcnn`` also installs two import hooks
(:mod:`mrcnn._env`): TensorFlow's start-up log noise is filtered by
``TF_CPP_MIN_LOG_LEVEL``, and the first import of Keras registers mrcnn's serializable
classes, so ``keras.models.load_model("m.keras")`` works after ``import mrcnn`` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset

if TYPE_CHECKING:  # pragma: no cover
    from mrcnn.model import MaskRCNN

__version__ = "0.1.0"
__all__ = ["Config", "Dataset", "MaskRCNN", "__version__"]


def __getattr__(name: str) -> Any:
    # The model pulls in TensorFlow; keep `import mrcnn` light for config/data users.
    if name == "MaskRCNN":
        from mrcnn.model import MaskRCNN

        globals()["MaskRCNN"] = MaskRCNN
        return MaskRCNN
    raise AttributeError(f"module 'mrcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# Last, so that a Keras already imported can import mrcnn.model against a complete package.
from mrcnn import _env  # noqa: E402

_env.install()
