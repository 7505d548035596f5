"""Image bytes -> pixels, safely: format and size read from the header before any pixel is allocated.

Two guards, both before decoding: the header's size (Pillow reads the header of every format it knows;
the Radiance HDR and PFM text headers are read here) against `max_image_pixels`, and OpenCV's own
process-wide cap, OPENCV_IO_MAX_IMAGE_PIXELS, which OpenCV reads once when cv2 is imported and then
checks for every format before allocating. `serving/__init__.py` sets that variable before anything
imports cv2.
"""

import io
import os
import re
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import InputError, PayloadTooLargeError

OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
_TEXT_HEADERS = {  # format -> (signature, pattern giving width and height)
    "HDR": (b"#?", re.compile(rb"\n\n[-+]Y (\d+) [-+]X (\d+)\n")),
    "PFM": (b"P", re.compile(rb"\AP[Ff]\s+(\d+)\s+(\d+)\s")),
}


# Only headers are read here and our own limits decide; catch_warnings per call would race between request threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageDecodeError(InputError):
    """The bytes are not a complete image OpenCV can decode, or not one this service accepts."""


def opencv_pixel_cap() -> int:
    """The largest image OpenCV decodes in this process (OPENCV_IO_MAX_IMAGE_PIXELS as read at cv2's import)."""
    return int(os.environ.get(OPENCV_PIXELS_ENV, 1 << 30))


def _text_header(data: bytes) -> tuple[str, int, int] | None:
    for name, (signature, pattern) in _TEXT_HEADERS.items():
        if data.startswith(signature):
            match = pattern.search(data[:4096])
            if match:
                first, second = int(match[1]), int(match[2])
                return (name, second, first) if name == "HDR" else (name, first, second)  # HDR: rows first
    return None


def header_info(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header alone, without decoding; None when no reader knows the format."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format or "image", image.width, image.height
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image refused from its header: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return _text_header(data)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, for any format header_info reads."""
    info = header_info(data)
    return None if info is None else info[1:]


def check_image_count(count: int, limit: int, what: str = "limits.max_images_per_request") -> None:
    """Refuse a request with too many images before any of them is decoded."""
    if count > limit:
        raise PayloadTooLargeError(f"request has {count} images, above the limit of {limit} ({what})")


def check_header(data: bytes, max_pixels: int) -> int | None:
    """The image's pixel count from its header after checking it against `max_pixels`; None if unreadable."""
    info = header_info(data)
    if info is None:
        return None
    kind, width, height = info
    if width * height > max_pixels:
        raise ImageDecodeError(f"{kind} image is {width}x{height} = {width * height} pixels, above the limit of "
                               f"{max_pixels} (limits.max_image_pixels); refused from its header, before decoding")
    return width * height


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """Any 8/16-bit, gray, RGB or RGBA image -> RGB uint8 HWC (a view of `decode_bgr`'s pixels)."""
    return decode_bgr(data, max_pixels)[:, :, ::-1]


def decode_bgr(data: bytes, max_pixels: int, checked: bool = False) -> np.ndarray:
    """Any 8/16-bit, gray, RGB or RGBA image -> OpenCV's BGR uint8 HWC, or an ImageDecodeError saying why not.

    `checked`: the caller already ran check_header on these bytes.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    if not checked:
        check_header(data, max_pixels)
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.find(b"\xff\xda"):
        raise ImageDecodeError(f"JPEG is truncated: no end-of-image marker after the scan data ({len(data)} bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        raise ImageDecodeError(f"image is above OpenCV's pixel cap of {opencv_pixel_cap()} ({OPENCV_PIXELS_ENV}); "
                               "refused from its header, before decoding") from None
    if image is None:
        raise ImageDecodeError(f"input is not a decodable image (JPEG, PNG, BMP, WebP, ...; {len(data)} bytes, "
                               f"starting {data[:8].hex()})")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageDecodeError(f"image is {image.shape[1]}x{image.shape[0]} = {image.shape[0] * image.shape[1]} "
                               f"pixels, above the limit of {max_pixels} (limits.max_image_pixels)")
    return image
