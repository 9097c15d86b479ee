"""Drawing detections / ground truth onto images (numpy + PIL, no matplotlib).

Boxes are (y1, x1, y2, x2) in the pixel-edge convention of the data layer (the
box covers pixels y1..y2-1, x1..x2-1), in the pixels of the image drawn on.
Masks are Dataset-style bool ``[H, W, N]``. Negative class ids (crowd regions)
are labelled ``"crowd <name>"``. Keypoints are ``[N, K, 3]`` (x, y, v-or-score) in
COCO's pixel-index convention (integer x = centre of column x, which is where PIL
draws pixel x), as ``Dataset.load_keypoints`` and ``detect()`` give them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def instance_colors(n: int) -> np.ndarray:
    """``n`` well-separated bright RGB colours, uint8 ``[n, 3]`` (deterministic)."""
    # Golden-ratio hue steps keep neighbouring instances apart for any n.
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return (np.asarray(rgb, np.float64).reshape(n, 3) * 255).round().astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


def _label(class_ids: np.ndarray, i: int, class_names: Sequence[str] | None, scores) -> str:
    cid = int(class_ids[i])
    idx = abs(cid)
    name = class_names[idx] if class_names is not None and idx < len(class_names) else str(idx)
    if cid < 0:
        name = f"crowd {name}"
    if scores is not None:
        name = f"{name} {float(scores[i]):.2f}"
    return name


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray | None,
    masks: np.ndarray | None,
    class_ids: np.ndarray,
    class_names: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    alpha: float = 0.45,
    colors: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    keypoint_min_score: float = 0.0,
    mask_offsets: np.ndarray | None = None,
    min_score: float | None = None,
) -> np.ndarray:
    """Overlay instances on a copy of ``image``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (other dtypes/channels are converted like
            the training loader does).
        boxes: ``[N, 4]`` (y1, x1, y2, x2) pixel-edge, or None to skip boxes.
        masks: bool ``[H, W, N]``, or with ``mask_offsets`` a list of N bool crops
            (``detect(mask_format="box")``: memory bounded by the instances, not
            the image), or None to skip masks.
        mask_offsets: int ``[N, 2]`` (y0, x0) of each crop in the image.
        class_ids: ``[N]`` ints (negative = crowd).
        class_names: index -> name, index 0 = "BG"; None prints the id.
        scores: optional ``[N]`` confidences appended to the labels.
        alpha: mask fill opacity.
        colors: optional uint8 ``[N, 3]``; default :func:`instance_colors`.
        keypoints: optional ``[N, K, 3]`` (x, y, v) ground truth or (x, y, score)
            detections; a keypoint is drawn (a dot) when its third value is >
            ``keypoint_min_score`` (so v = 0 "not labelled" never is).
        skeleton: pairs (i, j) of 0-based keypoint indices joined by a line when
            both ends are drawn (e.g. ``config.KEYPOINT_SKELETON``).
        min_score: draw only the instances with ``scores >= min_score`` (needs
            ``scores``); None (default) draws all. ``detect()`` returns every
            detection above ``DETECTION_MIN_CONFIDENCE`` (0.05): 0.5 is a usual cut
            for a picture.

    Returns:
        uint8 ``[H, W, 3]``: masks filled semi-transparently with solid contours,
        box outlines and a "name score" label at each box's top-left corner;
        keypoints as dots joined by the skeleton's lines.
    """
    from mrcnn.data.loader import sanitize_image

    out = sanitize_image(image, "draw_instances image").astype(np.float32)
    height, width = out.shape[:2]
    class_ids = np.asarray(class_ids).reshape(-1)
    if min_score is not None:
        if scores is None:
            raise ValueError("draw_instances: min_score needs scores")
        scores = np.asarray(scores).reshape(-1)
        keep = np.flatnonzero(scores >= float(min_score))
        class_ids, scores = class_ids[keep], scores[keep]
        boxes = None if boxes is None else np.asarray(boxes).reshape(-1, 4)[keep]
        keypoints = None if keypoints is None else np.asarray(keypoints)[keep]
        if masks is not None and mask_offsets is not None:
            masks = [masks[i] for i in keep]
            mask_offsets = np.asarray(mask_offsets).reshape(-1, 2)[keep]
        elif masks is not None:
            masks = np.asarray(masks)[:, :, keep]
    n = class_ids.shape[0]
    colors = instance_colors(n) if colors is None else np.asarray(colors, np.uint8)

    if masks is not None and n and mask_offsets is not None:
        for i, (crop, (y0, x0)) in enumerate(zip(masks, np.asarray(mask_offsets).reshape(-1, 2))):
            crop = np.asarray(crop, bool)[: max(height - y0, 0), : max(width - x0, 0)]
            region = out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
            region[crop] = (1 - alpha) * region[crop] + alpha * colors[i]
            region[_boundary(crop)] = colors[i]
        masks = None
    if masks is not None and n:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != (height, width, n):
            raise ValueError(f"masks shape {masks.shape} != image [H, W, N] = {(height, width, n)}")
        for i in range(n):
            m = masks[:, :, i]
            out[m] = (1 - alpha) * out[m] + alpha * colors[i]
            out[_boundary(m)] = colors[i]
    canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))

    if boxes is not None and n:
        boxes = np.asarray(boxes, np.float64).reshape(n, 4)
        pen = ImageDraw.Draw(canvas)
        font = ImageFont.load_default()
        for i in range(n):
            y1, x1, y2, x2 = boxes[i]
            if not (x2 > x1 and y2 > y1):
                continue  # padding rows / degenerate boxes
            color = tuple(int(c) for c in colors[i])
            # PIL rectangles include both corners; the box's last pixel is x2 - 1.
            pen.rectangle(
                [float(x1), float(y1), max(float(x2) - 1, float(x1)), max(float(y2) - 1, float(y1))],
                outline=color,
                width=1,
            )
            text = _label(class_ids, i, class_names, scores)
            left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            # Label inside the box's top-left corner, clamped to the image.
            tx = int(np.clip(x1, 0, max(width - tw - 2, 0)))
            ty = int(np.clip(y1, 0, max(height - th - 2, 0)))
            pen.rectangle([tx, ty, tx + tw + 1, ty + th + 1], fill=color)
            pen.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
    if keypoints is not None and n:
        _draw_keypoints(canvas, np.asarray(keypoints, np.float64), colors, skeleton, keypoint_min_score)
    return np.asarray(canvas, np.uint8).copy()


def _draw_keypoints(canvas: Image.Image, keypoints: np.ndarray, colors: np.ndarray,
                    skeleton: Sequence[tuple[int, int]] | None, min_score: float) -> None:
    n = len(colors)
    if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints shape {keypoints.shape} != [N, K, 3] with N = {n}")
    pen = ImageDraw.Draw(canvas)
    k = keypoints.shape[1]
    for i in range(n):
        shown = keypoints[i, :, 2] > min_score
        color = tuple(int(c) for c in colors[i])
        # Lines in the instance colour, dots in white with a coloured rim on top.
        for a, b in skeleton or ():
            if 0 <= a < k and 0 <= b < k and shown[a] and shown[b]:
                pen.line([tuple(keypoints[i, a, :2]), tuple(keypoints[i, b, :2])], fill=color, width=2)
        for j in np.nonzero(shown)[0]:
            x, y = keypoints[i, j, :2]
            pen.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 255, 255), outline=color)


def draw_grid(images: Sequence[np.ndarray], cols: int | None = None, gap: int = 4) -> np.ndarray:
    """Tile uint8 ``[H_i, W_i, 3]`` images row-major into one image (white gaps).

    ``cols`` defaults to all images side by side; cells are sized to the largest
    image and each image sits in its cell's top-left corner.
    """
    if not images:
        raise ValueError("draw_grid needs at least one image")
    cols = len(images) if cols is None else max(1, int(cols))
    rows = -(-len(images) // cols)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    grid = np.full(
        (rows * cell_h + (rows - 1) * gap, cols * cell_w + (cols - 1) * gap, 3), 255, np.uint8
    )
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        im = np.asarray(im)
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im[:, :, :3]
    return grid


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 ``[H, W, 3]`` (or ``[H, W]``) image; format from the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)


# ----- matterport's matplotlib displays (optional extra: pip install mrcnn[viz]) ------------------
# Backends that cannot show a window: with these, display_* draw into a figure and write
# nothing unless save_path is given (no "cannot be shown" warning, no file, no window).
_NON_INTERACTIVE_BACKENDS = ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("mrcnn.visualize.display_* need matplotlib: pip install 'mrcnn[viz]' "
                          "(draw_instances / save_image draw without it)") from exc
    return plt


def _finish(plt, fig, own_figure: bool, save_path: str | Path | None) -> None:
    """Save when asked; show on an interactive backend; close the figures made here."""
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, bbox_inches="tight")
    if own_figure:
        if plt.get_backend().lower() not in _NON_INTERACTIVE_BACKENDS:
            plt.show()
        plt.close(fig)


def display_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 4,
                   cmap: str | None = None, norm=None, interpolation: str | None = None,
                   save_path: str | Path | None = None) -> None:
    """Show images in a grid of ``cols`` columns, each with its title (matterport's signature,
    plus ``save_path``: write the figure there)."""
    plt = _pyplot()
    titles = list(titles) if titles is not None else [""] * len(images)
    rows = -(-len(images) // cols)
    fig = plt.figure(figsize=(14, 14 * rows // cols or 4))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8) if cmap is None else np.asarray(image), cmap=cmap, norm=norm,
                  interpolation=interpolation)
    _finish(plt, fig, True, save_path)


def display_instances(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None, class_ids: np.ndarray,
                      class_names: Sequence[str] | None, scores: np.ndarray | None = None, title: str = "",
                      figsize: tuple[int, int] = (16, 16), ax=None, show_mask: bool = True, show_bbox: bool = True,
                      colors: np.ndarray | None = None, captions: Sequence[str] | None = None,
                      save_path: str | Path | None = None) -> np.ndarray:
    """matterport's ``display_instances``: ``detect()``'s rois / masks / class_ids / scores drawn on
    ``image`` (:func:`draw_instances`) and shown with matplotlib; on ``ax`` when given.

    ``captions`` is accepted for matterport's signature; labels are ``class score``.
    ``colors``: float RGB in [0, 1] (matterport's) or uint8 ``[N, 3]``.
    Returns the drawn uint8 ``[H, W, 3]`` image.
    """
    plt = _pyplot()
    n = len(class_ids)
    if colors is not None:
        colors = np.asarray(colors, np.float64)
        colors = (colors * 255 if colors.max(initial=0) <= 1 else colors).round().astype(np.uint8).reshape(n, 3)
    drawn = draw_instances(image, boxes if show_bbox else None, masks if show_mask else None,
                           np.asarray(class_ids), class_names, scores, colors=colors)
    own = ax is None
    if own:
        fig, ax = plt.subplots(1, figsize=figsize)
    else:
        fig = ax.figure
    ax.axis("off")
    ax.set_title(title or ("*** No instances to display ***" if n == 0 else ""))
    ax.imshow(drawn)
    _finish(plt, fig, own, save_path)
    return drawn


def display_top_masks(image: np.ndarray, mask: np.ndarray, class_ids: np.ndarray,
                      class_names: Sequence[str], limit: int = 4, save_path: str | Path | None = None) -> None:
    """The image and, for the ``limit`` classes covering most pixels, the union of their masks."""
    class_ids = np.asarray(class_ids)
    unique = np.unique(class_ids)
    area = {c: int(mask[..., class_ids == c].sum()) for c in unique}
    top = sorted(unique, key=lambda c: -area[c])[:limit]
    panels, titles = [image], ["H x W={}x{}".format(*image.shape[:2])]
    for i in range(limit):
        if i < len(top):
            panels.append(mask[..., class_ids == top[i]].any(axis=-1).astype(np.float32))
            titles.append(class_names[int(top[i])] if class_names is not None else str(top[i]))
        else:
            panels.append(np.zeros(image.shape[:2], np.float32))
            titles.append("-")
    display_images(panels, titles=titles, cols=limit + 1, cmap="Blues_r", save_path=save_path)
