"""OpenAPI 3.1 at GET /openapi.json on both HTTP ports: a valid document naming every route the servers answer, and
schemathesis against the live servers (a token configured): every operation answers as documented, never 5xx."""

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from pipelines.web_service import ImageService
from serving.model_server import ModelServer
from serving.protocols import openapi
from serving.protocols.oip import MODEL_PATH
from tests.conftest import running_model_server

TOKEN_ENV, TOKEN = "SERVING_TEST_OPENAPI_TOKEN", "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "schemathesis.toml"
SERVICE = "imagenet"


@pytest.fixture(scope="module")
def token() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, TOKEN)
        yield


@pytest.fixture(scope="module")
def pipeline(squeezenet_root: Path, token: None) -> Iterator[ImageService]:
    service = ImageService(name=SERVICE)
    service.prepare_pipeline_config(yml_dict={
        "http_port": 0, "worker_num": 2, "security": {"auth_token_env": TOKEN_ENV},
        "op": {"imagenet": {"concurrency": 1, "topk": 3, "local_service_conf": {
            "model_config": str(squeezenet_root / "serving_server")}}}})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def model_server(squeezenet_root: Path, token: None) -> Iterator[ModelServer]:
    with running_model_server("--model", squeezenet_root / "serving_server", "--port", "0", "--thread", "2",
                              "--auth_token_env", TOKEN_ENV) as server:
        yield server


def url(server: ImageService | ModelServer) -> str:
    return f"http://127.0.0.1:{server.http_port if isinstance(server, ImageService) else server.port}"


@pytest.fixture(scope="module", params=["pipeline", "model_server"])
def server(request: pytest.FixtureRequest) -> ImageService | ModelServer:
    return request.getfixturevalue(request.param)


def fetch(server: ImageService | ModelServer) -> dict:
    reply = requests.get(f"{url(server)}{openapi.PATH}", headers=AUTH, timeout=10)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    return reply.json()


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_documents_are_valid_openapi_3_1(server: ImageService | ModelServer) -> None:
    doc = fetch(server)
    assert doc["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []


def test_every_pipeline_route_is_documented(pipeline: ImageService) -> None:
    """The starlette routes: the fixed paths with their methods, and the prediction path of the service's name."""
    doc = fetch(pipeline)
    app = pipeline._servers[0].app.app
    fixed = {(method, route.path) for route in app.routes if isinstance(route, Route) and "{" not in route.path
             and route.path != "/v2" for method in route.methods - {"HEAD"}}  # /v2: OipRest answers 405 itself
    assert len(fixed) == 5 and fixed <= operations(doc)
    assert ("GET", "/v2") in operations(doc)
    assert ("POST", f"/{SERVICE}/prediction") in operations(doc)
    assert {path for _, path in operations(doc)} == {path for path in doc["paths"]}


def test_every_model_server_route_is_documented(model_server: ModelServer) -> None:
    doc = fetch(model_server)
    assert {("POST", path) for path in model_server.brpc.routes} | {("GET", path) for path in model_server.brpc.pages} \
        <= operations(doc)
    assert ("GET", "/metadata") in operations(doc) and "/metadata" in model_server.brpc.pages


def path_enum(doc: dict, name: str) -> list[str]:
    """The values the document allows for a path parameter (the running model's name or version)."""
    return next(parameter["schema"]["enum"] for item in doc["paths"].values() for operation in item.values()
                for parameter in operation["parameters"] if parameter["name"] == name)


def test_oip_paths_are_the_ones_the_protocol_front_end_matches(server: ImageService | ModelServer) -> None:
    """Each /v2 model path, filled in with the model's name and version, is one OipRest parses."""
    doc = fetch(server)
    [name], [version] = path_enum(doc, "model_name"), path_enum(doc, "model_version")
    assert (name, version) == (SERVICE if isinstance(server, ImageService) else "SqueezeNet1_1", "1")
    paths = [path.format(model_name=name, model_version=version) for path in doc["paths"]
             if path.startswith("/v2/models/")]
    assert len(paths) == 6 and all(MODEL_PATH.fullmatch(path) for path in paths)
    repository = [path for path in doc["paths"] if path.startswith("/v2/repository/")]
    assert sorted(repository) == ["/v2/repository/index", "/v2/repository/models/{repository_model}/load",
                                  "/v2/repository/models/{repository_model}/unload"]
    for path in repository:  # the repository API is off on these servers: documented 403, as the protocol's error
        reply = requests.post(f"{url(server)}{path.format(repository_model=name)}", headers=AUTH, timeout=30)
        assert reply.status_code == 403 and "repository API is off" in reply.json()["error"], reply.text
    for path in paths:  # the enums are the running model's: a documented request reaches it
        method = "post" if path.endswith("/infer") else "get"
        reply = requests.request(method, f"{url(server)}{path}", headers=AUTH, json={"inputs": []}, timeout=30)
        assert reply.status_code in (200, 400) and b"unknown model" not in reply.content, (path, reply.text)


def test_the_model_signature_shapes_the_schemas(server: ImageService | ModelServer) -> None:
    doc = fetch(server)
    schemas = doc["components"]["schemas"]
    metadata = requests.get(f"{url(server)}/v2/models/{path_enum(doc, 'model_name')[0]}", headers=AUTH,
                            timeout=10).json()
    inputs = schemas["InferRequest"]["properties"]["inputs"]["items"]["oneOf"]
    assert [(item["properties"]["name"]["const"], item["properties"]["datatype"]["const"]) for item in inputs] == \
        [(tensor["name"], tensor["datatype"]) for tensor in metadata["inputs"]]
    outputs = schemas["InferResponse"]["properties"]["outputs"]["items"]["properties"]["name"]["enum"]
    assert outputs == [tensor["name"] for tensor in metadata["outputs"]]
    assert schemas["ModelMetadata"]["properties"]["name"]["enum"] == [metadata["name"]]


def test_the_token_guards_the_document_and_is_declared(server: ImageService | ModelServer) -> None:
    reply = requests.get(f"{url(server)}{openapi.PATH}", timeout=10)
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["err_no"] == 3004
    doc = fetch(server)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            is_open = operation.get("security") == []
            assert is_open == (path in ("/health", "/ready", "/metrics") or path.startswith("/v2/health")), path
            assert ("401" in operation["responses"]) != is_open, (method, path)
    assert requests.get(f"{url(server)}{openapi.PATH}", headers={"X-API-Key": TOKEN}, timeout=10).ok


def test_without_a_token_nothing_asks_for_one(model_server: ModelServer) -> None:
    doc = openapi.document(openapi.MODEL_SERVER, model_server.oip, token=False)
    assert "securitySchemes" not in doc["components"] and "security" not in doc
    assert not [path for path, item in doc["paths"].items() for operation in item.values()
                if "401" in operation["responses"] or "security" in operation]


def test_a_port_status_joins_a_route_status_of_another_shape(model_server: ModelServer) -> None:
    """413 on /v2 is the protocol's {"error"} or the port's err_no body, whichever refused the request."""
    doc = fetch(model_server)
    schema = doc["paths"]["/v2"]["get"]["responses"]["413"]["content"]["application/json"]["schema"]
    assert schema == {"anyOf": [{"$ref": "#/components/schemas/OipError"},
                                {"$ref": "#/components/schemas/PaddleStatus"}]}
    with socket.create_connection(("127.0.0.1", model_server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (64 * 2**20 + 1))
        head, _, body = sock.makefile("rb").read().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and set(json.loads(body)) == {"err_no", "err_msg"}


def run_schemathesis(server: ImageService | ModelServer) -> subprocess.CompletedProcess:
    """The run docs/oip.md gives by hand: tests/schemathesis.toml's phases and checks, on the live server."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
               f"{url(server)}{openapi.PATH}", "--header", f"Authorization: Bearer {TOKEN}"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_schemathesis_finds_every_answer_as_documented(server: ImageService | ModelServer) -> None:
    """Examples, coverage (undeclared methods, missing token, boundary values), fuzzing and stateful phases: no 5xx
    and no err_no 10000, and every status, content type, header and body as the document says."""
    result = run_schemathesis(server)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    documented = operations(fetch(server)) - {("GET", openapi.PATH)}  # schemathesis leaves out the schema's own URL
    assert tested and int(tested[1]) == len(documented), result.stdout[-3000:]


def test_metadata_takes_the_token_on_both_servers(server: ImageService | ModelServer) -> None:
    """GET /metadata shows the model (on the model server: its engine and precision), so only to token holders."""
    assert requests.get(f"{url(server)}/metadata", timeout=10).status_code == 401
    reply = requests.get(f"{url(server)}/metadata", headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text
    expected = {"service", "ops"} if isinstance(server, ImageService) else {
        "model", "version", "feeds", "fetches", "engine", "precision"}
    assert expected <= set(reply.json()), reply.json()
