"""Pictures as PNGs, the one encoding samples of an image model travel in: [N, 3, H, W] float images in [0, 1]
to PNG bytes and back, for the torch adapter and the Triton backend alike. PIL is imported when a picture is."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def encode_pngs(images: np.ndarray) -> list[bytes]:
    """[N, 3, H, W] floats in [0, 1] (clipped) -> one RGB PNG each, rounded to the nearest 8-bit level."""
    from PIL import Image

    pngs = []
    for picture in (np.clip(images, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1):
        buffer = io.BytesIO()
        Image.fromarray(picture, "RGB").save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def decode_png(png: bytes, shape: Sequence[int]) -> np.ndarray:
    """PNG bytes (as encode_pngs wrote them) -> a [3, H, W] float32 image in [0, 1]; ValueError names what is
    wrong: not a readable PNG, or a picture of another `shape` than the model makes."""
    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(png)).convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable PNG ({error})") from None
    image = np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) / 255
    if tuple(image.shape) != tuple(shape):
        raise ValueError(f"got a {list(image.shape)} picture; want {list(shape)}")
    return image
