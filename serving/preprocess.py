"""PaddleClas's eval transforms, driven by a model card's `preprocessing` section."""

from dataclasses import dataclass

import cv2
import numpy as np

from serving.errors import PayloadTooLargeError
from serving.images import ImageDecodeError, check_header, decode_bgr

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000


@dataclass(frozen=True)
class Transforms:
    """DecodeImage(to_rgb) -> ResizeImage(resize_short) -> CropImage -> NormalizeImage -> ToCHWImage."""

    resize_short: int
    crop_size: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_card(cls, preprocessing: dict) -> "Transforms":
        """Read the card section the exporter writes."""
        normalize = preprocessing["normalize"]
        return cls(
            resize_short=int(preprocessing["resize_short"]["size"]),
            crop_size=int(preprocessing["center_crop"]["size"]),
            scale=float(normalize["scale"]),
            mean=tuple(float(v) for v in normalize["mean"]),
            std=tuple(float(v) for v in normalize["std"]),
        )

    def resize_crop(self, image: np.ndarray) -> np.ndarray:
        """Resize the short side to `resize_short` (bilinear), then centre-crop `crop_size`."""
        height, width = image.shape[:2]
        percent = self.resize_short / min(width, height)
        new_w, new_h = round(width * percent), round(height * percent)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, left = (new_h - self.crop_size) // 2, (new_w - self.crop_size) // 2
        if top < 0 or left < 0:
            raise ImageDecodeError(f"image {width}x{height} is too small for a {self.crop_size} crop")
        return image[top : top + self.crop_size, left : left + self.crop_size]

    def normalize(self, bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 HWC BGR -> normalized float32 CHW RGB, written channel by channel into `out` (one pass each)."""
        out = np.empty((3, *bgr.shape[:2]), dtype=np.float32) if out is None else out
        for channel in range(3):
            gain = np.float32(self.scale / self.std[channel])
            np.multiply(bgr[:, :, 2 - channel], gain, out=out[channel], dtype=np.float32)
            out[channel] -= np.float32(self.mean[channel] / self.std[channel])
        return out

    def batch(self, images: list[bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
              max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> np.ndarray:
        """Several encoded images -> one float32 [N, 3, S, S] batch, each preprocessed straight into its row.

        Every header is checked (per image and the request's sum) before the first image is decoded.
        """
        known = [check_header(data, max_pixels) if data else None for data in images]
        _check_request_pixels(sum(pixels or 0 for pixels in known), max_request_pixels)
        batch = np.empty((len(images), 3, self.crop_size, self.crop_size), dtype=np.float32)
        decoded = 0
        for row, data in enumerate(images):
            bgr = decode_bgr(data, max_pixels, checked=known[row] is not None)
            decoded += bgr.shape[0] * bgr.shape[1]
            _check_request_pixels(decoded, max_request_pixels)  # formats only OpenCV reads count as they decode
            self.normalize(self.resize_crop(bgr), batch[row])
        return batch

    def __call__(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, out: np.ndarray | None = None) -> np.ndarray:
        """Encoded image bytes -> the model's float32 [3, S, S] input, into `out` (e.g. a row of the batch)."""
        return self.normalize(self.resize_crop(decode_bgr(data, max_pixels)), out)


def _check_request_pixels(pixels: int, limit: int) -> None:
    if pixels > limit:
        raise PayloadTooLargeError(f"the request's images hold {pixels} pixels together, above the limit of {limit} "
                                   "(limits.max_request_pixels); send fewer or smaller images per request")
