"""Pictures of dense outputs: colourised masks, overlays, colour-mapped depth, sample panels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.dense import default_palette
from .spec import TaskSpec


def palette_of(spec: TaskSpec) -> np.ndarray:
    pal = np.asarray(spec.palette, np.uint8).reshape(-1, 3) if spec.palette else default_palette(spec.num_classes)
    return pal


def colourise_mask(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignore (255) and unknown ids are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = palette[:255]
    return lut[np.asarray(mask, np.uint8)]


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    img = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    return np.clip(img * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def colourise_depth(depth: np.ndarray, vmax: float | None = None, vmin: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with matplotlib's ``magma`` on inverse depth (near = bright);
    invalid (0) pixels are black."""
    import matplotlib

    d = np.asarray(depth, np.float64)
    valid = d > 0
    out = np.zeros((*d.shape, 3), np.uint8)
    if not valid.any():
        return out
    inv = np.zeros_like(d)
    inv[valid] = 1.0 / d[valid]
    lo = 1.0 / vmax if vmax else float(inv[valid].min())
    hi = 1.0 / vmin if vmin else float(inv[valid].max())
    t = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = (matplotlib.colormaps["magma"](t)[..., :3] * 255).astype(np.uint8)
    out[valid] = rgb[valid]
    return out


def depth_row(spec: TaskSpec, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> list[np.ndarray]:
    """image | truth | prediction | relative error (red) for one depth sample (truth and error when given)."""
    img = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    vmax = float(truth[truth > 0].max()) if truth is not None and (truth > 0).any() else float(pred.max())
    row = [img]
    if truth is not None:
        row.append(colourise_depth(truth, vmax=vmax))
    row.append(colourise_depth(pred, vmax=vmax))
    if truth is not None:
        err = np.where(truth > 0, np.abs(pred - truth) / np.maximum(truth, 1e-6), 0)
        row.append((np.clip(err / 0.5, 0, 1)[..., None] * np.array([255, 80, 0])).astype(np.uint8))
    return row


def segmentation_row(spec: TaskSpec, image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> list[np.ndarray]:
    """image | truth overlay | prediction overlay | errors (red; ignore grey) for one sample."""
    img = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    pal = palette_of(spec)
    row = [img]
    if truth is not None:
        row.append(overlay(img, colourise_mask(truth, pal)))
    row.append(overlay(img, colourise_mask(pred, pal)))
    if truth is not None:
        wrong = (pred != truth) & (truth != 255)
        err = np.zeros_like(img)
        err[wrong] = (255, 40, 40)
        err[truth == 255] = (90, 90, 90)
        row.append(err)
    return row


def save_panels(spec: TaskSpec, images, preds, truths, path: str | Path, title: str = "") -> Path:
    """A PNG grid, one row per sample: image | truth | prediction | error (or image | prediction),
    with column headers and the key to its colours (classes and errors, or the depth colour bar)."""
    from . import task_of  # the registry's package (this module is one of the tasks' helpers)

    draw = task_of(spec).draw_row
    rows = [np.concatenate(draw(spec, im, p, None if truths is None else truths[i]), axis=1)
            for i, (im, p) in enumerate(zip(images, preds))]
    headers = task_of(spec).panel_headers(truths is not None)
    return save_figure(panel_figure(spec, rows, headers, title, errors="error" in headers), path)


def _dense_view(spec: TaskSpec, image: np.ndarray, dense: np.ndarray) -> list[np.ndarray]:
    """A mask overlaid on the image (segmentation), or the image then the colour-mapped depth."""
    img = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    if spec.task == "depth":
        return [img, colourise_depth(dense)]
    return [overlay(img, colourise_mask(dense, palette_of(spec)))]


def save_translation_grid(spec: TaskSpec, source_panels: list[np.ndarray], source_truth: np.ndarray,
                          target_images: np.ndarray | None, target_preds: np.ndarray | None, path: str | Path,
                          title: str = "", rows: int = 4) -> Path:
    """The sample grid of an image-translation method on a dense task, one row per sample:

    source | translated | ... (each (N, H, W, 3) uint8 panel with the source truth overlaid, or
    followed by it colour-mapped for depth) | target image with the model's prediction overlaid
    (no target labels). Up to ``rows`` rows."""
    n = min([rows, len(source_truth)] + [len(p) for p in source_panels]
            + ([len(target_images), len(target_preds)] if target_images is not None else []))
    out, widths = [], []
    for i in range(n):
        views = [v for panel in source_panels for v in _dense_view(spec, panel[i], source_truth[i])]
        if target_images is not None:
            views += _dense_view(spec, target_images[i], target_preds[i])
        widths = [v.shape[1] for v in views]
        out.append(np.concatenate(views, axis=1))
    names = ["source"] + ["translated"] * (len(source_panels) - 1)
    if spec.task == "depth":  # each image is followed by its depth (truth for source panels, prediction for target)
        headers = [h for name in names for h in (name, "truth")] + (["target", "prediction"] if target_images is not None else [])
    else:
        headers = [f"{name}+truth" for name in names] + (["target+pred."] if target_images is not None else [])
    return _save_rows(out, path, title, list(zip(headers, widths)))


def _save_rows(rows: list[np.ndarray], path: str | Path, title: str, headers: list[tuple[str, int]] | None = None) -> Path:
    """Rows of panels as a PNG at their own pixel size: the title, then ``headers`` ((label, panel
    width) per column) in a band above the panels."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("no samples to draw")
    width = max(r.shape[1] for r in rows)
    gap = 2
    title_h = 14 if title else 0
    head = title_h + (12 if headers else 0)
    h = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1) + head
    canvas = np.full((h, width, 3), 255, np.uint8)
    y = head
    for r in rows:
        canvas[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + gap
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    x = 0
    for label, w in headers or []:
        tw = draw.textlength(label)
        draw.text((x + max(0, (w - tw) / 2), title_h), label, fill=(0, 0, 0))
        x += w
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path


def stack_rows(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of panels (each (H, W, 3) uint8) stacked on white, ``gap`` pixels apart."""
    if not rows:
        raise ValueError("no samples to draw")
    width = max(r.shape[1] for r in rows)
    canvas = np.full((sum(r.shape[0] for r in rows) + gap * (len(rows) - 1), width, 3), 255, np.uint8)
    y = 0
    for r in rows:
        canvas[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + gap
    return canvas


def panel_figure(spec: TaskSpec | None, rows: list[np.ndarray], headers: list[str], title: str = "", *,
                 errors: bool = False, classes: list[str] | None = None, palette: np.ndarray | None = None,
                 depth: bool | None = None):
    """A matplotlib figure of panel rows: a header over each column, and under the panels the key to
    their colours: one swatch per class (segmentation), the error colours (red wrong, grey ignored,
    black right), or the depth colour bar (near bright, far dark). Sized so that the headers and the
    key fit at the default size; returned unsaved (:func:`edgeda.utils.save_figure` writes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    canvas = stack_rows(rows)
    depth = (spec is not None and spec.task == "depth") if depth is None else depth
    if classes is None and spec is not None and not depth:
        classes = list(spec.classes or [str(i) for i in range(spec.num_classes)])
        palette = palette_of(spec)
    n_cols = max(1, len(headers))
    col_in = max(1.6, min(3.2, canvas.shape[1] / n_cols / 60))  # each column at least 1.6 in wide
    width = max(6.4, col_in * n_cols)
    img_h = width * canvas.shape[0] / canvas.shape[1]
    swatches = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.3", label=n)
                for n, c in zip(classes or [], palette if palette is not None else [])]
    per_row = max(1, int(width / 1.7))  # legend columns of about 1.7 in (names up to ~18 characters at 7 pt)
    class_h = (0.22 + 0.2 * -(-len(swatches) // per_row)) if swatches else 0.0
    error_h = 0.42 if errors and not depth else 0.0
    bar_h = 0.62 if depth else 0.0
    key_h = class_h + error_h + bar_h + 0.1
    head_h = 0.3 + (0.3 if title else 0)
    total = img_h + head_h + key_h
    fig = plt.figure(figsize=(width, total))
    ax = fig.add_axes((0.0, key_h / total, 1.0, img_h / total))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    panel_w = canvas.shape[1] / n_cols
    for i, h in enumerate(headers):
        fig.text((i + 0.5) * panel_w / canvas.shape[1], (key_h + img_h + 0.06) / total, h, ha="center", va="bottom",
                 fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.05 / total, title if len(title) <= 12 * width else title[:int(12 * width) - 1] + "…",
                 ha="center", va="top", fontsize=8)
    top = key_h  # inches from the bottom: each key is placed under the previous one
    legend = dict(loc="upper center", fontsize=7, frameon=False, handlelength=1.0, columnspacing=1.0,
                  title_fontsize=7, borderaxespad=0.0, borderpad=0.1, labelspacing=0.3)
    if swatches:
        fig.legend(handles=swatches, bbox_to_anchor=(0.5, top / total), ncol=min(per_row, len(swatches)),
                   title="classes", **legend)
        top -= class_h
    if error_h:
        keys = [Patch(facecolor=(1, 40 / 255, 40 / 255), label="wrong"),
                Patch(facecolor=(90 / 255,) * 3, label="ignored (255)"), Patch(facecolor="black", label="right")]
        fig.legend(handles=keys, bbox_to_anchor=(0.5, top / total), ncol=3, title="error", **legend)
        top -= error_h
    if bar_h:
        cax = fig.add_axes((0.3, (top - 0.4) / total, 0.4, 0.12 / total))
        sm = plt.cm.ScalarMappable(cmap="magma", norm=matplotlib.colors.Normalize(0, 1))
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.set_ticks([0, 1], labels=["far", "near"])
        cb.ax.tick_params(labelsize=7)
        cax.set_title("depth (inverse depth, per image)" + ("; error: relative, red = 50 %+" if errors else ""), fontsize=7)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure laid out by hand (no tight_layout) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_boxes(image: np.ndarray, boxes, labels, scores=None, names=None, palette=None, width: int = 2) -> np.ndarray:
    """(H, W, C) uint8 with each box (x1 y1 x2 y2, pixels) outlined in its class colour and labelled
    ``name score``; a copy, RGB."""
    from PIL import Image, ImageDraw

    img = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    pil = Image.fromarray(np.ascontiguousarray(img.astype(np.uint8)))
    draw = ImageDraw.Draw(pil)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(int)
    pal = np.asarray(palette if palette is not None else _box_palette(max(int(labels.max(initial=0)) + 1, 1)))
    for i, (b, c) in enumerate(zip(boxes, labels)):
        colour = tuple(int(v) for v in pal[c % len(pal)])
        draw.rectangle([float(b[0]), float(b[1]), float(b[2]), float(b[3])], outline=colour, width=width)
        text = names[c] if names is not None and c < len(names) else str(c)
        if scores is not None:
            text += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        draw.text((float(b[0]) + 2, max(0.0, float(b[1]) - 11)), text, fill=colour)
    return np.asarray(pil)


def _box_palette(k: int) -> np.ndarray:
    """Distinct, bright colours for ``k`` classes (HSV hues evenly spaced)."""
    import colorsys

    return (np.array([colorsys.hsv_to_rgb(i / max(k, 1), 0.9, 1.0) for i in range(k)]) * 255).astype(np.uint8)


def boxes_row(spec: TaskSpec, image: np.ndarray, pred: dict, truth: dict | None = None) -> list[np.ndarray]:
    """image | truth boxes | predicted boxes with scores, for one sample of a box task."""
    def arr(v):
        return np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)

    pal = palette_of(spec)  # the colours the sample panels' class legend shows
    row = [image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)]
    if truth is not None:
        row.append(draw_boxes(image, arr(truth["boxes"]), arr(truth["labels"]), names=spec.classes, palette=pal))
    scores = arr(pred["scores"]) if "scores" in pred else None
    row.append(draw_boxes(image, arr(pred["boxes"]), arr(pred["labels"]), scores, names=spec.classes, palette=pal))
    return row
