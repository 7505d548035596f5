"""Paddle Serving's reader transforms: their formulas on real photos, and the PaddleClas examples' Sequential
against the kit's own preprocessing."""

import base64
import http.server
import threading
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from serving.errors import InputError
from serving.preprocess import Transforms
from serving.reader import (
    BGR2RGB,
    RGB2BGR,
    Base64ToImage,
    CenterCrop,
    Div,
    File2Image,
    Lambda,
    Normalize,
    Resize,
    Sequential,
    String2Image,
    Transpose,
    URL2Image,
)
from tests.conftest import IMAGES, photo_bytes

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo() -> np.ndarray:
    return cv2.imdecode(np.frombuffer(photo_bytes()[0], np.uint8), cv2.IMREAD_COLOR)


def test_decoders_give_opencv_s_bgr_image() -> None:
    data = photo_bytes()[0]
    expected = photo()
    np.testing.assert_array_equal(String2Image()(data), expected)
    np.testing.assert_array_equal(Base64ToImage()(base64.b64encode(data)), expected)
    path = sorted(IMAGES.glob("*"))[0]
    np.testing.assert_array_equal(File2Image()(path), cv2.imread(str(path)))
    with pytest.raises(InputError, match="not base64"):
        Base64ToImage()("%%%")
    with pytest.raises(InputError):
        String2Image()(b"not an image")


def test_resize_short_side_rounds_as_paddle_serving() -> None:
    image = photo()
    height, width = image.shape[:2]
    resized = Resize(256)(image)
    percent = 256 / min(height, width)
    assert resized.shape[:2] == (round(height * percent), round(width * percent))
    np.testing.assert_array_equal(resized, cv2.resize(image, (round(width * percent), round(height * percent))))
    assert Resize((300, 200))(image).shape[:2] == (200, 300)
    capped = Resize(256, max_size=200)(image)  # the long side would pass max_size: it is held to it
    assert max(capped.shape[:2]) == 200
    nearest = Resize((64, 48), interpolation=cv2.INTER_NEAREST)(image)
    np.testing.assert_array_equal(nearest, cv2.resize(image, (64, 48), interpolation=cv2.INTER_NEAREST))


def test_crop_channels_transpose_div_normalize_follow_their_formulas() -> None:
    image = Resize(256)(photo())
    height, width = image.shape[:2]
    crop = CenterCrop(224)(image)
    top, left = (height - 224) // 2, (width - 224) // 2
    np.testing.assert_array_equal(crop, image[top : top + 224, left : left + 224])
    np.testing.assert_array_equal(RGB2BGR()(crop), crop[:, :, ::-1])
    np.testing.assert_array_equal(BGR2RGB()(RGB2BGR()(crop)), crop)
    chw = Transpose((2, 0, 1))(crop)
    assert chw.shape == (3, 224, 224)
    scaled = Div(255)(chw)
    assert scaled.dtype == np.float64 and scaled.max() <= 1.0
    normalized = Normalize(MEAN, STD, True)(scaled)
    np.testing.assert_allclose(normalized[1], (scaled[1] - MEAN[1]) / STD[1])
    last = Normalize(MEAN, STD)(crop / 255.0)
    np.testing.assert_allclose(last[:, :, 2], (crop[:, :, 2] / 255.0 - MEAN[2]) / STD[2])
    assert Lambda(lambda x: x[:2])(crop).shape == (2, 224, 3)
    with pytest.raises(InputError, match="CenterCrop"):
        CenterCrop(512)(crop)


@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (292, 256)])
def test_the_paddleclas_examples_sequential_equals_the_kit_s_preprocessing(resize: int, crop: int) -> None:
    sequence = Sequential([Resize(resize), CenterCrop(crop), RGB2BGR(), Transpose((2, 0, 1)), Div(255),
                           Normalize(MEAN, STD, True)])
    kit = Transforms(resize_short=resize, crop_size=crop, scale=1 / 255, mean=tuple(MEAN), std=tuple(STD))
    for data in photo_bytes():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_allclose(sequence(image), kit(data), atol=1e-5)


@pytest.fixture
def image_server() -> Iterator[str]:
    data = photo_bytes()[0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    server.shutdown()


def test_url2image_fetches_only_when_allowed_and_within_its_limits(image_server: str) -> None:
    with pytest.raises(InputError, match="fetching URLs is off"):
        URL2Image()(image_server)
    np.testing.assert_array_equal(URL2Image(allow_fetch=True)(image_server), photo())
    with pytest.raises(InputError, match="larger than 1000 bytes"):
        URL2Image(allow_fetch=True, max_bytes=1000)(image_server)
    with pytest.raises(InputError, match="not an http"):
        URL2Image(allow_fetch=True)("file:///etc/passwd")
