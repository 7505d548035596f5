"""End to end: the classification service on ephemeral ports, real bytes over HTTP and gRPC, real predictor."""

import ast
import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from clients import PipelineClient
from export import inference_io
from pipelines.web_service import ImageService
from serving.errors import InitError
from serving.model_card import load_card
from serving.pipeline import Op
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from tests.conftest import IMAGES, photo_bytes

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def model_dir(squeezenet_root: Path) -> Path:
    return squeezenet_root / "serving_server"


def service_config(model_dir: Path, **op: object) -> dict:
    return {"http_port": 0, "rpc_port": 0, "worker_num": 4, "limits": {"max_image_pixels": 1_000_000},
            "op": {"imagenet": {"concurrency": 2, **op, "local_service_conf": {
                "model_config": str(model_dir), "use_mkldnn": True, "ir_optim": True}}}}


@pytest.fixture(scope="module")
def service(model_dir: Path) -> Iterator[ImageService]:
    svc = ImageService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict=service_config(model_dir, topk=3))
    svc.start()
    yield svc
    svc.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/imagenet/prediction", data=json.dumps(body).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def expected(model_dir: Path, images: list[bytes]) -> tuple[list[str], np.ndarray]:
    """What the exported model gives in process for the same preprocessed input."""
    card = load_card(model_dir)
    batch = np.stack([card.transforms(data) for data in images])
    probs = inference_io.run(inference_io.create_predictor(model_dir), batch)[0]
    return [card.labels[i].replace(",", "") for i in probs.argmax(axis=1)], probs.max(axis=1)


def parsed(keys: list[str], values: list[str]) -> dict:
    return {key: ast.literal_eval(value) for key, value in zip(keys, values, strict=True)}


@pytest.mark.parametrize("count", [1, 2])
def test_http_matches_in_process_prediction(service: ImageService, model_dir: Path, count: int) -> None:
    images = photo_bytes()[:count]
    keys = ["image"] if count == 1 else [f"image_{i}" for i in range(count)]
    answer = post(service.http_port, {"key": keys, "value": [b64(d) for d in images], "logid": 7})
    assert answer["err_no"] == 0, answer
    result = parsed(answer["key"], answer["value"])
    labels, probs = expected(model_dir, images)
    assert result["label"] == labels
    np.testing.assert_allclose(result["prob"], probs, atol=1e-5)
    assert len(result["topk_label"]) == count and len(result["topk_label"][0]) == 3
    assert result["topk_label"][0][0] == labels[0]


@pytest.mark.parametrize("count", [1, 2])
def test_grpc_client_and_raw_stub_match(service: ImageService, model_dir: Path, count: int) -> None:
    images = photo_bytes()[:count]
    keys = ["image"] if count == 1 else [f"image_{i}" for i in range(count)]
    labels, probs = expected(model_dir, images)
    client = PipelineClient()
    client.connect([f"127.0.0.1:{service.rpc_port}"])
    answer = client.predict(feed_dict=dict(zip(keys, [b64(d) for d in images], strict=True)),
                            fetch=["label", "prob"], log_id=99)
    client.close()
    assert answer.err_no == 0 and list(answer.key) == ["label", "prob"]
    result = parsed(list(answer.key), list(answer.value))
    assert result["label"] == labels
    np.testing.assert_allclose(result["prob"], probs, atol=1e-5)
    with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
        raw = pb_grpc.PipelineServiceStub(channel).inference(
            pb.Request(key=keys, value=[b64(d) for d in images], logid=5, name="imagenet", method="prediction"))
    assert raw.err_no == 0 and parsed(list(raw.key), list(raw.value))["label"] == labels


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


BAD_INPUTS = [
    ({"key": ["image", "image_1"], "value": ["x"]}, "request has 2 keys but 1 values"),
    ({"key": ["picture"], "value": ["x"]}, "request has no image: send key 'image'"),
    ({"key": ["image"], "value": ["***not base64***"]}, "value of 'image' is not valid base64"),
    ({"key": ["image"], "value": [b64(b"plain text, not an image")]}, "not a decodable image"),
    ({"key": ["image"], "value": [b64(photo_bytes()[0][:5000])]}, "JPEG is truncated"),
    ({"key": ["image"], "value": [""]}, "value of 'image' is empty"),
    ({"key": ["image"], "value": [b64(png(np.zeros((1001, 1000, 3), np.uint8)))]},
     "1000x1001 = 1001000 pixels, above the limit of 1000000"),
]


@pytest.mark.parametrize(("body", "message"), BAD_INPUTS)
def test_bad_input_then_good(service: ImageService, body: dict, message: str) -> None:
    answer = post(service.http_port, body)
    assert answer["err_no"] == 5000 and message in answer["err_msg"], answer
    good = post(service.http_port, {"key": ["image"], "value": [b64(photo_bytes()[1])]})
    assert good["err_no"] == 0


def test_bad_input_over_grpc_then_good(service: ImageService) -> None:
    client = PipelineClient()
    client.connect([f"127.0.0.1:{service.rpc_port}"])
    assert client.predict({"image": "%%%"}).err_no == 5000
    assert client.predict({"image": b64(photo_bytes()[0])}, fetch=["label"]).err_no == 0
    client.close()


@pytest.mark.parametrize("image", [np.full((300, 400), 90, np.uint8), np.full((300, 400, 4), 200, np.uint8),
                                   np.full((300, 400, 3), 50000, np.uint16)])
def test_gray_rgba_and_16_bit_images_are_served(service: ImageService, image: np.ndarray) -> None:
    assert post(service.http_port, {"key": ["image"], "value": [b64(png(image))]})["err_no"] == 0


def test_body_limit_and_unknown_service(model_dir: Path) -> None:
    config = service_config(model_dir)
    config["limits"]["max_body_bytes"] = 2000
    svc = ImageService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict=config)
    svc.start()
    try:
        answer = post(svc.http_port, {"key": ["image"], "value": [b64(photo_bytes()[0])]})
        assert answer["err_no"] == 5000 and "exceeds limits.max_body_bytes (2000)" in answer["err_msg"]
        request = urllib.request.Request(f"http://127.0.0.1:{svc.http_port}/resnet/prediction", data=b"{}",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as reply:
            wrong = json.loads(reply.read())
        assert wrong["err_no"] == 3002 and "POST /imagenet/prediction" in wrong["err_msg"]
        small = png(np.full((64, 64, 3), 128, np.uint8))
        assert post(svc.http_port, {"key": ["image"], "value": [b64(small)]})["err_no"] == 0
    finally:
        svc.stop()



def test_client_command_lines(service: ImageService) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    daisy = str(IMAGES / "daisy.jpg")
    http = subprocess.run([sys.executable, "clients/http_client.py", daisy, daisy, "--url",
                           f"http://127.0.0.1:{service.http_port}/imagenet/prediction"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert http.returncode == 0, http.stderr
    assert http.stdout.startswith("label: [") and "prob: [" in http.stdout
    rpc = subprocess.run([sys.executable, "clients/grpc_client.py", daisy, "--endpoint",
                          f"127.0.0.1:{service.rpc_port}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert rpc.returncode == 0, rpc.stderr
    http_labels = ast.literal_eval(http.stdout.splitlines()[0].removeprefix("label: "))
    rpc_labels = ast.literal_eval(rpc.stdout.splitlines()[0].removeprefix("label: "))
    assert len(http_labels) == 2 and rpc_labels == http_labels[:1]


def test_dynamic_batching_merges_concurrent_requests_correctly(model_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    svc = ImageService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict=service_config(model_dir, batch_size=4, auto_batching_timeout=200,
                                                        concurrency=1))
    svc.start()
    (op,) = svc.dag.ops
    calls: list[int] = []
    predict = op.predictor.predict
    op.predictor.predict = lambda feed, fetch=None, ctx=None: calls.append(len(feed["x"])) or predict(feed, fetch, ctx)
    try:
        photos = photo_bytes()
        bodies = [{"key": ["image"], "value": [b64(photos[i % 2])]} for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda body: post(svc.http_port, body), bodies))
    finally:
        svc.stop()
    labels, probs = expected(model_dir, photos)
    for i, answer in enumerate(answers):
        result = parsed(answer["key"], answer["value"])
        assert result["label"] == [labels[i % 2]]
        np.testing.assert_allclose(result["prob"], [probs[i % 2]], atol=1e-5)
    assert sum(calls) == 6 and max(calls) > 1, f"requests were not merged: {calls}"


def test_a_paddle_serving_era_process_override_still_runs(model_dir: Path) -> None:
    from pipelines.web_service import ImagenetOp

    seen: list[int] = []

    class CountingOp(ImagenetOp):
        def process(self, feed_batch: list, typical_logid: int = 0) -> tuple:  # Paddle Serving's signature
            seen.append(typical_logid)
            return super().process(feed_batch, typical_logid)

    class CountingService(ImageService):
        def get_pipeline_response(self, read_op: Op) -> Op:
            return CountingOp(name="imagenet", input_ops=[read_op])

    svc = CountingService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict=service_config(model_dir))
    svc.start()
    try:
        answer = post(svc.http_port, {"key": ["image"], "value": [b64(photo_bytes()[0])], "logid": 77})
    finally:
        svc.stop()
    assert answer["err_no"] == 0, answer
    assert seen == [77]


SHIPPED_CONFIG = """\
#rpc端口, rpc_port和http_port不允许同时为空。当rpc_port为空且http_port不为空时，会自动将rpc_port设置为http_port+1
rpc_port: 0
#http端口
http_port: 0
#worker_num, 最大并发数
worker_num: 1
dag:
    #op资源类型, True, 为线程模型；False，为进程模型
    is_thread_op: False
    #使用性能分析
    tracer:
        interval_s: 10
op:
    imagenet:
        concurrency: 1
        local_service_conf:
            #uci模型路径
            model_config: ResNet50_vd_serving/
            #计算硬件类型: 0=cpu, 1=gpu, 2=tensorRT
            device_type: 1
            devices: "0" # "0,1"
            client_type: local_predictor
            fetch_list: ["prediction"]
"""


def test_paddle_serving_s_shipped_config_loads_and_a_gpu_request_on_the_cpu_build_says_what_to_set(
        model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ResNet50_vd_serving").symlink_to(model_dir, target_is_directory=True)
    (tmp_path / "config.yml").write_text(SHIPPED_CONFIG, encoding="utf-8")
    svc = ImageService(name="imagenet")
    config = svc.prepare_pipeline_config(str(tmp_path / "config.yml"))
    assert config.op["imagenet"].local_service_conf.device_type == 1
    with pytest.raises(InitError, match=r'is the CPU build: set device_type: 0 and devices: "" to run on the CPU'):
        svc.start()


def test_default_config_takes_relative_paths_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from pipelines import web_service

    assert web_service.DEFAULT_CONFIG == ROOT / "config.yml"  # a checkout's own; the wheel's is pipelines/config.yml
    monkeypatch.chdir(tmp_path)
    assert web_service.main(["--http_port", "0", "--rpc_port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: config op.imagenet.local_service_conf.model_config = 'models/SqueezeNet1_1/serving_server': the "
        "folder must exist and hold serving_server_conf.prototxt, or be a model repository's model folder "
        f"(<version>/serving_server/serving_server_conf.prototxt) (looked in {tmp_path}/models/SqueezeNet1_1/"
        "serving_server); export one with python -m export")
