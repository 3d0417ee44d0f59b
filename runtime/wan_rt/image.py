"""Image-to-video preprocessing (numpy + PIL), step for step as the official `WanTI2V.i2v`.

Official (wan/textimage2video.py, i2v):
    ow, oh = best_output_size(iw, ih, 32, 32, max_area)
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - ow) // 2, (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    img = TF.to_tensor(img).sub_(0.5).div_(0.5).unsqueeze(1)       # [3, 1, oh, ow] in [-1, 1]
`TF.to_tensor` of an RGB image is uint8 HWC -> CHW float32 divided by 255 (a true float32
division), which the numpy below reproduces bit for bit.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np
from PIL import Image

from .errors import WanError

__all__ = ["best_output_size", "load_image", "prepare_image"]


def best_output_size(w, h, dw, dh, expected_area) -> Tuple[int, int]:
    """The official `wan.utils.utils.best_output_size`: (ow, oh), multiples of (dw, dh), area <= expected.

    Where the official code would fail (ZeroDivisionError / assert: the aspect ratio is too extreme
    for the area, so one side rounds down to 0) this raises WanError instead.
    """
    try:
        # float output size
        ratio = w / h
        ow = (expected_area * ratio) ** 0.5
        oh = expected_area / ow

        # process width first
        ow1 = int(ow // dw * dw)
        oh1 = int(expected_area / ow1 // dh * dh)
        ok1 = ow1 % dw == 0 and oh1 % dh == 0 and ow1 * oh1 <= expected_area
        ratio1 = ow1 / oh1

        # process height first
        oh2 = int(oh // dh * dh)
        ow2 = int(expected_area / oh2 // dw * dw)
        ok2 = oh2 % dh == 0 and ow2 % dw == 0 and ow2 * oh2 <= expected_area
        ratio2 = ow2 / oh2
    except ZeroDivisionError:
        ok1 = ok2 = False
    if not (ok1 and ok2):
        raise WanError(f"cannot fit a {w}x{h} image into an area of {expected_area} pixels in "
                       f"multiples of {dw}x{dh}: use a less extreme aspect ratio or a larger "
                       f"max area")

    # compare ratios (tie -> the height-first candidate, as the official code)
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def load_image(path) -> Image.Image:
    """Open an image file as RGB (decoded now, so a broken file fails here)."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise WanError(f"cannot read image {path!r} ({reason}): pass a readable PNG, JPEG or "
                       f"WebP file") from None


def prepare_image(img: Image.Image, max_area: int, multiple: int = 32
                  ) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Resize, center-crop and normalise like the official i2v.

    Returns (float32 [3, 1, oh, ow] in [-1, 1], (ow, oh)); `multiple` is
    patch_size * vae_stride = 2 * 16 = 32 for TI2V-5B.
    """
    if isinstance(max_area, bool) or not isinstance(max_area, (int, np.integer)) or max_area <= 0:
        raise WanError(f"max area must be a positive integer number of pixels, got {max_area!r}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    ih, iw = img.height, img.width
    ow, oh = best_output_size(iw, ih, multiple, multiple, max_area)

    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.Resampling.LANCZOS)

    # center-crop
    x1 = (img.width - ow) // 2
    y1 = (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    assert img.width == ow and img.height == oh

    # TF.to_tensor: HWC uint8 -> CHW float32 / 255; then sub_(0.5).div_(0.5)
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    x /= np.float32(255)
    x -= np.float32(0.5)
    x /= np.float32(0.5)
    return np.ascontiguousarray(x[:, None]), (ow, oh)
