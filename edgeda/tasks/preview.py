"""A labelled image grid of a domain, so a person can look at it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.dense import default_palette
from ..data.domain import Domain
from ..errors import EdgedaError
from ..utils import save_figure
from .draw import colourise_depth, colourise_mask, draw_boxes, overlay, panel_figure
from .draw import save_figure as save_panel_figure


def preview_grid(domain: Domain, path: str | Path, n: int = 64, cols: int = 8, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(domain))
    idx = np.sort(np.random.default_rng(seed).choice(len(domain), n, replace=False)) if n < len(domain) else np.arange(n)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), idx):
        img = domain.images[i]
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=255)
        if domain.labels is not None:
            name = domain.classes[domain.labels[i]] if domain.classes else str(domain.labels[i])
            ax.set_title(name, fontsize=8)
    fig.suptitle(f"{domain.name} ({len(domain)} images)", fontsize=9)
    return save_figure(fig, path, dpi=100)


def preview_dense(domain, path: str | Path, n: int = 8) -> Path:
    """Rows of image | mask overlay | depth (whichever the domain has) for the first ``n`` samples,
    with column headers, the class colours and the depth colour bar."""
    return save_panel_figure(preview_dense_figure(domain, n), path)


def preview_dense_figure(domain, n: int = 8):
    pal = domain.palette if domain.palette is not None else default_palette(domain.num_classes or 1)
    rows = []
    for i in range(min(n, len(domain))):
        try:
            s = domain.sample(i)
        except ValueError:
            continue
        img = s.image if s.image.shape[2] == 3 else np.repeat(s.image, 3, axis=2)
        row = [img]
        if s.mask is not None:
            row.append(overlay(img, colourise_mask(s.mask, pal)))
        if s.depth is not None:
            row.append(colourise_depth(s.depth))
        rows.append(np.concatenate(row, axis=1))
    if not rows:
        raise ValueError(f"no readable sample among the first {n} of {domain.name}")
    headers = ["image"] + (["mask"] if domain.has_masks else []) + (["depth"] if domain.has_depth else [])
    classes = list(domain.classes) if domain.has_masks and domain.classes else None
    return panel_figure(None, rows, headers, domain.name, classes=classes,
                        palette=pal[:len(classes)] if classes else None, depth=domain.has_depth)


def preview_detection(domain, path: str | Path, n: int = 8, cols: int = 4) -> Path:
    """A grid of the first ``n`` decodable samples of a detection domain with their boxes and class
    names drawn (crowd regions in grey); undecodable samples are left out."""
    from PIL import Image

    names = domain.classes
    tiles = []
    for i in range(len(domain)):
        if len(tiles) == n:
            break
        try:
            s = domain.sample(i)
        except ValueError:
            continue
        img = draw_boxes(s.image, s.boxes, s.labels, names=names, palette=domain.palette)
        if len(s.crowd):
            img = draw_boxes(img, s.crowd, np.zeros(len(s.crowd), int), names=["crowd"],
                             palette=np.array([[128, 128, 128]], np.uint8))
        tiles.append(img)
    if not tiles:
        raise ValueError(f"no readable sample among the images of {domain.name}")
    th, tw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // cols)
    canvas = np.full((rows * (th + 2), min(cols, len(tiles)) * (tw + 2), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        canvas[r * (th + 2):r * (th + 2) + t.shape[0], c * (tw + 2):c * (tw + 2) + t.shape[1]] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def preview_spec(spec: str, path: str | Path, *, n: int = 64, size: int = 32, channels: int = 3,
                 task: str | None = None) -> tuple[Domain, Path, str]:
    """Load the domain ``spec`` as ``task`` reads it and write its preview to ``path``: detection data
    (``task`` "detection", or a COCO ``.json`` / YOLO / VOC / KITTI folder when ``task`` is None) as boxes with class
    names, dense data (built-in dense domains at their own size, user data as stored) as image | mask |
    depth rows, anything else as a grid of images with their class names. Returns the domain, the file
    and what to say about the data (the class names, or that it is unlabeled)."""
    from ..data import load_domain
    from ..data.detection_spec import looks_like_detection_data
    from ..data.spec import DomainSpec, default_size, is_dense_spec

    if task == "detection" or (task is None and looks_like_detection_data(spec)):
        dom = load_domain(spec, labeled=True, task="detection")
        if not len(dom):
            raise EdgedaError(f"{spec}: no usable image with boxes ({dom.report.summary()})")
        return dom, preview_detection(dom, path, min(n, 16)), f", classes: {', '.join(dom.classes)}"
    if is_dense_spec(spec) or task == "segmentation" and spec.lower().endswith(".json"):  # COCO instance masks
        dom = load_domain(spec, labeled=True, size=default_size(spec) or (size, size), channels=channels, task=task)
        dom.require_usable()
        classes = f", classes: {', '.join(dom.classes)}" if dom.classes else ""
        return dom, preview_dense(dom, path, min(n, 16)), classes
    try:
        few = getattr(DomainSpec.parse(spec).loader, "renders_n", False)  # render only what the grid shows
        dom, what = load_domain(spec, labeled=True, size=(size, size), channels=channels, n=max(n, 10) if few else None), ""
    except EdgedaError:
        dom, what = load_domain(spec, labeled=False, size=(size, size), channels=channels), " (unlabeled)"
    dom.require_usable()
    return dom, preview_grid(dom, path, n), what
