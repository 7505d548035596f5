"""Open Inference Protocol interoperability: tritonclient (HTTP JSON and binary, gRPC) and requests against both
live servers; their answers equal the Paddle Serving protocols' for the same images, bad input gets the
protocol's errors and the server keeps serving."""

import ast
import base64
import json
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from pipelines.web_service import ImageService
from serving.model_card import load_card
from serving.model_server import ModelServer
from serving.proto import grpc_predict_v2_pb2 as pb
from serving.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.protocols.oip_models import _feed_tensor
from serving.tensors import to_tensor
from tests.conftest import photo_bytes, running_model_server

MODEL = "SqueezeNet1_1"  # the model server's model, named by its card
SERVICE = "imagenet"  # the pipeline's model: the service
TOPK = 3


@pytest.fixture(scope="module")
def pipeline(squeezenet_root: Path) -> Iterator[ImageService]:
    service = ImageService(name=SERVICE)
    service.prepare_pipeline_config(yml_dict={
        "http_port": 0, "rpc_port": 0, "worker_num": 2,
        "op": {"imagenet": {"concurrency": 1, "topk": TOPK, "local_service_conf": {
            "model_config": str(squeezenet_root / "serving_server")}}}})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def model_server(squeezenet_root: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", squeezenet_root / "serving_server", "--port", "0", "--grpc_port", "0",
                              "--thread", "2") as server:
        yield server


@pytest.fixture(scope="module")
def batch(squeezenet_root: Path) -> np.ndarray:
    """The two photos preprocessed as the model card says: what the model server takes."""
    card = load_card(squeezenet_root / "serving_server")
    return np.stack([card.transforms(data) for data in photo_bytes()]).astype(np.float32)


def http_url(server: ImageService | ModelServer) -> str:
    return f"127.0.0.1:{server.http_port if isinstance(server, ImageService) else server.port}"


def grpc_url(server: ImageService | ModelServer) -> str:
    return f"127.0.0.1:{server.rpc_port if isinstance(server, ImageService) else server.grpc_port}"


@pytest.fixture(scope="module", params=["pipeline", "model_server"])
def server(request: pytest.FixtureRequest) -> ImageService | ModelServer:
    return request.getfixturevalue(request.param)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def paddle_pipeline_answer(pipeline: ImageService) -> dict:
    """What Paddle Serving's RESTful pipeline API answers for the two photos, parsed."""
    body = {"key": ["image_0", "image_1"], "value": [b64(data) for data in photo_bytes()]}
    answer = requests.post(f"http://{http_url(pipeline)}/{SERVICE}/prediction", json=body, timeout=30).json()
    assert answer["err_no"] == 0, answer
    return {key: ast.literal_eval(value) for key, value in zip(answer["key"], answer["value"], strict=True)}


def paddle_model_answer(model_server: ModelServer, batch: np.ndarray) -> np.ndarray:
    """What GeneralModelService over HTTP answers for the preprocessed photos."""
    body = {"tensor": [{"name": "x", "alias_name": "x", "elem_type": 1, "shape": list(batch.shape),
                        "float_data": batch.ravel().tolist()}], "fetch_var_names": ["prediction"]}
    answer = requests.post(f"http://{http_url(model_server)}/GeneralModelService/inference", json=body,
                           timeout=30).json()
    assert answer["err_no"] == 0, answer
    tensor = answer["outputs"][0]["tensor"][0]
    return np.asarray(tensor["float_data"], np.float32).reshape(tensor["shape"])


def test_health_and_server_metadata(server: ImageService | ModelServer) -> None:
    http = thttp.InferenceServerClient(http_url(server))
    rpc = tgrpc.InferenceServerClient(grpc_url(server))
    assert http.is_server_live() and http.is_server_ready() and rpc.is_server_live() and rpc.is_server_ready()
    for path in ("/v2/health/live", "/v2/health/ready"):
        reply = requests.get(f"http://{http_url(server)}{path}", timeout=10)
        assert (reply.status_code, reply.content) == (200, b"")
    metadata = http.get_server_metadata()
    assert metadata["name"] == "pipeline-serving-kit" and metadata["extensions"] == ["binary_tensor_data",
                                                                                     "classification"]
    assert rpc.get_server_metadata(as_json=True) == metadata


def expected_metadata(server: ImageService | ModelServer) -> dict:
    if isinstance(server, ImageService):
        return {"name": SERVICE, "versions": ["1"], "platform": "paddle_serving_pipeline",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "prob", "datatype": "FP32", "shape": [-1]},
                            {"name": "topk_label", "datatype": "BYTES", "shape": [-1, TOPK]},
                            {"name": "topk_prob", "datatype": "FP32", "shape": [-1, TOPK]}]}
    return {"name": MODEL, "versions": ["1"], "platform": "paddle",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
            "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1000]}]}


def test_model_metadata_and_readiness(server: ImageService | ModelServer) -> None:
    expected = expected_metadata(server)
    name = expected["name"]
    http = thttp.InferenceServerClient(http_url(server))
    rpc = tgrpc.InferenceServerClient(grpc_url(server))
    assert http.get_model_metadata(name) == expected == http.get_model_metadata(name, "1")
    from_grpc = rpc.get_model_metadata(name, as_json=True)  # int64 shapes come as strings in the proto's JSON
    for tensor in from_grpc["inputs"] + from_grpc["outputs"]:
        tensor["shape"] = [int(dim) for dim in tensor["shape"]]
    assert from_grpc == expected
    assert http.is_model_ready(name) and http.is_model_ready(name, "1") and rpc.is_model_ready(name)


def infer_pipeline(pipeline: ImageService, wire: str) -> tuple[dict[str, np.ndarray], str]:
    """The two photos through OIP on `wire`; the outputs as arrays (BYTES decoded to str) and the echoed id."""
    photos = photo_bytes()
    if wire == "requests":
        body = {"id": "r-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                         "data": [b64(data) for data in photos]}]}
        answer = requests.post(f"http://{http_url(pipeline)}/v2/models/{SERVICE}/infer", json=body, timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
        reply = answer.json()
        dtypes = {"FP32": np.float32, "BYTES": object}
        return {out["name"]: np.asarray(out["data"], dtypes[out["datatype"]]).reshape(out["shape"])
                for out in reply["outputs"]}, reply["id"]
    client = tgrpc if wire == "grpc" else thttp
    binary = wire != "http-json"
    # Binary data and gRPC carry the files' bytes; JSON carries text: the files' base64, as Paddle Serving's clients
    images = np.array(photos if binary else [b64(data).encode() for data in photos], dtype=object)
    tensor = client.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(images, **({} if wire == "grpc" else {"binary_data": binary}))
    kwargs = {} if wire == "grpc" else {"binary_data": binary}
    outputs = [client.InferRequestedOutput(name, **kwargs) for name in ("label", "prob", "topk_label", "topk_prob")]
    url = grpc_url(pipeline) if wire == "grpc" else http_url(pipeline)
    result = client.InferenceServerClient(url).infer(SERVICE, [tensor], outputs=outputs, request_id=f"{wire}-1")
    arrays = {name: result.as_numpy(name) for name in ("label", "prob", "topk_label", "topk_prob")}
    for name in ("label", "topk_label"):
        arrays[name] = np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else item)(arrays[name])
    return arrays, result.get_response(**({"as_json": True} if wire == "grpc" else {}))["id"]


@pytest.mark.parametrize("wire", ["http-binary", "http-json", "grpc", "requests"])
def test_pipeline_answers_equal_paddle_serving_s(pipeline: ImageService, wire: str) -> None:
    paddle = paddle_pipeline_answer(pipeline)
    arrays, request_id = infer_pipeline(pipeline, wire)
    assert request_id == ("r-1" if wire == "requests" else f"{wire}-1")
    assert arrays["label"].tolist() == paddle["label"] and arrays["label"].shape == (2,)
    assert arrays["prob"].dtype == np.float32 and arrays["prob"].shape == (2,)
    np.testing.assert_allclose(arrays["prob"], paddle["prob"], atol=1e-5)
    assert arrays["topk_label"].tolist() == paddle["topk_label"] and arrays["topk_label"].shape == (2, TOPK)
    np.testing.assert_allclose(arrays["topk_prob"], paddle["topk_prob"], atol=1e-5)


@pytest.mark.parametrize("wire", ["http-binary", "http-json", "grpc", "requests"])
def test_model_server_answers_equal_general_model_service_s(model_server: ModelServer, batch: np.ndarray,
                                                            squeezenet_root: Path, wire: str) -> None:
    paddle = paddle_model_answer(model_server, batch)
    if wire == "requests":
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(batch.shape), "data": batch.tolist()}],
                "outputs": [{"name": "prediction"}, {"name": "prediction", "parameters": {"classification": 3}}]}
        reply = requests.post(f"http://{http_url(model_server)}/v2/models/{MODEL}/versions/1/infer", json=body,
                              timeout=30).json()
        assert [out["datatype"] for out in reply["outputs"]] == ["FP32", "BYTES"]
        prediction = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
        top = np.asarray(reply["outputs"][1]["data"]).reshape(reply["outputs"][1]["shape"])
    else:
        client = tgrpc if wire == "grpc" else thttp
        kwargs = {} if wire == "grpc" else {"binary_data": wire == "http-binary"}
        tensor = client.InferInput("x", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, **kwargs)
        url = grpc_url(model_server) if wire == "grpc" else http_url(model_server)
        result = client.InferenceServerClient(url).infer(MODEL, [tensor])  # no outputs named: all, binary
        prediction = result.as_numpy("prediction")
        classified = client.InferenceServerClient(url).infer(
            MODEL, [tensor], outputs=[client.InferRequestedOutput("prediction", class_count=3, **kwargs)])
        top = classified.as_numpy("prediction")
    assert prediction.dtype == np.float32 and prediction.shape == (2, 1000)
    np.testing.assert_allclose(prediction, paddle, atol=1e-5)
    labels = load_card(squeezenet_root / "serving_server").display_labels
    assert top.shape == (2, 3)
    for row, entries in zip(paddle, top, strict=True):
        parsed = [(item.decode() if isinstance(item, bytes) else item).split(":", 2) for item in entries]
        order = np.argsort(-row, kind="stable")[:3]
        assert [int(index) for _, index, _ in parsed] == order.tolist()
        assert [label for _, _, label in parsed] == [labels[index] for index in order]
        np.testing.assert_allclose([float(value) for value, _, _ in parsed], row[order], atol=1e-5)


def good_http(server: ImageService | ModelServer) -> None:
    """One good request over each wire after an error: the server keeps serving."""
    if isinstance(server, ImageService):
        assert infer_pipeline(server, "http-binary")[0]["label"].shape == (2,)
        assert infer_pipeline(server, "grpc")[0]["label"].shape == (2,)
        return
    x = np.zeros((1, 3, 224, 224), np.float32)
    for client, url in ((thttp, http_url(server)), (tgrpc, grpc_url(server))):
        tensor = client.InferInput("x", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.InferenceServerClient(url).infer(MODEL, [tensor]).as_numpy("prediction").shape == (1, 1000)


def model_of(server: ImageService | ModelServer) -> str:
    return SERVICE if isinstance(server, ImageService) else MODEL


def good_input(server: ImageService | ModelServer) -> dict:
    if isinstance(server, ImageService):
        return {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(photo_bytes()[0])]}
    return {"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}


def binary_input(server: ImageService | ModelServer) -> tuple[dict, bytes]:
    """A good input in the binary extension's form: its JSON entry and its bytes."""
    if isinstance(server, ImageService):
        data = struct.pack("<I", len(photo_bytes()[0])) + photo_bytes()[0]
        entry = {"name": "image", "datatype": "BYTES", "shape": [1]}
    else:
        data = np.zeros((1, 3, 224, 224), np.float32).tobytes()
        entry = {"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224]}
    return {**entry, "parameters": {"binary_data_size": len(data)}}, data


def post_binary(server: ImageService | ModelServer, header: dict, data: bytes, header_length: int | None = None,
                path: str = "") -> requests.Response:
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return requests.post(f"http://{http_url(server)}{path or f'/v2/models/{model_of(server)}/infer'}",
                         data=text + data, headers={"Inference-Header-Content-Length": str(length)}, timeout=30)


def wrong_datatype(server: ImageService | ModelServer) -> requests.Response:
    entry = {**good_input(server), "datatype": "INT64"}
    entry["data"] = [1] * len(entry["data"]) if isinstance(server, ModelServer) else [1]
    return requests.post(f"http://{http_url(server)}/v2/models/{model_of(server)}/infer",
                         json={"inputs": [entry]}, timeout=30)


def wrong_shape(server: ImageService | ModelServer) -> requests.Response:
    entry = good_input(server)
    entry["shape"] = [1, 1] if isinstance(server, ImageService) else [1, 3, 112, 448]
    return requests.post(f"http://{http_url(server)}/v2/models/{model_of(server)}/infer",
                         json={"inputs": [entry]}, timeout=30)


def missing_input(server: ImageService | ModelServer) -> requests.Response:
    return requests.post(f"http://{http_url(server)}/v2/models/{model_of(server)}/infer",
                         json={"inputs": [{**good_input(server), "name": "other"}]}, timeout=30)


def unknown_model(server: ImageService | ModelServer) -> requests.Response:
    return requests.post(f"http://{http_url(server)}/v2/models/resnet/infer", json={"inputs": [good_input(server)]},
                         timeout=30)


def unknown_version(server: ImageService | ModelServer) -> requests.Response:
    return requests.post(f"http://{http_url(server)}/v2/models/{model_of(server)}/versions/2/infer",
                         json={"inputs": [good_input(server)]}, timeout=30)


def short_binary(server: ImageService | ModelServer) -> requests.Response:
    entry, data = binary_input(server)
    return post_binary(server, {"inputs": [entry]}, data[:-1])


def extra_binary(server: ImageService | ModelServer) -> requests.Response:
    entry, data = binary_input(server)
    return post_binary(server, {"inputs": [entry]}, data + b"\0\0\0\0")


def header_beyond_body(server: ImageService | ModelServer) -> requests.Response:
    entry, data = binary_input(server)
    return post_binary(server, {"inputs": [entry]}, data, header_length=10**6)


BAD_HTTP: list[tuple[Callable[[ImageService | ModelServer], requests.Response], int, str]] = [
    (wrong_datatype, 400, r"input '(x|image)' is INT64; the model's '(x|image)' is (FP32|BYTES)"),
    (wrong_shape, 400, r"input '(x|image)' has shape \[1, (1|3, 112, 448)\]; the model's '(x|image)' has shape"),
    (missing_input, 400, r"input 'other' is not an input; the model's inputs are (x|image)"),
    (unknown_model, 404, r"unknown model 'resnet'; this server serves '(SqueezeNet1_1|imagenet)'"),
    (unknown_version, 404, r"unknown version '2' of model '(SqueezeNet1_1|imagenet)'; it has version '1'"),
    (short_binary, 400, r"binary_data_size \d+ from byte 0 runs past the \d+ bytes after the JSON header"),
    (extra_binary, 400, r"4 bytes after the JSON header belong to no input"),
    (header_beyond_body, 400, r"Inference-Header-Content-Length '1000000' is beyond the body of \d+ bytes"),
]


@pytest.mark.parametrize(("send", "status", "message"), BAD_HTTP, ids=[case[0].__name__ for case in BAD_HTTP])
def test_bad_input_over_http_gets_the_protocol_s_error_then_good_requests_pass(
        server: ImageService | ModelServer, send: Callable, status: int, message: str) -> None:
    reply = send(server)
    assert reply.status_code == status and reply.headers["content-type"] == "application/json", reply.text
    assert set(reply.json()) == {"error"} and re.search(message, reply.json()["error"]), reply.json()
    good_http(server)


@pytest.mark.parametrize(("model", "version", "shape", "datatype", "code", "message"), [
    ("resnet", "", None, None, "StatusCode.NOT_FOUND", "unknown model 'resnet'"),
    (None, "7", None, None, "StatusCode.NOT_FOUND", "unknown version '7'"),
    (None, "", "wrong", None, "StatusCode.INVALID_ARGUMENT", "has shape"),
    (None, "", None, "wrong", "StatusCode.INVALID_ARGUMENT", "the model's '(x|image)' is (FP32|BYTES)"),
])
def test_bad_input_over_grpc_gets_the_protocol_s_code_then_good_requests_pass(
        server: ImageService | ModelServer, model: str | None, version: str, shape: str | None,
        datatype: str | None, code: str, message: str) -> None:
    client = tgrpc.InferenceServerClient(grpc_url(server))
    if isinstance(server, ImageService):
        data = np.array([photo_bytes()[0]], dtype=object)
        tensor = tgrpc.InferInput("image", [1, 1] if shape else [1], "BYTES")
        tensor.set_data_from_numpy(data.reshape(1, 1) if shape else data)
        if datatype:
            tensor = tgrpc.InferInput("image", [1], "UINT8")
            tensor.set_data_from_numpy(np.array([7], np.uint8))
    else:
        data = np.zeros((1, 3, 112, 448) if shape else (1, 3, 224, 224), np.float64 if datatype else np.float32)
        tensor = tgrpc.InferInput("x", list(data.shape), "FP64" if datatype else "FP32")
        tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model or model_of(server), [tensor], model_version=version)
    assert raised.value.status() == code and re.search(message, raised.value.message()), raised.value
    good_http(server)


def test_paths_methods_and_the_data_plane_s_metrics(server: ImageService | ModelServer) -> None:
    base = f"http://{http_url(server)}"
    missing = requests.get(f"{base}/v2/nothing", timeout=10)
    assert missing.status_code == 404 and "the protocol's paths are" in missing.json()["error"]
    wrong = requests.post(f"{base}/v2/health/live", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"
    assert requests.get(f"{base}/v2/models/{model_of(server)}/infer", timeout=10).status_code == 405
    assert requests.get(f"{base}/v2/models/resnet/ready", timeout=10).status_code == 404
    # what starlette's router misses (a newline in the path, a method it does not list) is the protocol's too
    newline = requests.get(f"{base}/v2/models/a%0Ab/ready", timeout=10)
    assert newline.status_code == 404 and newline.json() == {
        "error": f"unknown model 'a\\nb'; this server serves {model_of(server)!r}"}
    encoded = requests.get(f"{base}/v2/models/%2541", timeout=10)  # decoded once: the model named '%41'
    assert encoded.status_code == 404 and "unknown model '%41'" in encoded.json()["error"]
    trace = requests.request("TRACE", f"{base}/v2/health/live", timeout=10)
    assert trace.status_code == 405 and trace.headers["allow"] == "GET, HEAD" and "error" in trace.json()

    def counted(err_no: str) -> float:
        text = requests.get(f"{base}/metrics", timeout=10).text
        found = re.search(rf'serving_requests_total{{err_no="{err_no}",protocol="oip_http"}} (\S+)', text)
        return float(found[1]) if found else 0.0

    before = counted("0"), counted("5000")
    good_http(server)
    wrong_shape(server)
    assert (counted("0"), counted("5000")) == (before[0] + 1, before[1] + 1)  # one request path: the data plane's


@pytest.mark.parametrize(("raw", "message"), [
    ([b"\0" * 12], r"input 'x': 12 bytes of binary data, but FP32 \[1, 3, 224, 224\] takes 602112"),
    ([b"\0" * 602112] * 2, r"raw_input_contents has 2 entries for 1 inputs"),
])
def test_raw_contents_that_do_not_add_up_are_invalid_argument(model_server: ModelServer, raw: list[bytes],
                                                              message: str) -> None:
    request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=raw)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3, 224, 224])
    with grpc.insecure_channel(grpc_url(model_server)) as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and re.search(message, raised.value.details())
    good_http(model_server)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<i8", "<f2"])
def test_model_server_feed_tensors_equal_to_tensors_whichever_way_they_are_built(dtype: str) -> None:
    array = (np.arange(2 * 3 * 5, dtype=np.float64).reshape(2, 3, 5) * 1.5 - 7).astype(dtype)
    for value in (array, array[:, :, ::2]):  # a strided view too
        assert _feed_tensor("x", "image", value) == to_tensor("x", "image", value)
