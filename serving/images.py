"""Image bytes -> RGB pixels, safely: size checked from the header before decoding, truncation detected."""

import struct

import cv2
import numpy as np

from serving.errors import InputError, PayloadTooLargeError

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageDecodeError(InputError):
    """The bytes are not a complete image OpenCV can decode."""


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, walking the marker segments."""
    offset = 2
    while offset + 9 < len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG read from its header; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def check_image_count(count: int, limit: int) -> None:
    """Refuse a request with too many images before any of them is decoded."""
    if count > limit:
        raise PayloadTooLargeError(f"request has {count} images, above the limit of {limit} "
                                   "(limits.max_images_per_request)")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} = {width * height} pixels, above the limit of "
                               f"{max_pixels} (limits.max_image_pixels)")


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """Any 8/16-bit, gray, RGB or RGBA image -> RGB uint8 HWC (a view of `decode_bgr`'s pixels)."""
    return decode_bgr(data, max_pixels)[:, :, ::-1]


def decode_bgr(data: bytes, max_pixels: int) -> np.ndarray:
    """Any 8/16-bit, gray, RGB or RGBA image -> OpenCV's BGR uint8 HWC, or an ImageDecodeError saying why not."""
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    size = header_size(data)
    if size is not None:
        _check_pixels(*size, max_pixels)
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.find(b"\xff\xda"):
        raise ImageDecodeError(f"JPEG is truncated: no end-of-image marker after the scan data ({len(data)} bytes)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"input is not a decodable image (JPEG, PNG, BMP, WebP, ...; {len(data)} bytes, "
                               f"starting {data[:8].hex()})")
    _check_pixels(image.shape[1], image.shape[0], max_pixels)
    return image
