"""Paddle Serving's `paddle_serving_app.reader` image transforms: the same names, arguments and numerics.

Paddle Serving's PaddleClas examples build their preprocessing from these, so `from serving.reader import ...`
in place of `from paddle_serving_app.reader import ...` keeps such a web_service.py working. Decoding goes
through the kit's bounded decoder (pixel limits from the header, clear errors); URL2Image fetches only when
the operator allows it, within a timeout and a size limit. The Detection* transforms take and return
`(image, im_info)`, im_info carrying `im_shape` and `scale_factor` for detection models' extra inputs.
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

__all__ = [
    "BGR2RGB", "RGB2BGR", "Base64ToImage", "CenterCrop", "DetectionBGR2RGB", "DetectionDiv", "DetectionFile2Image",
    "DetectionNormalize", "DetectionPadStride", "DetectionResize", "DetectionSequential", "DetectionTranspose", "Div",
    "File2Image", "Lambda", "Normalize", "PadStride", "Resize", "ResizeByFactor", "Sequential", "String2Image",
    "Transpose", "URL2Image",
]

URL_TIMEOUT_S = 5.0
URL_MAX_BYTES = 16 * 2**20

# Detection transforms' side information: `im_shape` (float32 [h, w]) and `scale_factor` (float32 [y, x]).
ImInfo = dict[str, Any]


def _three_dims(img: np.ndarray, name: str, layout: str) -> None:
    """InputError unless `img` is a 3-dim array, the only kind these transforms index correctly."""
    shape = getattr(img, "shape", None)
    if shape is None or len(shape) != 3:
        raise InputError(f"{name}: expects a {layout} image (3 dimensions), got shape {shape}")


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
        """Read and decode the file; an unreadable path is an InputError."""
        try:
            data = Path(img_path).read_bytes()
        except OSError as exc:
            raise InputError(f"{type(self).__name__}: cannot read {str(img_path)[:200]!r}: {exc.strerror}") from None
        return super().__call__(data)


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
    """Divide by a value, in float32 as Paddle Serving does."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img as float32, / value."""
        return img.astype(np.float32) / self.value


class Normalize:
    """(img - mean) / std per channel, channels first or last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_first: bool = False) -> None:
        shape = (3, 1, 1) if channel_first else (1, 1, 3)
        self.mean, self.std = np.array(mean).reshape(shape), np.array(std).reshape(shape)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """A new float32 array, each step rounded to float32 as Paddle Serving's in-place arithmetic; input kept."""
        out = np.array(img, dtype=np.float32)
        out -= self.mean
        out /= self.std
        return out


class Lambda:
    """Any callable as a transform."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, img: Any) -> Any:
        """function(img)."""
        return self.function(img)


class ResizeByFactor:
    """OCR detection's resize: long side at most max_side_len, each side then brought to a multiple of factor."""

    def __init__(self, factor: int = 32, max_side_len: int = 2400) -> None:
        if factor <= 0 or max_side_len <= 0:
            raise ValueError(f"ResizeByFactor: factor ({factor}) and max_side_len ({max_side_len}) must be positive")
        self.factor, self.max_side_len = factor, max_side_len

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """cv2.resize (bilinear) to the rounded size; a side that scales to 0 is an InputError."""
        _three_dims(img, "ResizeByFactor", "HWC")
        height, width = img.shape[:2]
        ratio = float(self.max_side_len) / max(height, width) if max(height, width) > self.max_side_len else 1.0
        new_height, new_width = self._to_factor(int(height * ratio)), self._to_factor(int(width * ratio))
        if new_height == 0 or new_width == 0:
            raise InputError(f"ResizeByFactor: the {width}x{height} image has a side that scales to 0 pixels "
                             f"(max_side_len {self.max_side_len})")
        return cv2.resize(img, (new_width, new_height))

    def _to_factor(self, side: int) -> int:
        """Paddle Serving's rounding, kept for its OCR models: multiples stay, under 2 factors -> factor, 97 -> 64."""
        if side % self.factor == 0:
            return side
        if side // self.factor <= 1:
            return self.factor
        return (side // self.factor - 1) * self.factor


class PadStride:
    """Zero-pad a CHW image bottom and right to multiples of `stride` (FPN models need it); 0 leaves it as it is."""

    def __init__(self, stride: int) -> None:
        if stride < 0:
            raise ValueError(f"PadStride: stride must be >= 0 (0 pads nothing), got {stride}")
        self.coarsest_stride = stride

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """A new float32 array (Paddle Serving's dtype), or `img` itself when the stride is 0."""
        if self.coarsest_stride == 0:
            return img
        _three_dims(img, "PadStride", "CHW")
        channels, height, width = img.shape
        stride = self.coarsest_stride
        padded = np.zeros((channels, -(-height // stride) * stride, -(-width // stride) * stride), dtype=np.float32)
        padded[:, :height, :width] = img
        return padded


DetectionTransform = Callable[[Any, ImInfo | None], tuple[Any, ImInfo | None]]


class DetectionSequential:
    """Apply (image, im_info) transforms in order, from im_info {scale_factor: [1, 1], im_shape: None}."""

    def __init__(self, transforms: Sequence[DetectionTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, im: Any) -> tuple[Any, ImInfo]:
        """The last transform's (image, im_info)."""
        im_info: ImInfo = {"scale_factor": np.array([1.0, 1.0], dtype=np.float32), "im_shape": None}
        for transform in self.transforms:
            im, im_info = transform(im, im_info)
        return im, im_info


class DetectionFile2Image(File2Image):
    """An image file's path -> RGB uint8 HWC (detection models take RGB), recording its shape in im_info."""

    def __call__(self, img_path: str | Path, im_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """Decode and convert; a given im_info gets im_shape [h, w] and scale_factor [1, 1] (float32)."""
        img = cv2.cvtColor(super().__call__(img_path), cv2.COLOR_BGR2RGB)
        if im_info is not None:
            im_info["im_shape"] = np.array(img.shape[:2], dtype=np.float32)
            im_info["scale_factor"] = np.array([1.0, 1.0], dtype=np.float32)
        return img, im_info


class DetectionResize:
    """Resize to target_size (h, w): keep_ratio scales the short side to the smaller target, capped by the larger."""

    def __init__(self, target_size: int | Sequence[int], keep_ratio: bool = True,
                 interpolation: int = cv2.INTER_LINEAR) -> None:
        sizes = [target_size, target_size] if isinstance(target_size, int | np.integer) else list(target_size)
        if len(sizes) != 2 or min(sizes) <= 0:
            raise ValueError(f"DetectionResize: target_size must be a positive int or (height, width), "
                             f"got {target_size!r}")
        self.target_size, self.keep_ratio, self.interpolation = sizes, keep_ratio, interpolation

    def __call__(self, im: np.ndarray, im_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """cv2.resize by (fx, fy) as Paddle Serving calls it; a given im_info gets the new im_shape and the scales."""
        _three_dims(im, "DetectionResize", "HWC")
        height, width = im.shape[:2]
        scale_y, scale_x = self._scales(height, width)
        if round(height * scale_y) < 1 or round(width * scale_x) < 1:
            raise InputError(f"DetectionResize: the {width}x{height} image has a side that scales to 0 pixels "
                             f"(target_size {self.target_size})")
        im = cv2.resize(im, None, None, fx=scale_x, fy=scale_y, interpolation=self.interpolation)
        if im_info is not None:
            im_info["im_shape"] = np.array(im.shape[:2]).astype(np.float32)
            im_info["scale_factor"] = np.array([scale_y, scale_x]).astype(np.float32)
        return im, im_info

    def _scales(self, height: int, width: int) -> tuple[float, float]:
        """(scale_y, scale_x): one scale when keeping the ratio, else each side to its target."""
        if not self.keep_ratio:
            return self.target_size[0] / float(height), self.target_size[1] / float(width)
        scale = float(min(self.target_size)) / float(min(height, width))
        if np.round(scale * max(height, width)) > max(self.target_size):
            scale = float(max(self.target_size)) / float(max(height, width))
        return scale, scale


class DetectionNormalize:
    """float32 (im [/ 255] - mean) / std over the last (channel) axis of an HWC image."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], is_scale: bool = True) -> None:
        self.mean = np.array(mean)[np.newaxis, np.newaxis, :]
        self.std = np.array(std)[np.newaxis, np.newaxis, :]
        self.is_scale = is_scale

    def __call__(self, im: np.ndarray, im_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """A new float32 array, rounded to float32 after each step as Paddle Serving's in-place arithmetic is."""
        _three_dims(im, "DetectionNormalize", "HWC")
        channels = im.shape[2]
        if self.mean.size not in (1, channels) or self.std.size not in (1, channels):
            raise InputError(f"DetectionNormalize: the image has {channels} channels, mean has {self.mean.size} "
                             f"and std {self.std.size} values")
        out = im.astype(np.float32)  # always a copy: Paddle Serving's copy=False changed a float32 input in place
        if self.is_scale:
            out = out / 255.0
        out -= self.mean
        out /= self.std
        return out, im_info


class DetectionTranspose:
    """Permute the axes, e.g. (2, 0, 1) for HWC -> CHW, passing im_info on."""

    def __init__(self, transpose_target: Sequence[int]) -> None:
        self.order = tuple(transpose_target)

    def __call__(self, im: np.ndarray, im_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """im.transpose(order); an order that does not fit the image is an InputError."""
        try:
            return im.transpose(self.order), im_info
        except ValueError as exc:
            message = f"DetectionTranspose{self.order}: does not fit an image of shape {im.shape}: {exc}"
            raise InputError(message) from None


class DetectionBGR2RGB:
    """Reverse the channel order of an HWC image, passing im_info on."""

    def __call__(self, img: np.ndarray, img_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """img[:, :, ::-1]."""
        _three_dims(img, "DetectionBGR2RGB", "HWC")
        return img[:, :, ::-1], img_info


class DetectionDiv:
    """Divide by a value in float32, passing im_info on."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, img: np.ndarray, img_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """img.astype(float32) / value."""
        return img.astype(np.float32) / self.value, img_info


class DetectionPadStride:
    """PadStride passing im_info on; a stride <= 0 pads nothing (Paddle Serving's default is 0)."""

    def __init__(self, stride: int = 0) -> None:
        self.pad = PadStride(max(stride, 0))

    def __call__(self, im: np.ndarray, im_info: ImInfo | None = None) -> tuple[np.ndarray, ImInfo | None]:
        """(padded image, im_info), im_info unchanged: its im_shape stays the unpadded size."""
        return self.pad(im), im_info
