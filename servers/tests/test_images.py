"""PNG samples (images.py), shared by the torch adapter and the Triton backend: values round to the nearest of
256 levels and come back as level / 255; a PNG of the wrong size or no PNG at all is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")

from noisesearch_server.images import decode_png, encode_pngs  # noqa: E402


def test_pictures_round_trip_through_8_bit_levels_clipped_to_0_1():
    image = np.array([[[0.0, 0.5], [1.0, 2.0]], [[-1.0, 0.25], [0.75, 0.1]], [[0.002, 0.998], [0.5, 0.5]]], np.float32)
    # By hand: round(255 * clip(v, 0, 1)) / 255, level by level (0.5 * 255 = 127.5 rounds to the even 128).
    levels = np.array([[[0, 128], [255, 255]], [[0, 64], [191, 26]], [[1, 254], [128, 128]]], np.float32)
    [png] = encode_pngs(image[None])
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_png(png, (3, 2, 2)), levels / 255)


def test_a_picture_of_another_size_or_no_picture_is_refused_by_name():
    [png] = encode_pngs(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"got a \[3, 2, 2\] picture; want \[3, 4, 4\]"):
        decode_png(png, (3, 4, 4))
    with pytest.raises(ValueError, match="not a readable PNG"):
        decode_png(b"not a png", (3, 2, 2))
