"""PaddleClas's eval transforms, checked against the formulas of shared/reference/preprocess.json."""

import cv2
import numpy as np
import pytest

from export.models import get_spec
from serving.preprocess import ImageDecodeError, Transforms
from tests.conftest import photo_bytes


def paddleclas_reference(data: bytes, resize_short: int, crop: int) -> np.ndarray:
    """Literal transcription of DecodeImage, ResizeImage, CropImage, NormalizeImage, ToCHWImage."""
    img = cv2.imdecode(np.frombuffer(data, dtype="uint8"), 1)[:, :, ::-1]
    h, w = img.shape[:2]
    percent = float(resize_short) / min(w, h)
    img = cv2.resize(img, (int(round(w * percent)), int(round(h * percent))))  # noqa: RUF046 - as PaddleClas writes it
    h, w = img.shape[:2]
    img = img[(h - crop) // 2:(h - crop) // 2 + crop, (w - crop) // 2:(w - crop) // 2 + crop]
    mean = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3)).astype("float32")
    std = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3)).astype("float32")
    return ((img.astype("float32") * np.float32(1.0 / 255.0) - mean) / std).transpose((2, 0, 1))


@pytest.mark.parametrize("model", ["SqueezeNet1_1", "DarkNet53"])
def test_matches_paddleclas_on_real_photos(model: str) -> None:
    spec = get_spec(model)
    transforms = Transforms.from_card(spec.preprocessing())
    for data in photo_bytes():
        ours = transforms(data)
        assert ours.shape == (3, spec.crop_size, spec.crop_size) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, paddleclas_reference(data, spec.resize_short, spec.crop_size), atol=1e-6)


def test_undecodable_bytes_raise_a_clear_error() -> None:
    transforms = Transforms.from_card(get_spec("AlexNet").preprocessing())
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        transforms(b"definitely not a jpeg")


def test_batch_rows_equal_single_images() -> None:
    transforms = Transforms.from_card(get_spec("SqueezeNet1_1").preprocessing())
    batch = transforms.batch(photo_bytes())
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    for row, data in zip(batch, photo_bytes(), strict=True):
        np.testing.assert_array_equal(row, transforms(data))
