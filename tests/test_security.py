"""TLS and token auth on every server: pipeline HTTP and gRPC, model server baidu_std, HTTP and gRPC.

One server per kind, with TLS and a token both on, on loopback ports; real sockets, real certificates
(tests/data/tls), real predictions compared with the in-process model.
"""

import ast
import asyncio
import base64
import hmac
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import PipelineClient
from clients.brpc_client import Client
from export import inference_io
from pipelines.web_service import ImageService
from serving.config import parse_config
from serving.errors import ConfigError, ErrorCode
from serving.model_card import load_card
from serving.model_server import ModelServer, parse_args, security_from_args
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.protocols.baidu_std import BrpcCode
from serving.protocols.brpc_channel import BrpcError, Connection
from serving.security import TokenCheck
from serving.tensors import ElemType
from tests.conftest import photo_bytes, running_model_server

TLS = Path(__file__).parent / "data" / "tls"
CERT, KEY = TLS / "localhost.crt", TLS / "localhost.key"
ENV, TOKEN = "SERVING_TEST_TOKEN", "test-token-0123456789"
SECURITY = {"tls_cert_file": str(CERT), "tls_key_file": str(KEY), "auth_token_env": ENV}
UNAUTHENTICATED = int(ErrorCode.UNAUTHENTICATED)


@pytest.fixture(scope="module", autouse=True)
def token_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, TOKEN)
        yield


@pytest.fixture(scope="module")
def model_dir(squeezenet_root: Path) -> Path:
    return squeezenet_root / "serving_server"


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> np.ndarray:
    """The in-process probabilities of the daisy photo: what every protocol must answer."""
    card = load_card(model_dir)
    return inference_io.run(inference_io.create_predictor(model_dir), card.transforms(photo_bytes()[0])[None])[0][0]


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> Iterator[ImageService]:
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "rpc_port": 0, "security": SECURITY, "op": {
        "imagenet": {"local_service_conf": {"model_config": str(model_dir)}}}})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def model_server(model_dir: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", model_dir, "--port", "0", "--grpc_port", "0", "--thread", "2",
                              "--tls_cert", CERT, "--tls_key", KEY, "--auth_token_env", ENV) as server:
        yield server


def image_body() -> bytes:
    return json.dumps({"key": ["image"], "value": [base64.b64encode(photo_bytes()[0]).decode()]}).encode()


def https(port: int, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Message, dict]:
    """(status, headers (case-insensitive, as HTTP's), JSON body) of one HTTPS request trusting the test certificate."""
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body, headers=headers,
                                     method="POST" if body is not None else "GET")
    context = ssl.create_default_context(cafile=str(CERT))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def assert_prediction(keys: list[str], values: list[str], expected: np.ndarray) -> None:
    result = {key: ast.literal_eval(value) for key, value in zip(keys, values, strict=True)}
    np.testing.assert_allclose(result["prob"], [expected.max()], atol=1e-5)


def plaintext_exchange(port: int, data: bytes) -> bytes:
    """Send plaintext to a TLS port; return whatever comes back before the server closes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


# --- pipeline HTTP --------------------------------------------------------------------------------------------

def test_https_with_either_header_matches_in_process(pipeline: ImageService, expected: np.ndarray) -> None:
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-API-Key": TOKEN}):
        status, _, answer = https(pipeline.http_port, "/imagenet/prediction", image_body(), **headers)
        assert status == 200 and answer["err_no"] == 0, answer
        assert_prediction(answer["key"], answer["value"], expected)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": TOKEN[:-1]},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_https_without_the_token_is_401(pipeline: ImageService, headers: dict) -> None:
    status, answer_headers, answer = https(pipeline.http_port, "/imagenet/prediction", image_body(), **headers)
    assert status == 401 and answer_headers["WWW-Authenticate"] == "Bearer"
    assert answer["err_no"] == UNAUTHENTICATED and "Authorization: Bearer" in answer["err_msg"]


def test_probes_stay_open_metadata_needs_the_token(pipeline: ImageService) -> None:
    assert https(pipeline.http_port, "/health")[::2] == (200, {"status": "ok"})
    assert https(pipeline.http_port, "/ready")[::2] == (200, {"status": "ok"})
    assert https(pipeline.http_port, "/metadata")[0] == 401
    assert https(pipeline.http_port, "/metadata", Authorization=f"Bearer {TOKEN}")[0] == 200
    context = ssl.create_default_context(cafile=str(CERT))
    with urllib.request.urlopen(f"https://127.0.0.1:{pipeline.http_port}/metrics", context=context) as answer:
        assert answer.status == 200


def test_plaintext_and_stalled_clients_do_not_stop_https(pipeline: ImageService) -> None:
    request = b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert not plaintext_exchange(pipeline.http_port, request).startswith(b"HTTP/")
    with socket.create_connection(("127.0.0.1", pipeline.http_port)):  # connected, never handshakes
        status, _, answer = https(pipeline.http_port, "/imagenet/prediction", image_body(), **{"X-API-Key": TOKEN})
    assert status == 200 and answer["err_no"] == 0


# --- pipeline gRPC --------------------------------------------------------------------------------------------

def secure_channel(port: int) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=CERT.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def test_grpc_tls_with_token_matches_in_process(pipeline: ImageService, expected: np.ndarray) -> None:
    client = PipelineClient()
    client.connect([f"127.0.0.1:{pipeline.rpc_port}"], ca_file=str(CERT), token=TOKEN)
    try:
        answer = client.predict({"image": base64.b64encode(photo_bytes()[0]).decode()}, fetch=["label", "prob"])
    finally:
        client.close()
    assert answer.err_no == 0, answer.err_msg
    assert_prediction(list(answer.key), list(answer.value), expected)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("x-api-key", TOKEN + "x"),)])
def test_grpc_without_the_token_is_unauthenticated(pipeline: ImageService, metadata: tuple) -> None:
    with secure_channel(pipeline.rpc_port) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["a"], value=["b"]), metadata=metadata,
                                                       timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in error.value.details()


def test_grpc_health_open_x_api_key_accepted_plaintext_refused(pipeline: ImageService) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{pipeline.rpc_port}") as channel, pytest.raises(grpc.RpcError) as error:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure_channel(pipeline.rpc_port) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        answer = pb_grpc.PipelineServiceStub(channel).inference(
            pb.Request(key=["image"], value=["%%%"]), metadata=(("x-api-key", TOKEN),), timeout=10)
    assert answer.err_no == 5000  # authorised: the pipeline ran and rejected the input


# --- model server: baidu_std, HTTP, gRPC ----------------------------------------------------------------------

def brpc_predict(port: int, ca: Path | None, token: str | None) -> np.ndarray:
    with Client(timeout_ms=30000, pool_size=1) as client:
        client.connect([f"127.0.0.1:{port}"], ca_file=str(ca) if ca else None, token=token)
        return client.predict({"x": [photo_bytes()[0]]}, fetch=["prediction"], batch=True)["prediction"][0]


def test_baidu_std_over_tls_with_token_matches_in_process(model_server: ModelServer, expected: np.ndarray) -> None:
    np.testing.assert_allclose(brpc_predict(model_server.port, CERT, TOKEN), expected, atol=1e-5)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1]])
def test_baidu_std_without_the_token_is_erpcauth(model_server: ModelServer, token: str | None) -> None:
    with pytest.raises(BrpcError) as error:
        brpc_predict(model_server.port, CERT, token)
    assert error.value.code == BrpcCode.ERPCAUTH and "authentication_data" in error.value.text


def test_baidu_std_authenticates_per_connection_as_brpc_does(model_server: ModelServer) -> None:
    async def calls() -> list[int]:
        connection = await Connection.open("127.0.0.1", model_server.port, 30, ssl_context=ssl.create_default_context(
            cafile=str(CERT)))
        codes = []
        for token in (b"", TOKEN.encode(), b"", b"wrong"):  # denied until a frame carries the token, then open
            connection.token = token
            try:
                gm.Response.FromString(await connection.call("inference", image_request().SerializeToString(), 30))
                codes.append(0)
            except BrpcError as exc:
                codes.append(exc.code)
        await connection.close()
        return codes

    assert asyncio.run(calls()) == [BrpcCode.ERPCAUTH, 0, 0, 0]


def test_baidu_std_plaintext_fails_cleanly_then_tls_works(model_server: ModelServer, expected: np.ndarray) -> None:
    with pytest.raises(BrpcError):
        brpc_predict(model_server.port, None, TOKEN)
    np.testing.assert_allclose(brpc_predict(model_server.port, CERT, TOKEN), expected, atol=1e-5)


def image_request() -> gm.Request:
    """The daisy photo as a STRING tensor: the model server preprocesses it from the model card."""
    image = gm.Tensor(elem_type=ElemType.STRING, alias_name="x", shape=[1],
                      data=[base64.b64encode(photo_bytes()[0]).decode()])
    return gm.Request(tensor=[image], fetch_var_names=["prediction"])


def test_model_server_http_needs_the_token(model_server: ModelServer) -> None:
    body = json_format.MessageToJson(image_request()).encode()
    status, headers, answer = https(model_server.port, "/GeneralModelService/inference", body)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and answer["err_no"] == UNAUTHENTICATED
    status, _, answer = https(model_server.port, "/GeneralModelService/inference", body, **{"X-API-Key": TOKEN})
    assert status == 200 and answer["err_no"] == 0 and answer["outputs"]


@pytest.mark.parametrize(("kind", "model"), [("pipeline", "imagenet"), ("model_server", "SqueezeNet1_1")])
def test_open_inference_protocol_needs_the_token_but_for_its_health(request: pytest.FixtureRequest, kind: str,
                                                                     model: str) -> None:
    server = request.getfixturevalue(kind)
    port = server.http_port if kind == "pipeline" else server.port
    status, headers, answer = https(port, f"/v2/models/{model}")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "Authorization: Bearer" in answer["error"]
    status, _, answer = https(port, f"/v2/models/{model}", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and answer["name"] == model
    context = ssl.create_default_context(cafile=str(CERT))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/health/ready", context=context) as answer:
        assert answer.status == 200


def test_model_server_grpc_tls_and_token(model_server: ModelServer, expected: np.ndarray) -> None:
    request = image_request()
    with grpc.insecure_channel(f"127.0.0.1:{model_server.grpc_port}") as channel, pytest.raises(grpc.RpcError) as plain:
        gm_grpc.GeneralModelServiceStub(channel).inference(request, timeout=5)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure_channel(model_server.grpc_port) as channel:
        stub = gm_grpc.GeneralModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.inference(request, timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.inference(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.err_no == 0 and check.status == health_pb2.HealthCheckResponse.SERVING
    np.testing.assert_allclose(answer.outputs[0].tensor[0].float_data, expected, atol=1e-5)


# --- config and the comparison --------------------------------------------------------------------------------

@pytest.mark.parametrize(("security", "message"), [
    ({"tls_cert_file": "localhost.crt"}, "config security.tls_key_file = '': tls_cert_file and tls_key_file go"),
    ({"tls_key_file": "localhost.key"}, "config security.tls_cert_file = ''"),
    ({"tls_cert_file": "nope.crt", "tls_key_file": "localhost.key"}, "config security.tls_cert_file = 'nope.crt': no"),
    ({"tls_cert_file": "localhost.crt", "tls_key_file": "README.md"}, "config security.tls_cert_file = "),
    ({"auth_token_env": "SERVING_TEST_UNSET_VARIABLE"}, "config security.auth_token_env = 'SERVING_TEST_UNSET_VAR"),
])
def test_config_errors_name_the_key(security: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"http_port": 0, "security": security}, TLS)
    assert str(error.value).startswith(message)


def test_relative_paths_resolve_against_the_config_folder_and_flags_are_checked() -> None:
    config = parse_config({"http_port": 0, "security": {"tls_cert_file": "localhost.crt",
                                                        "tls_key_file": "./localhost.key"}}, TLS)
    assert (config.security.tls_cert_file, config.security.tls_key_file) == (str(CERT), str(KEY))
    with pytest.raises(ConfigError, match=r"--flags\.tls_key_file"):
        security_from_args(parse_args(["--model", "m", "--tls_cert", str(CERT)]))


def test_token_check_is_constant_time_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    check = TokenCheck(TOKEN)
    assert check.accepts(TOKEN) and check.accepts(TOKEN.encode()) and check.accepts(f"bearer {TOKEN}")
    assert compared[0] == (TOKEN.encode(), TOKEN.encode())
    for wrong in ("", None, TOKEN[:-1], TOKEN + "0", TOKEN[:-1] + "X", f"Basic {TOKEN}", f"Bearer{TOKEN}"):
        assert not check.accepts(wrong), wrong
    assert check.accepts_headers({"x-api-key": TOKEN}) and not check.accepts_headers({"x-api-key": "Bearer x"})


# --- remote ops to a secured model server ---------------------------------------------------------------------

@pytest.mark.parametrize(("protocol", "remote", "code"), [
    ("brpc", {"remote_ca_file": str(CERT), "remote_token_env": ENV}, 0),
    ("grpc", {"remote_ca_file": str(CERT), "remote_token_env": ENV}, 0),
    ("brpc", {"remote_ca_file": str(CERT)}, int(ErrorCode.RPC)),
    ("grpc", {"remote_ca_file": str(CERT)}, int(ErrorCode.RPC)),
])
def test_remote_ops_reach_a_secured_model_server(model_server: ModelServer, model_dir: Path, expected: np.ndarray,
                                                 protocol: str, remote: dict, code: int) -> None:
    port = model_server.port if protocol == "brpc" else model_server.grpc_port
    service = ImageService(name="imagenet")
    client_config = str(model_dir.parent / "serving_client" / "serving_client_conf.prototxt")
    op = {"server_endpoints": [f"127.0.0.1:{port}"], "client_config": client_config}
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "security": remote, "dag": {"client_type": protocol},
                                              "op": {"imagenet": op}})
    service.start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/imagenet/prediction",
                                         data=image_body(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
    finally:
        service.stop()
    assert answer["err_no"] == code, answer
    if code == 0:
        assert_prediction(answer["key"], answer["value"], expected)
    else:
        assert "token" in answer["err_msg"]
