"""Paddle Serving's reader transforms: their formulas on real photos, the PaddleClas examples' Sequential
against the kit's own preprocessing, and the detection transforms' (image, im_info) chain."""

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from serving import reader
from serving.errors import InputError
from serving.migrate import MODULES, migrate_text
from serving.preprocess import Transforms
from serving.reader import (
    BGR2RGB,
    RGB2BGR,
    Base64ToImage,
    CenterCrop,
    DetectionBGR2RGB,
    DetectionDiv,
    DetectionFile2Image,
    DetectionNormalize,
    DetectionPadStride,
    DetectionResize,
    DetectionSequential,
    DetectionTranspose,
    Div,
    File2Image,
    Lambda,
    Normalize,
    PadStride,
    Resize,
    ResizeByFactor,
    Sequential,
    String2Image,
    Transpose,
    URL2Image,
)
from tests.conftest import IMAGES, photo_bytes

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


DAISY = IMAGES / "daisy.jpg"  # 500 wide, 563 high


def photo() -> np.ndarray:
    return cv2.imdecode(np.frombuffer(photo_bytes()[0], np.uint8), cv2.IMREAD_COLOR)


def daisy_rgb() -> np.ndarray:
    return cv2.imread(str(DAISY))[:, :, ::-1].copy()


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
    assert scaled.dtype == np.float32 and scaled.max() <= 1.0
    np.testing.assert_array_equal(scaled, chw.astype(np.float32) / np.float32(255))
    normalized = Normalize(MEAN, STD, True)(scaled)
    assert normalized.dtype == np.float32
    expected = ((scaled[1] - np.float32(MEAN[1])).astype(np.float32) / STD[1]).astype(np.float32)
    np.testing.assert_allclose(normalized[1], expected, rtol=1e-6)
    last = Normalize(MEAN, STD)(crop / 255.0)
    np.testing.assert_allclose(last[:, :, 2], (crop[:, :, 2] / 255.0 - MEAN[2]) / STD[2], rtol=1e-5)
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


@pytest.mark.parametrize(("crop", "factor", "max_side_len", "size"), [
    ((563, 500), 32, 2400, (512, 448)),  # 563 -> 17 factors and a rest -> 16 factors; 500 -> 15 and a rest -> 14
    ((563, 500), 32, 300, (256, 224)),  # long side to 300 (short 266), then each rounded
    ((96, 320), 32, 2400, (96, 320)),  # multiples are kept
    ((97, 63), 32, 2400, (64, 32)),  # one factor below the multiple under 97; 63 is under two factors -> 32
    ((20, 40), 32, 2400, (32, 32)),  # under two factors (even under one) -> factor
    ((161, 100), 32, 128, (64, 32)),  # 161 * (128 / 161) = 127.99..., truncated to 127 -> 64, not 128
    ((97, 63), 10, 2400, (80, 50)),  # the height rounds by `factor` too (Paddle Serving's used 32: 64)
])
def test_resize_by_factor_rounds_as_paddle_serving(crop: tuple[int, int], factor: int, max_side_len: int,
                                                   size: tuple[int, int]) -> None:
    image = photo()[: crop[0], : crop[1]]
    resized = ResizeByFactor(factor, max_side_len)(image)
    assert resized.shape == (*size, 3)
    np.testing.assert_array_equal(resized, cv2.resize(image, (size[1], size[0])))


def test_resize_by_factor_refuses_what_it_cannot_resize() -> None:
    with pytest.raises(InputError, match="scales to 0 pixels"):
        ResizeByFactor(32, 100)(photo()[:1, :400])  # 1 * 0.25 -> 0 rows (Paddle Serving returned (None, (None, None)))
    with pytest.raises(InputError, match="HWC"):
        ResizeByFactor()(photo()[:, :, 0])
    with pytest.raises(ValueError, match="must be positive"):
        ResizeByFactor(0)


def test_pad_stride_zero_pads_chw_bottom_right_in_float32() -> None:
    chw = Transpose((2, 0, 1))(photo())  # (3, 563, 500)
    padded = PadStride(32)(chw)
    assert padded.shape == (3, 576, 512) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, :563, :500], chw)
    assert not padded[:, 563:, :].any() and not padded[:, :, 500:].any()
    square = Transpose((2, 0, 1))(photo()[:250, :250])
    exact = PadStride(50)(square)
    assert exact.shape == (3, 250, 250) and exact.dtype == np.float32
    np.testing.assert_array_equal(exact, square)
    assert PadStride(0)(chw) is chw
    with pytest.raises(ValueError, match=">= 0"):
        PadStride(-32)  # Paddle Serving's padded to a negative multiple and failed or truncated
    with pytest.raises(InputError, match="CHW"):
        PadStride(32)(chw[0])


def test_detection_file2image_decodes_to_rgb_and_records_the_shape(tmp_path: Path) -> None:
    info = {"scale_factor": np.array([2.0, 2.0], np.float32), "im_shape": None}
    image, returned = DetectionFile2Image()(DAISY, info)
    np.testing.assert_array_equal(image, daisy_rgb())
    assert returned is info
    np.testing.assert_array_equal(info["im_shape"], np.array([563, 500], np.float32))
    np.testing.assert_array_equal(info["scale_factor"], np.array([1, 1], np.float32))
    assert info["im_shape"].dtype == info["scale_factor"].dtype == np.float32
    assert DetectionFile2Image()(DAISY)[1] is None
    with pytest.raises(InputError, match="DetectionFile2Image: cannot read"):
        DetectionFile2Image()(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InputError, match="not a decodable image"):
        DetectionFile2Image()(tmp_path / "notes.jpg")
    with pytest.raises(InputError, match="above the limit of 1000"):
        DetectionFile2Image(max_pixels=1000)(DAISY)


@pytest.mark.parametrize(("target", "keep_ratio", "shape", "scales"), [
    ((800, 1333), True, (901, 800), (1.6, 1.6)),  # short side 500 -> 800; 563 * 1.6 = 900.8 -> 901
    ((100, 110), True, (110, 98), (110 / 563, 110 / 563)),  # 563 * 0.2 = 113 > 110: the long side is held to 110
    ((608, 608), False, (608, 608), (608 / 563, 608 / 500)),  # each side to its target
    (300, True, (300, 266), (300 / 563, 300 / 563)),  # an int is (300, 300): 500 -> 300 would make 563 -> 338
])
def test_detection_resize_scales_and_reports_them(target: int | tuple[int, int], keep_ratio: bool,
                                                  shape: tuple[int, int], scales: tuple[float, float]) -> None:
    image = daisy_rgb()
    info = {"scale_factor": np.array([1, 1], np.float32), "im_shape": None}
    resized, returned = DetectionResize(target, keep_ratio, interpolation=cv2.INTER_CUBIC)(image, info)
    assert resized.shape == (*shape, 3) and returned is info
    expected = cv2.resize(image, None, None, fx=scales[1], fy=scales[0], interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(resized, expected)
    np.testing.assert_array_equal(info["im_shape"], np.array(shape, np.float32))
    np.testing.assert_array_equal(info["scale_factor"], np.array(scales, np.float32))
    assert info["im_shape"].dtype == info["scale_factor"].dtype == np.float32


def test_detection_resize_refuses_bad_sizes() -> None:
    assert DetectionResize(256)(daisy_rgb())[1] is None
    with pytest.raises(InputError, match="scales to 0 pixels"):
        DetectionResize((100, 100))(daisy_rgb()[:1, :500])  # 100 / 1 caps at 100 / 500: 1 row -> 0.2 -> 0
    with pytest.raises(InputError, match="HWC"):
        DetectionResize(256)(daisy_rgb()[:, :, 0])
    for bad in (0, (800, 0), (1, 2, 3)):
        with pytest.raises(ValueError, match="target_size"):
            DetectionResize(bad)


def test_detection_normalize_rounds_to_float32_at_each_step_and_leaves_its_input() -> None:
    image = daisy_rgb()
    normalized, info = DetectionNormalize(MEAN, STD, True)(image, {"im_shape": None})
    assert normalized.dtype == np.float32 and info == {"im_shape": None}
    scaled = image.astype(np.float32) / np.float32(255)
    expected = ((scaled - np.array(MEAN)).astype(np.float32) / np.array(STD)).astype(np.float32)
    np.testing.assert_array_equal(normalized, expected)
    np.testing.assert_allclose(normalized[10, 20], (image[10, 20] / 255 - np.array(MEAN)) / np.array(STD), atol=1e-6)
    caffe_mean = [102.9801, 115.9465, 122.7717]  # Paddle Serving's Faster R-CNN example: no /255, std 1
    floats = image.astype(np.float32)
    unscaled, _ = DetectionNormalize(caffe_mean, [1.0, 1.0, 1.0], False)(floats)
    np.testing.assert_array_equal(unscaled, (floats - np.array(caffe_mean)).astype(np.float32))
    np.testing.assert_array_equal(floats, image)  # Paddle Serving's normalized a float32 input in place
    with pytest.raises(InputError, match="4 channels, mean has 3"):
        DetectionNormalize(MEAN, STD)(cv2.cvtColor(image, cv2.COLOR_RGB2RGBA))
    with pytest.raises(InputError, match="HWC"):
        DetectionNormalize(MEAN, STD)(image[:, :, 0])


def test_detection_transpose_bgr2rgb_div_pass_im_info_on() -> None:
    image = daisy_rgb()
    info = {"im_shape": np.array([563, 500], np.float32)}
    chw, returned = DetectionTranspose((2, 0, 1))(image, info)
    assert chw.shape == (3, 563, 500) and returned is info
    np.testing.assert_array_equal(chw[1], image[:, :, 1])
    with pytest.raises(InputError, match=r"DetectionTranspose\(2, 0\): does not fit an image of shape \(563, 500, 3\)"):
        DetectionTranspose((2, 0))(image)
    bgr, returned = DetectionBGR2RGB()(image, info)
    np.testing.assert_array_equal(bgr, cv2.imread(str(DAISY)))
    assert returned is info
    with pytest.raises(InputError, match="HWC"):
        DetectionBGR2RGB()(image[:, :, 0])
    divided, returned = DetectionDiv(255)(image, info)
    assert divided.dtype == np.float32 and returned is info
    np.testing.assert_array_equal(divided, image.astype(np.float32) / np.float32(255))


def test_detection_pad_stride_pads_and_keeps_the_unpadded_im_shape() -> None:
    chw = DetectionTranspose((2, 0, 1))(daisy_rgb())[0]
    info = {"im_shape": np.array([563, 500], np.float32)}
    padded, returned = DetectionPadStride(32)(chw, info)
    assert padded.shape == (3, 576, 512) and returned is info
    np.testing.assert_array_equal(info["im_shape"], [563, 500])
    for stride in (0, -32):  # Paddle Serving's returned the bare image here, which broke DetectionSequential
        image, returned = DetectionPadStride(stride)(chw, info)
        assert image is chw and returned is info


def test_detection_sequential_runs_paddle_serving_s_faster_rcnn_chain_on_a_photo() -> None:
    preprocess = DetectionSequential([
        DetectionFile2Image(),
        DetectionResize((800, 1333), True, interpolation=2),
        DetectionNormalize(MEAN, STD, True),
        DetectionTranspose((2, 0, 1)),
        DetectionPadStride(32),
    ])
    im, im_info = preprocess(str(DAISY))
    resized = cv2.resize(daisy_rgb(), None, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_CUBIC)
    scaled = resized.astype(np.float32) / np.float32(255)
    normalized = ((scaled - np.array(MEAN)).astype(np.float32) / np.array(STD)).astype(np.float32)
    assert im.shape == (3, 928, 800) and im.dtype == np.float32
    np.testing.assert_array_equal(im[:, :901, :], normalized.transpose(2, 0, 1))
    assert not im[:, 901:, :].any()
    assert set(im_info) == {"im_shape", "scale_factor"}
    np.testing.assert_array_equal(im_info["im_shape"], np.array([901, 800], np.float32))
    np.testing.assert_array_equal(im_info["scale_factor"], np.array([1.6, 1.6], np.float32))


def test_detection_sequential_starts_from_unit_scale_and_no_shape() -> None:
    image = photo()
    im, im_info = DetectionSequential([DetectionBGR2RGB()])(image)
    np.testing.assert_array_equal(im, image[:, :, ::-1])
    assert im_info["im_shape"] is None and im_info["scale_factor"].dtype == np.float32
    np.testing.assert_array_equal(im_info["scale_factor"], [1.0, 1.0])


def test_star_import_and_migrate_cover_every_transform() -> None:
    classes = {name for name, value in vars(reader).items()
               if isinstance(value, type) and value.__module__ == "serving.reader"}
    assert set(reader.__all__) == classes == MODULES["paddle_serving_app.reader"][1]
    namespace: dict[str, object] = {}
    exec("from serving.reader import *", namespace)
    assert classes <= namespace.keys()
    source = "from paddle_serving_app.reader import DetectionSequential, DetectionResize, PadStride\n"
    assert migrate_text(source).text == "from serving.reader import DetectionSequential, DetectionResize, PadStride\n"
