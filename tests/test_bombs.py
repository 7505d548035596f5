"""Decompression bombs and oversized requests are refused from headers, before any pixel is allocated."""

import base64
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.web_service import ImageService
from serving.images import ImageDecodeError, decode_bgr
from serving.model_server import ModelServer
from tests.bombs import SIDE, all_bombs
from tests.conftest import running_model_server

GROWTH_LIMIT_MB = 50
REPORTED = {"PGM": "PPM"}  # Pillow names every Netpbm flavour PPM


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return all_bombs()


@pytest.fixture(scope="module")
def pipeline(squeezenet_root: Path) -> Iterator[ImageService]:
    service = ImageService(name="imagenet")
    conf = {"model_config": str(squeezenet_root / "serving_server")}
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {"imagenet": {"local_service_conf": conf}}})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def model_server(squeezenet_root: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", squeezenet_root / "serving_server", "--port", "0", "--thread", "1") as server:
        yield server


def peak_rss_mb() -> float:
    """VmHWM of this process (the servers run in it), in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def to_pipeline(service: ImageService, images: list[bytes]) -> dict:
    keys = ["image"] if len(images) == 1 else [f"image_{i}" for i in range(len(images))]
    values = [base64.b64encode(data).decode() for data in images]
    return post_json(f"http://127.0.0.1:{service.http_port}/imagenet/prediction", {"key": keys, "value": values})


def to_model_server(server: ModelServer, images: list[bytes]) -> dict:
    tensor = {"name": "x", "alias_name": "x", "elem_type": 20, "shape": [len(images)],
              "data": [base64.b64encode(data).decode() for data in images]}
    return post_json(f"http://127.0.0.1:{server.port}/GeneralModelService/inference", {"tensor": [tensor]})


@pytest.mark.parametrize("target", ["pipeline", "model_server"])
def test_every_bomb_is_refused_from_its_header(request: pytest.FixtureRequest, target: str,
                                               bombs: dict[str, bytes]) -> None:
    """err_no 5000 naming format and size; the server's peak RSS grows by < 50 MB; a good image still works."""
    server = request.getfixturevalue(target)
    send = to_pipeline if target == "pipeline" else to_model_server
    good = np.zeros((300, 400, 3), np.uint8)
    photo = cv2.imencode(".jpg", good)[1].tobytes()
    assert send(server, [photo])["err_no"] == 0
    for name, data in bombs.items():
        growths = []
        for _ in range(2):  # the smaller of two: the reading is process-wide, a decoded bomb would show in both
            reset_peak_rss()
            before = peak_rss_mb()
            answer = send(server, [data])
            growths.append(peak_rss_mb() - before)
        growth = min(growths)
        assert answer["err_no"] == 5000, (name, answer)
        assert f"{REPORTED.get(name, name)} image is {SIDE}x{SIDE}" in answer["err_msg"], answer["err_msg"]
        assert growth < GROWTH_LIMIT_MB, f"{name}: peak RSS grew by {growth:.0f} MB"
    assert send(server, [photo])["err_no"] == 0


def test_opencv_refuses_every_bomb_even_without_the_header_check(bombs: dict[str, bytes]) -> None:
    """The second guard: OpenCV's process-wide cap (set by `import serving`) refuses each before allocating."""
    for name, data in bombs.items():
        reset_peak_rss()
        before = peak_rss_mb()
        with pytest.raises(ImageDecodeError, match="OpenCV's pixel cap of 40000000"):
            decode_bgr(data, 10**9, checked=True)
        assert peak_rss_mb() - before < GROWTH_LIMIT_MB, name


@pytest.mark.parametrize("target", ["pipeline", "model_server"])
def test_image_count_over_the_models_batch_and_request_pixels_are_refused_before_decoding(
        request: pytest.FixtureRequest, target: str) -> None:
    """33 images for a max_batch_size of 32, and 4 x 30 MP (over max_request_pixels 100 MP): no decode at all."""
    server = request.getfixturevalue(target)
    send = to_pipeline if target == "pipeline" else to_model_server
    small = _png(64, 64)
    answer = send(server, [small] * 33)
    assert answer["err_no"] == 5000 and "33 images, above the limit of 32" in answer["err_msg"]
    assert "max_batch_size" in answer["err_msg"]
    large = _png(6000, 5000)
    reset_peak_rss()
    before = peak_rss_mb()
    answer = send(server, [large] * 4)
    assert answer["err_no"] == 5000 and "120000000 pixels together" in answer["err_msg"], answer
    assert "limits.max_request_pixels" in answer["err_msg"]
    assert peak_rss_mb() - before < GROWTH_LIMIT_MB


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()
