"""Image decoding: every common PNG/JPEG flavour decodes to RGB; broken or huge images fail clearly."""

import cv2
import numpy as np
import pytest

from serving.images import ImageDecodeError, decode_rgb, header_size
from tests.conftest import photo_bytes

LIMIT = 40_000_000


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def test_real_jpeg_decodes_to_rgb() -> None:
    daisy = photo_bytes()[0]
    rgb = decode_rgb(daisy, LIMIT)
    bgr = cv2.imdecode(np.frombuffer(daisy, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    assert header_size(daisy) == (bgr.shape[1], bgr.shape[0])


@pytest.mark.parametrize("image", [
    np.full((20, 30), 128, np.uint8),                       # grayscale
    np.full((20, 30, 4), (10, 20, 30, 255), np.uint8),      # BGRA
    np.full((20, 30, 3), 40000, np.uint16),                 # 16-bit colour
    np.full((20, 30), 65535, np.uint16),                    # 16-bit grayscale
])
def test_gray_rgba_and_16_bit_pngs_are_converted(image: np.ndarray) -> None:
    rgb = decode_rgb(encode(image), LIMIT)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert header_size(encode(image)) == (30, 20)


def test_truncated_jpeg_is_rejected() -> None:
    daisy = photo_bytes()[0]
    with pytest.raises(ImageDecodeError, match="JPEG is truncated"):
        decode_rgb(daisy[: len(daisy) // 2], LIMIT)


def test_truncated_png_and_garbage_are_rejected() -> None:
    png = encode(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_rgb(png[: len(png) // 2], LIMIT)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_rgb(b"GIF89a but not really", LIMIT)
    with pytest.raises(ImageDecodeError, match="image is empty"):
        decode_rgb(b"", LIMIT)


def test_pixel_limit_is_checked_from_the_header() -> None:
    big = encode(np.zeros((100, 200, 3), np.uint8), ".jpg")
    with pytest.raises(ImageDecodeError, match=r"200x100 = 20000 pixels, above the limit of 19999"):
        decode_rgb(big, 19_999)
    assert decode_rgb(big, 20_000).shape == (100, 200, 3)
    bmp = encode(np.zeros((100, 200, 3), np.uint8), ".bmp")
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode_rgb(bmp, 19_999)
