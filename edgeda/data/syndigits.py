"""`syndigits`: synthetic street-number-like digit crops rendered from the fonts matplotlib ships.

Each sample draws a font, a digit, a size, an offset, a rotation, a stroke weight, foreground and
background colours (with a minimum contrast), optional side distractor digits (like street-number
crops), blur and sensor noise. Rendering happens at 2x (or more) of the output size and is
downsampled, so edges are anti-aliased. The same ``seed`` always gives the same images; the
foreground mask of the centre digit comes along for pixel-level methods.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .transforms import convert_channels

DIGITS = "0123456789"
# Text fonts with ordinary digit glyphs; the symbol and math-italic fonts are left out.
_FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10")


@functools.lru_cache(maxsize=1)
def digit_fonts() -> tuple[str, ...]:
    """Paths of matplotlib's bundled TTF fonts that render ten distinct, non-empty digits."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = []
    for path in sorted(folder.glob("*.ttf")):
        if not path.name.startswith(_FONT_PREFIXES) or "Display" in path.name:
            continue
        font = ImageFont.truetype(str(path), 40)
        glyphs = []
        for d in DIGITS:
            img = Image.new("L", (64, 64))
            ImageDraw.Draw(img).text((8, 4), d, fill=255, font=font)
            glyphs.append(np.asarray(img).tobytes())
        if all(any(g) for g in glyphs) and len(set(glyphs)) == 10:
            found.append(str(path))
    if not found:
        raise RuntimeError("no usable digit fonts found in matplotlib's font folder")
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Foreground and background RGB colours whose luminances differ by at least 60 (of 255)."""
    lum = np.array([0.299, 0.587, 0.114])
    while True:
        if rng.random() < 0.3:  # grey-scale scene
            fg = np.full(3, rng.integers(0, 256))
            bg = np.full(3, rng.integers(0, 256))
        else:
            fg = rng.integers(0, 256, 3)
            bg = rng.integers(0, 256, 3)
        if abs(float(lum @ fg) - float(lum @ bg)) >= 60:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def _draw_digit(layer: Image.Image, text: str, font, cx: float, cy: float, stroke: int) -> None:
    draw = ImageDraw.Draw(layer)
    l, t, r, b = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    draw.text((cx - (l + r) / 2, cy - (t + b) / 2), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)


def render_one(rng: np.random.Generator, digit: int, size: int, distractors: bool = True):
    """Render one sample; returns ((size, size, 3) uint8 image, (size, size) uint8 mask)."""
    fonts = digit_fonts()
    scale = max(2, -(-64 // size))
    R = size * scale
    path = fonts[rng.integers(len(fonts))]
    font_px = int(R * rng.uniform(0.6, 1.25))  # glyph height ~0.45-0.9 of the crop, like street-number crops
    font = _font(path, font_px)
    stroke = int(rng.integers(0, max(1, font_px // 14) + 1))
    angle = float(rng.uniform(-15, 15))
    cx = R / 2 + rng.uniform(-0.1, 0.1) * R
    cy = R / 2 + rng.uniform(-0.08, 0.08) * R

    main = Image.new("L", (R, R))
    _draw_digit(main, DIGITS[digit], font, cx, cy, stroke)
    ink = Image.new("L", (R, R))
    if distractors:
        _, _, w, _ = ImageDraw.Draw(ink).textbbox((0, 0), "0", font=font, stroke_width=stroke)
        gap = w * rng.uniform(0.95, 1.25)
        for side in (-1, 1):
            if rng.random() < 0.5:
                _draw_digit(ink, DIGITS[rng.integers(10)], font, cx + side * gap, cy, stroke)
    main = main.rotate(angle, resample=Image.BILINEAR, center=(R / 2, R / 2))
    ink = ink.rotate(angle, resample=Image.BILINEAR, center=(R / 2, R / 2))
    ink = Image.fromarray(np.maximum(np.asarray(ink), np.asarray(main)))

    fg, bg = _colours(rng)
    bg_arr = np.empty((R, R, 3), np.float32)
    bg_arr[:] = bg
    if rng.random() < 0.5:  # gentle illumination gradient
        ramp = np.linspace(-1, 1, R, dtype=np.float32)
        direction = rng.uniform(0, 2 * np.pi)
        grad = np.cos(direction) * ramp[None, :] + np.sin(direction) * ramp[:, None]
        bg_arr += grad[:, :, None] * rng.uniform(0, 40)
    alpha = np.asarray(ink, np.float32)[:, :, None] / 255.0
    img = bg_arr * (1 - alpha) + np.asarray(fg, np.float32) * alpha
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    blur = rng.uniform(0, 1.2) * scale
    if blur > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(pil.resize((size, size), Image.BOX), np.float32)
    sigma = rng.uniform(0, 10)
    out = out + rng.normal(0, sigma, out.shape).astype(np.float32)
    mask = np.asarray(main.resize((size, size), Image.BOX))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), (mask >= 128).astype(np.uint8) * 255


def render(n: int, seed: int, size: int = 32, channels: int = 3, distractors: bool = True):
    """``n`` class-balanced samples: (images (n,size,size,channels) uint8, labels (n,), masks (n,size,size))."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    images = np.empty((n, size, size, channels), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i, y in enumerate(labels):
        img, mask = render_one(rng, int(y), size, distractors)
        images[i] = convert_channels(img, channels)
        masks[i] = mask
    return images, labels, masks
