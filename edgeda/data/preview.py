"""A labelled image grid of a domain, so a person can look at it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils import save_figure
from .domain import Domain


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
