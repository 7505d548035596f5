"""Paddle Serving's `paddle_serving_app.reader` image transforms: the same names, arguments and numerics.

Paddle Serving's PaddleClas examples build their preprocessing from these, so `from serving.reader import ...`
in place of `from paddle_serving_app.reader import ...` keeps such a web_service.py working. Decoding goes
through the kit's bounded decoder (pixel limits from the header, clear errors); URL2Image fetches only when
the operator allows it, within a timeout and a size limit.
"""

import base64
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serving.errors import InputError
from serving.images import decode_bgr
from serving.preprocess import DEFAULT_MAX_PIXELS

URL_TIMEOUT_S = 5.0
URL_MAX_BYTES = 16 * 2**20


class Sequential:
    """Apply the transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        """The last transform's result."""
        for transform in self.transforms:
            img = transform(img)
        return img


class String2Image:
    """Encoded image bytes -> BGR uint8 HWC, through the bounded decoder."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels

    def __call__(self, data: bytes) -> np.ndarray:
        """Decode, or InputError naming what is wrong."""
        return decode_bgr(bytes(data), self.max_pixels)


class Base64ToImage(String2Image):
    """Base64 text of an image file -> BGR uint8 HWC."""

    def __call__(self, img_base64: str | bytes) -> np.ndarray:
        """Decode the base64, then the image."""
        try:
            data = base64.b64decode(img_base64, validate=True)
        except ValueError:
            raise InputError("Base64ToImage: the value is not base64 text of an image file") from None
        return super().__call__(data)


class File2Image(String2Image):
    """An image file's path -> BGR uint8 HWC."""

    def __call__(self, img_path: str | Path) -> np.ndarray:
        """Read and decode the file."""
        return super().__call__(Path(img_path).read_bytes())


class URL2Image(String2Image):
    """An http(s) URL -> BGR uint8 HWC; refused unless `allow_fetch` (a server fetching URLs is a forger's tool)."""

    def __init__(self, allow_fetch: bool = False, timeout_s: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(max_pixels)
        self.allow_fetch, self.timeout_s, self.max_bytes = allow_fetch, timeout_s, max_bytes

    def __call__(self, img_url: str) -> np.ndarray:
        """Fetch within the timeout and size limit, then decode."""
        if not self.allow_fetch:
            raise InputError("URL2Image: fetching URLs is off; create it with URL2Image(allow_fetch=True) if this "
                             "service may fetch images from the network")
        if not img_url.startswith(("http://", "https://")):
            raise InputError(f"URL2Image: {img_url[:100]!r} is not an http(s) URL")
        try:
            with urllib.request.urlopen(img_url, timeout=self.timeout_s) as answer:
                data = answer.read(self.max_bytes + 1)
        except OSError as exc:
            raise InputError(f"URL2Image: cannot fetch {img_url[:100]}: {exc}") from None
        if len(data) > self.max_bytes:
            raise InputError(f"URL2Image: {img_url[:100]} is larger than {self.max_bytes} bytes")
        return super().__call__(data)


class Resize:
    """An int resizes the short side to it (Paddle Serving's rounding); a (width, height) tuple sets both."""

    def __init__(self, size: int | Sequence[int], max_size: int = 2147483647, interpolation: int | None = None) -> None:
        self.size, self.max_size, self.interpolation = size, max_size, interpolation

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """cv2.resize to the computed size (bilinear unless an interpolation is given)."""
        if isinstance(self.size, Sequence):
            width, height = min(self.size[0], self.max_size), min(self.size[1], self.max_size)
        else:
            percent = float(self.size) / min(img.shape[0], img.shape[1])
            if np.round(percent * max(img.shape[0], img.shape[1])) > self.max_size:
                percent = float(self.max_size) / float(max(img.shape[0], img.shape[1]))
            width, height = round(img.shape[1] * percent), round(img.shape[0] * percent)
        if self.interpolation is None:
            return cv2.resize(img, (width, height))
        return cv2.resize(img, (width, height), interpolation=self.interpolation)


class CenterCrop:
    """The centred `size` x `size` square, starts rounded down."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img[h0:h0+size, w0:w0+size]; an image smaller than the crop is an InputError."""
        height, width = img.shape[:2]
        if height < self.size or width < self.size:
            raise InputError(f"CenterCrop({self.size}): the image is only {width}x{height}")
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return img[top : top + self.size, left : left + self.size]


class RGB2BGR:
    """Reverse the channel order of an HWC image."""

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img[:, :, ::-1]."""
        return img[:, :, ::-1]


class BGR2RGB(RGB2BGR):
    """Reverse the channel order of an HWC image (the same operation, named the other way)."""


class Transpose:
    """Permute the axes, e.g. (2, 0, 1) for HWC -> CHW."""

    def __init__(self, transpose_target: Sequence[int]) -> None:
        self.order = tuple(transpose_target)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img.transpose(order)."""
        return img.transpose(self.order)


class Div:
    """Divide by a value (the result is float64, as in Paddle Serving)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img / value."""
        return img / self.value


class Normalize:
    """(img - mean) / std per channel, channels first or last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_first: bool = False) -> None:
        shape = (3, 1, 1) if channel_first else (1, 1, 3)
        self.mean, self.std = np.array(mean).reshape(shape), np.array(std).reshape(shape)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """A new float array; the input is not changed."""
        return (img - self.mean) / self.std


class Lambda:
    """Any callable as a transform."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, img: Any) -> Any:
        """function(img)."""
        return self.function(img)
