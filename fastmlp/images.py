"""Image files to MNIST rows: what ``fastmlp predict`` feeds the network. Depends on nothing
else in the package (Pillow reads the files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# Raster formats only: Pillow would hand EPS to Ghostscript, and other plugins parse formats no
# one sends a digit in.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# A digit needs few pixels (MNIST's have 784); 4 million is a 2000 x 2000 photo, and bounds what
# one image makes this process allocate to about 200 MB (Pillow's own limit is 89 million).
MAX_PIXELS = 4_000_000


def image_to_mnist(path) -> np.ndarray:
    """Read an image file (PNG, JPEG, GIF, BMP, TIFF, WebP or PPM) and convert it the MNIST way.

    1. Grayscale; transparent pixels are composited onto the background colour that contrasts
       with the opaque pixels' ink.
    2. Inverted when the background (the median of the border pixels) is light, so the digit is
       bright on dark, as in MNIST.
    3. Cropped to the digit's bounding box (pixels above 25% of the maximum).
    4. Scaled so its longer side is 20 pixels, keeping the aspect ratio.
    5. Placed in a 28x28 image so that its centre of mass is at the centre.

    The image is turned upright first if its EXIF data says it was taken rotated. Its size is
    checked (at most MAX_PIXELS) before anything is decoded. Returns uint8 (784,), row-major.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():          # (a FIFO or a device would block, or never end)
        what = "a directory" if path.is_dir() else "no such file" if not path.exists() \
            else "not a regular file"
        raise ValueError(f"{path}: not an image file ({what})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ValueError(f"the image is {w} x {h} pixels; at most {MAX_PIXELS} "
                                     f"pixels are read")
                im = ImageOps.exif_transpose(im)
                im.load()
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image of a supported format "
                         f"({', '.join(FORMATS)}): {exc}") from None
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    alpha = rgba[..., 3]
    if (alpha < 0.99).any():
        opaque = alpha > 0.5
        ink_is_dark = lum[opaque].mean() < 0.5 if opaque.any() else True
        bg = 1.0 if ink_is_dark else 0.0
        lum = lum * alpha + bg * (1 - alpha)
    def border(img):
        return np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])

    if np.median(border(lum)) > 0.5:      # light background: invert, so the ink is bright
        lum = 1.0 - lum
    lum = np.clip(lum - np.median(border(lum)), 0, None)   # the background becomes 0
    if lum.max() <= 0.05:
        raise ValueError(f"{path}: no digit found (the image is blank)")
    mask = lum > 0.25 * lum.max()
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = lum[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((crop / crop.max() * 255).astype(np.uint8)).resize((nw, nh),
                                                                             Image.LANCZOS)
    small = np.asarray(small, dtype=np.float64)
    out = np.zeros((28, 28))
    top, left = (28 - nh) // 2, (28 - nw) // 2
    out[top:top + nh, left:left + nw] = small
    total = out.sum()
    cy = (out.sum(axis=1) @ np.arange(28)) / total
    cx = (out.sum(axis=0) @ np.arange(28)) / total
    dy, dx = int(round(13.5 - cy)), int(round(13.5 - cx))
    out = _shift(out, dy, dx)
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(784)


def _shift(img, dy, dx):
    """Shift a 2-D image by whole pixels, filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out
