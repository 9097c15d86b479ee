"""Test-only helper: import torchvision when its compiled ops cannot load.

torchvision wheels from PyPI are CUDA builds; with a CPU-only torch their ``_C``
extension does not load and ``import torchvision`` fails in
``_meta_registrations`` ("operator torchvision::nms does not exist"). This module
defines the two operators that import needs (``torchvision::nms`` and
``torchvision::qnms``) with :mod:`torch.library`, with a plain greedy NMS as the
CPU kernel, and then lets ``torchvision.ops.nms`` use it.

Without the extension torchvision's ``roi_align`` falls back to a pure-PyTorch
``_roi_align`` (wrapped in ``torch.compile``), which differs from the compiled
C++/CUDA kernels in one respect: it does not zero the samples that fall beyond
the feature map (y > H or x > W), which the kernels (and this project) do. RoIs
touching the right/bottom image border then pool different values. The shim
replaces that fallback with :func:`roi_align_kernel_semantics`, a plain
PyTorch transcription of the C++ kernel (no compile), so the reference is
torchvision as its compiled ops compute it.

Never used by the library (``mrcnn`` does not depend on torch); the parity
tests call :func:`import_torchvision`, which returns None (and the tests skip)
when torch or torchvision is not installed.
"""

from __future__ import annotations

import importlib.util

_LIB = None  # keeps the torch.library.Library alive


def _greedy_nms(boxes, scores, iou_threshold: float):
    """torchvision's NMS semantics: sort by score (descending, stable), drop IoU > threshold."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.detach().to(torch.float32)
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    over = (iou > iou_threshold).numpy()
    n = len(order)
    suppressed = [False] * n
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        row = over[i]
        for j in row[i + 1 :].nonzero()[0]:
            suppressed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.int64)]


def roi_align_kernel_semantics(input, rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned):
    """torchvision's ``roi_align`` C++ CPU kernel in PyTorch: NCHW input, rois [K, 5]."""
    import torch

    _, channels, height, width = input.shape
    k = rois.shape[0]
    out = input.new_zeros((k, channels, pooled_height, pooled_width))
    if k == 0:
        return out
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_w
    roi_h = rois[:, 4] * spatial_scale - offset - start_h
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / pooled_height
    bin_w = roi_w / pooled_width
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64)
        grid_w = grid_h.clone()
    else:
        grid_h = torch.ceil(roi_h / pooled_height).to(torch.int64)
        grid_w = torch.ceil(roi_w / pooled_width).to(torch.int64)
    batch = rois[:, 0].to(torch.int64)

    def axis(start, bin_size, grid, pooled, size):
        p = torch.arange(pooled, dtype=input.dtype)
        i = torch.arange(int(grid[0]), dtype=input.dtype)
        g = grid.to(input.dtype)
        c = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] + (
            (i[None, None, :] + 0.5) * (bin_size / g)[:, None, None])
        c = c.reshape(c.shape[0], -1)  # [k, pooled * grid], bin-major
        valid = (c >= -1.0) & (c <= size)
        c = c.clamp(min=0)
        low = c.to(torch.int64)
        at_end = low >= size - 1
        high = torch.where(at_end, size - 1, low + 1)
        low = torch.where(at_end, size - 1, low)
        c = torch.where(at_end, low.to(input.dtype), c)
        frac = c - low.to(input.dtype)
        return low, high, frac, valid

    # RoIs with the same sampling grid are pooled together, in chunks (memory).
    groups = {}
    for idx, key in enumerate(zip(grid_h.tolist(), grid_w.tolist())):
        groups.setdefault(key, []).append(idx)
    for (gh, gw), members in groups.items():
        for s in range(0, len(members), 64):
            sel = torch.tensor(members[s : s + 64], dtype=torch.int64)
            yl, yh, ly, yv = axis(start_h[sel], bin_h[sel], grid_h[sel], pooled_height, height)
            xl, xh, lx, xv = axis(start_w[sel], bin_w[sel], grid_w[sel], pooled_width, width)
            b = batch[sel][:, None, None]

            def at(yi, xi, b=b):
                return input[b, :, yi[:, :, None], xi[:, None, :]]  # [n, SY, SX, C]

            hy, hx = 1.0 - ly, 1.0 - lx
            val = (
                (hy[:, :, None] * hx[:, None, :])[..., None] * at(yl, xl)
                + (hy[:, :, None] * lx[:, None, :])[..., None] * at(yl, xh)
                + (ly[:, :, None] * hx[:, None, :])[..., None] * at(yh, xl)
                + (ly[:, :, None] * lx[:, None, :])[..., None] * at(yh, xh)
            )
            val = val * (yv[:, :, None] & xv[:, None, :])[..., None].to(val.dtype)
            n = len(sel)
            val = val.reshape(n, pooled_height, gh, pooled_width, gw, channels).sum((2, 4))
            out[sel] = val.permute(0, 3, 1, 2) / max(gh * gw, 1)
    return out


def import_torchvision():
    """Return the ``torchvision`` module (installing the shim if needed), or None if absent."""
    global _LIB
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return None
    import torch

    try:
        import torchvision

        _patch_roi_align(torchvision)
        return torchvision
    except (RuntimeError, ImportError, OSError):
        pass
    # A failed import leaves partial modules behind; drop them and retry with the ops defined.
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.impl("nms", _greedy_nms, "CPU")
    import torchvision
    import torchvision.ops.boxes as tv_boxes

    # nms() asserts that the compiled extension loaded; the operator above stands in for it.
    tv_boxes._assert_has_ops = lambda: None
    _patch_roi_align(torchvision)
    return torchvision


def _patch_roi_align(torchvision) -> None:
    import sys

    import torchvision.ops  # noqa: F401

    # (``torchvision.ops.roi_align`` the attribute is the function, not the module.)
    module = sys.modules["torchvision.ops.roi_align"]
    if not torchvision.extension._has_ops():
        module._roi_align = roi_align_kernel_semantics
