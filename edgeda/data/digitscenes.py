"""Digit scenes for segmentation: several digits per image, each pixel labelled with its digit.

``digitscenes`` (synthetic source): 2-5 distinct digits drawn with the fonts that
:mod:`edgeda.data.syndigits` uses (random font, stroke weight, rotation, 14-28 px crops on a 64 px
canvas, scaled with the canvas) at random places on procedural backgrounds (gradients, shapes,
stripes, low-frequency noise). Later digits occlude earlier ones; a placement that would hide more
than half of an earlier digit is redrawn (after a few tries the digit is left out), so every placed
digit stays visible and every image shows at least two.

``handwritten-scenes`` (real content): the real 8x8 handwritten scans of scikit-learn's
``load_digits``, upsampled bilinearly to 14-28 px and blended as dark or light ink (alpha = scan
intensity) onto random crops of the real photographs that scikit-learn and matplotlib ship.

Other backgrounds for the same real scans (``HANDWRITTEN_LOOKS`` besides ``photo``, the default):
``paper`` (white, cream or grey paper with fibres, uneven light, ruled or squared lines and a margin;
dark pen ink), ``board`` (a dark chalkboard with chalk dust and wiped smears; light chalk ink) and
``noisy`` (the photo look's scenes, identical layouts and masks, taken in low light: darker, strong
sensor noise, JPEG at quality 30-50).

Labels are 0 for background and ``1 + digit`` on a digit. For ``digitscenes`` a pixel belongs to a
digit where the glyph covers at least half of it (the coverage that also blends the ink in); for
``handwritten-scenes`` the label is a threshold of the real scan at 50% intensity, so it follows the
writer's own ink. Where digits overlap, the label is the one drawn last.

Boxes for detection (:func:`digit_boxes`): the digits of one image are distinct, so each label
``1 + d`` of a mask is one digit instance, and its box is the tight box around its labelled pixels
-- the visible part of its ink (the part a later digit hides is not in it). Every placed digit
keeps at least half its ink visible, slivers (see :func:`edgeda.data.boxes.instance_boxes`)
are dropped. Boxes come from the masks the renderers already return, so images and masks stay
exactly what they were.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

from .boxes import instance_boxes
from .dense import default_palette
from .files import read_image
from .photos import bundled_photo_paths
from .syndigits import DIGITS, _draw_digit, _font, digit_fonts
from .transforms import convert_channels

SCENE_CLASSES = ["background"] + list(DIGITS)
DIGITSCENES_VERSION = 2  # bump whenever a renderer below changes what a seed produces
HANDWRITTEN_SCENES_VERSION = 1
SCAN_PERMUTATION_SEED = 20240607  # the fixed permutation of the 1797 scans that ``handwritten`` uses too
SCAN_ADAPT = 1000  # first scans of the permutation: ``adapt``; the rest: ``test``
_LUM = np.array([0.299, 0.587, 0.114], np.float32)
HANDWRITTEN_LOOKS = ("photo", "paper", "board", "noisy")


def scene_palette() -> np.ndarray:
    """(11, 3) uint8: black background, then one distinct colour per digit."""
    return np.concatenate([np.zeros((1, 3), np.uint8), default_palette(10)])


def _crop_side(rng: np.random.Generator, h: int, w: int) -> int:
    side = int(round(rng.uniform(14, 28) * min(h, w) / 64))
    return int(min(max(side, 6), h, w))


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small (g, g, C) float grid to (h, w, C)."""
    g0, g1 = grid.shape[:2]
    y = np.linspace(0, g0 - 1, h, dtype=np.float32)
    x = np.linspace(0, g1 - 1, w, dtype=np.float32)
    y0 = np.minimum(y.astype(int), g0 - 2)
    x0 = np.minimum(x.astype(int), g1 - 2)
    fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 in [0, 255]: a gradient, random rectangles/ellipses, stripes, smooth noise."""
    s = float(max(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / s
    c1, c2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c1 + (c2 - c1) * t[:, :, None]
    for _ in range(int(rng.integers(0, 6))):
        col, op = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0.4, 1.0)
        cx, cy = rng.uniform(0, w / s), rng.uniform(0, h / s)
        rx, ry = rng.uniform(0.05, 0.4, 2)
        if rng.random() < 0.5:
            m = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
        else:
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[m] = img[m] * (1 - op) + col * op
    if rng.random() < 0.4:
        b, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.3)
        wave = np.sin(2 * np.pi * (np.cos(b) * xx + np.sin(b) * yy) / period + rng.uniform(0, 2 * np.pi))
        m = (wave > 0 if rng.random() < 0.5 else (wave + 1) / 2)[:, :, None].astype(np.float32)
        img = img * (1 - m * rng.uniform(0.2, 0.6)) + m * rng.uniform(0.2, 0.6) * rng.uniform(0, 255, 3)
    g = int(rng.integers(3, 9))
    img = img + _upsample(rng.normal(0, 1, (g, g, 3)).astype(np.float32), h, w) * rng.uniform(0, 25)
    return np.clip(img, 0, 255).astype(np.float32)


def glyph_coverage(rng: np.random.Generator, digit: int, side: int) -> np.ndarray:
    """(side, side) uint8 coverage of one digit glyph (font, stroke and rotation drawn from ``rng``),
    rendered at 4x and box-downsampled, as :func:`edgeda.data.syndigits.render_one` renders its digit."""
    fonts = digit_fonts()
    big = side * 4
    font_px = int(big * rng.uniform(0.8, 1.0))
    font = _font(fonts[rng.integers(len(fonts))], font_px)
    stroke = int(rng.integers(0, max(1, font_px // 14) + 1))
    layer = Image.new("L", (big, big))
    _draw_digit(layer, DIGITS[digit], font, big / 2, big / 2, stroke)
    layer = layer.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, center=(big / 2, big / 2))
    return np.asarray(layer.resize((side, side), Image.BOX))


def _ink(rng: np.random.Generator, under: float, dark: bool | None = None) -> np.ndarray:
    """An ink colour whose luminance differs from ``under`` by at least 80 (of 255)."""
    for _ in range(20):
        col = rng.uniform(0, 255, 3).astype(np.float32)
        if dark is not None:
            col = col * 0.25 if dark else 190 + col * 0.25
        if abs(float(_LUM @ col) - under) >= 80:
            return col
    return np.full(3, 0.0 if under > 128 else 255.0, np.float32)


def _place(rng, mask: np.ndarray, on: np.ndarray, placed: int) -> tuple[int, int] | None:
    """Top-left corner for a crop whose labelled pixels are ``on``: one that hides at most half of
    each earlier digit (any position that leaves every earlier digit visible while fewer than two
    are placed), or None."""
    h, w = mask.shape
    s0, s1 = on.shape
    total = np.bincount(mask.ravel(), minlength=11)
    for attempt in range(32):
        top, left = int(rng.integers(0, h - s0 + 1)), int(rng.integers(0, w - s1 + 1))
        hidden = np.bincount(mask[top:top + s0, left:left + s1][on], minlength=11)
        if np.all(hidden[1:] <= 0.5 * total[1:]) or (placed < 2 and np.all(hidden[1:] < total[1:]) and attempt >= 8):
            return top, left
        if attempt >= 8 and placed >= 2:
            return None
    return None


def _compose(rng, img: np.ndarray, mask: np.ndarray, items, layers: list | None):
    """Blend each (digit, coverage uint8 or float alpha in [0,1], labelled pixels, ink darkness) onto
    ``img`` in order, updating ``mask``; ``layers`` collects (digit, full-size alpha, ink colour)."""
    h, w = mask.shape
    for digit, alpha, on, dark in items:
        pos = _place(rng, mask, on, int((np.bincount(mask.ravel(), minlength=11)[1:] > 0).sum()))
        if pos is None:
            continue
        top, left = pos
        region = (slice(top, top + on.shape[0]), slice(left, left + on.shape[1]))
        sel = on if on.any() else alpha > 0
        under = float((img[region][sel] @ _LUM).mean()) if sel.any() else 128.0
        ink = _ink(rng, under, dark if dark is not None else None)
        a = alpha[:, :, None]
        img[region] = img[region] * (1 - a) + ink * a
        mask[region][on] = digit + 1
        if layers is not None:
            full = np.zeros((h, w), np.float32)
            full[region] = alpha
            layers.append((int(digit), full, ink))


def render_scene(rng: np.random.Generator, size: tuple[int, int], layers: list | None = None):
    """One ``digitscenes`` image: ((H, W, 3) uint8, (H, W) uint8 labels). ``layers``, when a list,
    receives (digit, (H, W) float32 coverage, ink colour) per placed digit, in drawing order."""
    h, w = size
    img = background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    items = []
    for d in rng.choice(10, int(rng.integers(2, 6)), replace=False):
        side = _crop_side(rng, h, w)
        cov = glyph_coverage(rng, int(d), side)
        while (cov >= 128).sum() < side and side < min(h, w):  # too thin to label at this size: draw larger
            side += 1
            cov = glyph_coverage(rng, int(d), side)
        items.append((int(d), cov.astype(np.float32) / 255.0, cov >= 128, None))
    _compose(rng, img, mask, items, layers)
    out = np.clip(img, 0, 255)
    if rng.random() < 0.3:
        pil = Image.fromarray(np.rint(out).astype(np.uint8))
        out = np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7) * min(h, w) / 64)), np.float32)
    out = out + rng.normal(0, rng.uniform(0, 8), out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def digit_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detection targets of one digit-scene mask: (boxes (N, 4) float32 x1 y1 x2 y2 in pixels,
    labels (N,) int64 digit 0-9), one per digit with visible labelled pixels, in digit order."""
    m = np.asarray(mask, np.uint8)
    ids, boxes = instance_boxes(np.where(m <= len(DIGITS), m, 0))
    return boxes, ids - 1


def render(n: int, seed: int, size: tuple[int, int] = (64, 64), channels: int = 3):
    """``n`` digit scenes: (images (n, H, W, channels) uint8, masks (n, H, W) uint8); image ``i``
    depends only on (``seed``, ``i``, ``size``)."""
    images = np.empty((n, *size, channels), np.uint8)
    masks = np.empty((n, *size), np.uint8)
    for i in range(n):
        img, masks[i] = render_scene(np.random.default_rng((seed, i)), size)
        images[i] = convert_channels(img, channels)
    return images, masks


@functools.lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def scan_indices(split: str) -> np.ndarray:
    """Indices (into ``load_digits()``) of the scans a ``handwritten-scenes`` split draws from:
    a fixed permutation's first 1000 for ``adapt``, the rest for ``test``, all for ``all``."""
    n = len(_scans()[0])
    order = np.random.default_rng(SCAN_PERMUTATION_SEED).permutation(n)
    parts = {"adapt": order[:SCAN_ADAPT], "test": order[SCAN_ADAPT:], "all": np.arange(n)}
    if split not in parts:
        raise ValueError(f"handwritten-scenes has splits {', '.join(parts)}, not {split!r}")
    return parts[split]


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    found = tuple(convert_channels(read_image(p), 3) for p in bundled_photo_paths())
    if not found:
        raise ValueError("handwritten-scenes needs the photographs shipped with scikit-learn or matplotlib")
    return found


def photo_crop(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32: a random crop (aspect of ``size``, 25-100% of the largest) of a bundled photo."""
    h, w = size
    photos = _photos()
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    k = min(ph / h, pw / w) * np.sqrt(rng.uniform(0.25, 1.0))
    ch, cw = max(1, int(h * k)), max(1, int(w * k))
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
    out = np.asarray(crop, np.float32)
    return out[:, ::-1] if rng.random() < 0.5 else out


def paper_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32: paper (white, cream or grey) with fibres, uneven light, and ruled lines,
    squares or nothing, sometimes a red margin."""
    h, w = size
    scale = min(h, w) / 64
    base = np.asarray([(240, 238, 232), (238, 228, 200), (215, 215, 212), (245, 245, 245)][rng.integers(4)], np.float32)
    img = base * rng.uniform(0.9, 1.02) + np.zeros((h, w, 1), np.float32)
    g = int(rng.integers(3, 7))
    img = img * (1 + _upsample(rng.normal(0, 1, (g, g, 1)).astype(np.float32), h, w) * rng.uniform(0.02, 0.06))
    img = img + rng.normal(0, rng.uniform(2, 5), (h, w, 1)).astype(np.float32)  # fibres: grey, not coloured
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy) / max(h, w)
    img = img * (1 - rng.uniform(0.05, 0.25) * (t - t.min()))[..., None]  # light falls off across the sheet
    kind, period = rng.random(), rng.uniform(7, 12) * scale
    ink = np.asarray([(120, 150, 210), (150, 150, 160)][rng.integers(2)], np.float32)
    if kind < 0.75:
        off, lines = rng.uniform(0, period), np.zeros((h, w), bool)
        lines |= np.mod(yy - off, period) < max(1.0, scale)
        if kind < 0.35:  # squared paper
            lines |= np.mod(xx - off, period) < max(1.0, scale)
        img[lines] = img[lines] * 0.5 + ink * 0.5
    if rng.random() < 0.4:
        x0 = int(rng.uniform(0.05, 0.3) * w)
        img[:, x0:x0 + max(1, int(scale))] = img[:, x0:x0 + max(1, int(scale))] * 0.4 + np.array((210, 70, 70)) * 0.6
    return np.clip(img, 0, 255).astype(np.float32)


def board_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32: a dark green, slate or black chalkboard with chalk dust and wiped smears."""
    h, w = size
    base = np.asarray([(38, 62, 48), (44, 48, 52), (28, 30, 32), (30, 45, 60)][rng.integers(4)], np.float32)
    img = base * rng.uniform(0.8, 1.2) + np.zeros((h, w, 1), np.float32)
    g = int(rng.integers(3, 8))
    dust = np.clip(_upsample(rng.normal(0, 1, (g, g, 1)).astype(np.float32), h, w), 0, None)
    img = img + dust * rng.uniform(10, 30)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    for _ in range(int(rng.integers(1, 4))):  # wiped smears: wide faint bands
        b, c, width = rng.uniform(0, np.pi), rng.uniform(0, 1), rng.uniform(0.08, 0.25)
        band = np.exp(-((np.cos(b) * xx + np.sin(b) * yy - c) / width) ** 2)
        img = img + band[..., None] * rng.uniform(8, 25)
    img = img + rng.normal(0, rng.uniform(2, 5), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def low_light(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 taken in low light: darker, strong sensor noise, then JPEG at quality 30-50."""
    import io

    x = img.astype(np.float32) * rng.uniform(0.45, 0.75)
    x = x + rng.normal(0, 1, x.shape) * (rng.uniform(18, 30) + rng.uniform(0.3, 0.8) * np.sqrt(x))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)).save(buf, format="JPEG",
                                                                         quality=int(rng.integers(30, 51)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def render_handwritten(n: int, seed: int, split: str, size: tuple[int, int] = (64, 64), channels: int = 3,
                       layers: list | None = None, look: str = "photo"):
    """``n`` scenes of real scans from ``split``: (images, masks, scan ids (n, 5) int64, -1 = unused).
    ``layers``, when a list, receives per image the (digit, (H, W) scan intensity, ink) of each scan.
    ``look`` (``HANDWRITTEN_LOOKS``): the background the scans are written on (see the module)."""
    if look not in HANDWRITTEN_LOOKS:
        raise ValueError(f"handwritten-scenes has looks {', '.join(HANDWRITTEN_LOOKS)}, not {look!r}")
    scans, target = _scans()
    pool = scan_indices(split)
    by_digit = [pool[target[pool] == d] for d in range(10)]
    h, w = size
    images = np.empty((n, h, w, channels), np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    used = np.full((n, 5), -1, np.int64)
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        img = {"paper": paper_background, "board": board_background}.get(look, photo_crop)(rng, size)
        items, ids = [], []
        for d in rng.choice(10, int(rng.integers(2, 6)), replace=False):
            idx = int(by_digit[d][rng.integers(len(by_digit[d]))])
            side = _crop_side(rng, h, w)
            alpha = np.asarray(Image.fromarray(scans[idx]).resize((side, side), Image.BILINEAR), np.float32)
            alpha = np.clip(alpha, 0, 1)
            dark = bool(rng.random() < 0.75)
            items.append((int(d), alpha, alpha > 0.5, {"paper": True, "board": False}.get(look, dark)))
            ids.append(idx)
        drawn: list = []
        _compose(rng, img, masks[i], items, drawn)
        if layers is not None:
            layers.append(drawn)
        placed = [d for d, _, _ in drawn]
        kept = [ids[j] for j, it in enumerate(items) if it[0] in placed]
        used[i, :len(kept)] = kept
        out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if look == "noisy":  # its own stream: layouts and masks stay those of the photo look
            out = low_light(np.random.default_rng((seed, i, 1)), out)
        images[i] = convert_channels(out, channels)
    return images, masks, used
