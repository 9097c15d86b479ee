"""A tiny generated VIA dataset in balloon.py's layout: ``<root>/{train,val}/*.png`` and
``via_region_data.json`` with one polygon region per balloon (VGG Image Annotator's format)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def balloon_polygon(cy: float, cx: float, ry: float, rx: float, points: int = 16) -> tuple[list[int], list[int]]:
    """An ellipse as a polygon: (all_points_x, all_points_y), integer pixels."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return [int(round(cx + rx * np.cos(a))) for a in t], [int(round(cy + ry * np.sin(a))) for a in t]


def make_via_dataset(root: str | os.PathLike, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (96, 128),
                     seed: int = 0) -> dict[str, list[dict]]:
    """Write the dataset; returns {subset: [{"filename", "polygons": [(xs, ys), ...]}]}.

    Each picture is a gray-green noisy background with one or two red ellipses ("balloons");
    one extra unannotated picture per subset is listed with empty regions (balloon.py skips
    it, as VIA files list unannotated images too).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    written: dict[str, list[dict]] = {}
    for subset, count in (("train", n_train), ("val", n_val)):
        folder = os.path.join(os.fspath(root), subset)
        os.makedirs(folder, exist_ok=True)
        via, items = {}, []
        for i in range(count + 1):
            image = np.clip(rng.normal([90, 120, 90], 12, (height, width, 3)), 0, 255).astype(np.uint8)
            polygons = []
            if i < count:
                for _ in range(1 + i % 2):
                    ry, rx = rng.uniform(12, 22), rng.uniform(10, 18)
                    cy, cx = rng.uniform(ry + 2, height - ry - 2), rng.uniform(rx + 2, width - rx - 2)
                    xs, ys = balloon_polygon(cy, cx, ry, rx)
                    yy, xx = np.mgrid[:height, :width]
                    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                    image[inside] = (220, 30, 40)
                    polygons.append((xs, ys))
            filename = f"{subset}_{i:03d}.png"
            Image.fromarray(image).save(os.path.join(folder, filename))
            size_bytes = os.path.getsize(os.path.join(folder, filename))
            via[f"{filename}{size_bytes}"] = {
                "filename": filename,
                "size": size_bytes,
                "regions": {str(k): {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                                     "region_attributes": {}} for k, (xs, ys) in enumerate(polygons)},
                "file_attributes": {},
            }
            if polygons:
                items.append({"filename": filename, "polygons": polygons})
        with open(os.path.join(folder, "via_region_data.json"), "w", encoding="utf-8") as f:
            json.dump(via, f)
        written[subset] = items
    return written
