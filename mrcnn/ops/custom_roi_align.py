"""Loader for the custom RoIAlign op (C++/CUDA, ``custom_ops/``).

Not built yet in this revision: ``is_available()`` is False and "auto" falls back to
the portable path.
"""

from __future__ import annotations

import warnings

_warned = False


def is_available(warn: bool = False) -> bool:
    global _warned
    if warn and not _warned:
        _warned = True
        warnings.warn(
            "mrcnn: the custom RoIAlign op is not built; using the stock-ops path",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned):
    raise RuntimeError("the custom RoIAlign op is not available in this build")
