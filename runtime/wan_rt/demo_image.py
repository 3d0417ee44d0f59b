"""Write the demo's input image (a synthetic landscape), so `make demo` needs no download."""
from __future__ import annotations

import sys

import numpy as np
from PIL import Image


def landscape(width: int = 400, height: int = 300) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 80 * y / height, 140 + 60 * y / height, 230 - 40 * y / height], -1)
    ground = np.stack([60 + 40 * x / width, 120 + 30 * np.sin(x / 25.0), 50 + 0 * x], -1)
    horizon = height * 0.6 + 12 * np.sin(x / 40.0)
    image = np.where((y > horizon)[..., None], ground, sky)
    sun = (x - width * 0.7) ** 2 + (y - height * 0.3) ** 2 < (height * 0.08) ** 2
    image[sun] = (255, 220, 120)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def main(path: str) -> None:
    landscape().save(path)


if __name__ == "__main__":
    main(sys.argv[1])
