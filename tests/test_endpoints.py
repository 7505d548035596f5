"""Endpoints by name: the shared parser, config validation, and gRPC clients following DNS on loopback."""

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from clients import PipelineClient, brpc_client, grpc_client
from serving.config import LimitsConfig, parse_config
from serving.endpoints import FORMS, Endpoint, EndpointError, parse_endpoint, parse_endpoints
from serving.errors import ConfigError
from serving.model_config import STRING, VarSpec, build_config, write_config
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.protocols.grpc_channels import grpc_targets
from serving.protocols.grpc_server import grpc_options
from tests.conftest import free_port, has_ipv6_loopback
from tests.loopback_dns import LoopbackDNS


@pytest.mark.parametrize(("text", "parsed"), [
    ("model-server:9292", Endpoint("model-server", 9292)),
    ("model-server.serving.svc.cluster.local.:9292", Endpoint("model-server.serving.svc.cluster.local.", 9292)),
    ("localhost:1", Endpoint("localhost", 1)),
    ("10.0.0.5:65535", Endpoint("10.0.0.5", 65535, 4)),
    ("[::1]:9292", Endpoint("::1", 9292, 6)),
    ("[fd00::5]:9393", Endpoint("fd00::5", 9393, 6)),
])
def test_parser_takes_names_ipv4_and_bracketed_ipv6(text: str, parsed: Endpoint) -> None:
    assert parse_endpoint(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize(("text", "reason"), [
    ("localhost", "no ':port'"),
    ("::1:9292", "an IPv6 address needs brackets"),
    ("[::1]", "an IPv6 address in brackets must be followed by ':port'"),
    ("[model-server]:1", "'model-server' is not an IPv6 address"),
    ("model_server:9292", "'model_server' is neither a DNS name nor an IPv4 address"),
    ("10.0.0.300:9292", "'10.0.0.300' is neither a DNS name nor an IPv4 address"),
    ("-server:1", "'-server' is neither"),
    ("model-server:0", "port '0' is not a number in 1-65535"),
    ("model-server:http", "port 'http' is not a number"),
])
def test_parser_names_the_bad_value_and_the_forms(text: str, reason: str) -> None:
    with pytest.raises(EndpointError) as error:
        parse_endpoint(text)
    assert str(error.value).startswith(f"endpoint {text!r} is not {FORMS}: {reason}")
    with pytest.raises(ValueError, match="no endpoint given"):
        parse_endpoints([])


def remote_op(tmp_path: Path, endpoints: list[str]) -> dict:
    client_config = tmp_path / "serving_client_conf.prototxt"
    client_config.write_text("")
    return {"http_port": 0, "op": {"imagenet": {"server_endpoints": endpoints, "client_config": str(client_config)}}}


def test_config_takes_service_names_and_ipv6(tmp_path: Path) -> None:
    endpoints = ["model-server:9292", "10.0.0.5:9292", "[fd00::5]:9292"]
    assert parse_config(remote_op(tmp_path, endpoints), tmp_path).op["imagenet"].server_endpoints == endpoints


@pytest.mark.parametrize(("endpoint", "reason"), [("localhost", "no ':port'"),
                                                  ("::1:9292", "an IPv6 address needs brackets, as in [::1]:9292")])
def test_config_error_names_key_value_and_forms(tmp_path: Path, endpoint: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(remote_op(tmp_path, ["model-server:9292", endpoint]), tmp_path)
    assert str(error.value) == (f"config op.imagenet.server_endpoints[1] = {endpoint!r}: an endpoint is {FORMS} "
                                f"({reason})")


def test_grpc_targets_group_literals_and_give_each_name_a_channel() -> None:
    endpoints = parse_endpoints(["10.0.0.1:1", "a.test:2", "10.0.0.2:3", "[::1]:4", "b.test:5"])
    assert grpc_targets(endpoints) == [("ipv4:10.0.0.1:1,10.0.0.2:3", 2), ("ipv6:[::1]:4", 1),
                                       ("dns:///a.test:2", 1), ("dns:///b.test:5", 1)]
    assert grpc_targets(endpoints[1:2], "127.0.0.1:53") == [("dns://127.0.0.1:53/a.test:2", 1)]


class HostEcho(pb_grpc.PipelineServiceServicer):
    """A PipelineService that answers with the address it listens on."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.calls = 0

    def inference(self, request: pb.Request, context: grpc.ServicerContext) -> pb.Response:
        self.calls += 1
        return pb.Response(err_no=0, key=["host"], value=[self.host])


@pytest.fixture
def grpc_serve() -> Iterator[Callable[..., tuple[grpc.Server, int, HostEcho]]]:
    """HostEcho servers on loopback; with `max_age_ms`, the kit's gRPC server options close old connections."""
    servers: list[grpc.Server] = []

    def start(host: str, port: int = 0, max_age_ms: int = 0) -> tuple[grpc.Server, int, HostEcho]:
        options = grpc_options(LimitsConfig(max_connection_age_ms=max_age_ms)) if max_age_ms else []
        server = grpc.server(futures.ThreadPoolExecutor(2), options=options)
        echo = HostEcho(host)
        pb_grpc.add_PipelineServiceServicer_to_server(echo, server)
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        server.start()
        servers.append(server)
        return server, bound, echo

    yield start
    for server in servers:
        server.stop(None)


def hosts(client: PipelineClient, calls: int) -> list[str]:
    """Which server answered each call."""
    return [client.predict({"image": "x"}).value[0] for _ in range(calls)]


def test_pipeline_client_follows_a_name_through_dns(grpc_serve: Callable, loopback_dns: LoopbackDNS) -> None:
    first, port, first_echo = grpc_serve("127.0.0.1", max_age_ms=300)
    grpc_serve("127.0.0.2", port)
    loopback_dns.answers["pipeline.test"] = ["127.0.0.1"]
    with PipelineClient(timeout_s=5) as client:
        client.connect([f"pipeline.test:{port}"], dns_server=loopback_dns.address)
        assert hosts(client, 3) == ["127.0.0.1"] * 3
        # A new pod: gRPC resolves again when the first server's connection reaches its age, then spreads calls.
        loopback_dns.answers["pipeline.test"] = ["127.0.0.1", "127.0.0.2"]
        answered = until(lambda: hosts(client, 1), lambda seen: "127.0.0.2" in seen)
        assert set(answered) <= {"127.0.0.1", "127.0.0.2"}
        # The first pod leaves the Service, then stops: after the next resolution every call goes to the second.
        loopback_dns.answers["pipeline.test"] = ["127.0.0.2"]
        until(lambda: hosts(client, 1), lambda seen: seen[-6:] == ["127.0.0.2"] * 6)
        first.stop(None)
        served = first_echo.calls
        assert hosts(client, 4) == ["127.0.0.2"] * 4 and first_echo.calls == served
    assert loopback_dns.queries["pipeline.test"] >= 4


def until(call: Callable[[], list[str]], done: Callable[[list[str]], bool], seconds: float = 10.0) -> list[str]:
    """Repeat `call` until `done(every answer so far)`; fail the test after `seconds`."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while not done(seen):
        assert time.monotonic() < deadline, f"still not done after {seconds} s: {seen[-10:]}"
        seen += call()
        time.sleep(0.02)
    return seen


def test_pipeline_client_over_ipv6_and_ipv4_literals(grpc_serve: Callable) -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    _, port4, _ = grpc_serve("127.0.0.1")
    _, port6, _ = grpc_serve("::1")
    with PipelineClient(timeout_s=5) as client:
        client.connect([f"127.0.0.1:{port4}", f"[::1]:{port6}"])
        assert sorted(hosts(client, 4)) == ["127.0.0.1"] * 2 + ["::1"] * 2


def test_unavailable_channel_passes_the_call_to_the_next(grpc_serve: Callable) -> None:
    _, port, echo = grpc_serve("127.0.0.1")
    with PipelineClient(timeout_s=5) as client:
        client.connect([f"127.0.0.1:{free_port()}", f"localhost:{port}"])
        assert hosts(client, 4) == ["127.0.0.1"] * 4 and echo.calls == 4
    with PipelineClient(timeout_s=5) as client:
        client.connect([f"127.0.0.1:{free_port()}"])
        with pytest.raises(grpc.RpcError) as caught:
            client.predict({"image": "x"})
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("cli", [grpc_client.main, brpc_client.main])
def test_clis_refuse_a_bad_endpoint_by_name(cli: Callable[[list[str]], int], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "serving_client_conf.prototxt"
    write_config(build_config([VarSpec("x", "image", STRING, (1,))], []), config)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"jpeg")
    options = ["--config", str(config)] if cli is brpc_client.main else []
    assert cli([*options, "--endpoint", "model-server", str(image)]) == 2
    assert capsys.readouterr().err == f"error: endpoint 'model-server' is not {FORMS}: no ':port'\n"
