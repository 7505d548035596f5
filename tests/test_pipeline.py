"""The Op API and DAG, served for real over HTTP and gRPC, with model-free ops."""

import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from serving.pipeline import Op, WebService
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc


class Upper(Op):
    def preprocess(self, input_dicts, data_id=0, log_id=0):
        ((_, data),) = input_dicts.items()
        return {key: str(value).upper() for key, value in data.items()}, False, None, ""


class Suffix(Op):
    def __init__(self, suffix: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.suffix = suffix

    def preprocess(self, input_dicts, data_id=0, log_id=0):
        ((_, data),) = input_dicts.items()
        return {key: value + self.suffix for key, value in data.items()}, False, None, ""


class Join(Op):
    def preprocess(self, input_dicts, data_id=0, log_id=0):
        return {"joined": "|".join(sorted(v for d in input_dicts.values() for v in d.values()))}, False, None, ""


class Misbehaving(Op):
    """Behaviour chosen by the request's `mode` value."""

    def init_op(self) -> None:
        self.failed_once: set[int] = set()

    def preprocess(self, input_dicts, data_id=0, log_id=0):
        ((_, data),) = input_dicts.items()
        mode = data.get("mode", "")
        if mode == "product":
            return {}, False, 61, "the product said no"
        if mode == "slow":
            time.sleep(1.0)
        if mode == "flaky" and data_id not in self.failed_once:
            self.failed_once.add(data_id)
            raise RuntimeError("transient")
        if mode == "crash":
            raise ZeroDivisionError("boom")
        if mode == "notstr":
            return {"n": 1}, True, None, ""
        return {"mode": mode, "logid": str(log_id)}, True, None, ""


class Service(WebService):
    def __init__(self, build) -> None:
        super().__init__(name="demo")
        self.build = build

    def get_pipeline_response(self, read_op):
        return self.build(read_op)


def serve(build, op_config: dict | None = None) -> WebService:
    service = Service(build)
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "rpc_port": 0, "op": op_config or {}})
    return service.start()


def post(service: WebService, body: object, path: str = "/demo/prediction") -> dict:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}{path}", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture
def chain() -> Iterator[WebService]:
    service = serve(lambda read: Suffix("!", name="suffix", input_ops=[Upper(name="upper", input_ops=[read])]))
    yield service
    service.stop()


def test_chain_over_http_and_grpc(chain: WebService) -> None:
    answer = post(chain, {"key": ["a", "b"], "value": ["x", "y"], "logid": "77"})
    assert answer == {"err_no": 0, "err_msg": "", "key": ["a", "b"], "value": ["X!", "Y!"], "tensors": []}
    with grpc.insecure_channel(f"127.0.0.1:{chain.rpc_port}") as channel:
        reply = pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["a"], value=["z"], logid=5))
    assert (reply.err_no, list(reply.key), list(reply.value)) == (0, ["a"], ["Z!"])


def test_routing_errors_name_the_right_path(chain: WebService) -> None:
    answer = post(chain, {"key": ["a"], "value": ["x"]}, path="/imagenet/prediction")
    assert answer["err_no"] == 3002 and "POST /demo/prediction" in answer["err_msg"]
    assert post(chain, {"key": ["a"], "value": ["x"]}, path="/demo/predict")["err_no"] == 3002
    with grpc.insecure_channel(f"127.0.0.1:{chain.rpc_port}") as channel:
        reply = pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["a"], value=["z"], name="other"))
    assert reply.err_no == 3002
    assert post(chain, {"key": ["a"], "value": ["x"]})["err_no"] == 0


def test_bad_bodies_then_a_good_one(chain: WebService) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{chain.http_port}/demo/prediction", data=b"{not json",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 400 and json.loads(error.value.read())["err_no"] == 5000
    assert post(chain, {"key": ["a", "b"], "value": ["x"]})["err_msg"].startswith("request has 2 keys but 1 values")
    assert post(chain, {"key": "a", "value": ["x"]})["err_msg"] == "field 'key' must be a list of strings"
    assert post(chain, {"key": ["a"], "value": ["x"], "logid": "ten"})["err_no"] == 5000
    assert post(chain, [1, 2])["err_no"] == 5000
    assert post(chain, {"key": ["a"], "value": ["x"]})["value"] == ["X!"]


def test_several_input_ops_join() -> None:
    def build(read):
        return Join(name="join", input_ops=[Suffix("1", name="left", input_ops=[read]),
                                            Suffix("2", name="right", input_ops=[read])])
    service = serve(build)
    try:
        assert post(service, {"key": ["k"], "value": ["v"]})["value"] == ["v1|v2"]
    finally:
        service.stop()


@pytest.fixture
def misbehaving() -> Iterator[WebService]:
    service = serve(lambda read: Misbehaving(name="m", input_ops=[read]),
                    {"m": {"timeout": 300, "retry": 2, "concurrency": 2}})
    yield service
    service.stop()


def test_product_error_timeout_retry_and_types(misbehaving: WebService) -> None:
    product = post(misbehaving, {"key": ["mode"], "value": ["product"]})
    assert (product["err_no"], product["err_msg"]) == (61, "the product said no")
    answer = post(misbehaving, {"key": ["mode"], "value": ["slow"]})
    assert answer["err_no"] == 6000 and "op m timed out after 300 ms" in answer["err_msg"]
    assert post(misbehaving, {"key": ["mode"], "value": ["flaky"]})["err_no"] == 0
    crash = post(misbehaving, {"key": ["mode"], "value": ["crash"]})
    assert crash["err_no"] == 10000 and "boom" in crash["err_msg"]
    notstr = post(misbehaving, {"key": ["mode"], "value": ["notstr"]})
    assert notstr["err_no"] == 7000 and "must be str" in notstr["err_msg"]
    ok = post(misbehaving, {"key": ["mode"], "value": ["fine"], "logid": 123456789012})
    assert ok["err_no"] == 0 and dict(zip(ok["key"], ok["value"], strict=True))["logid"] == "123456789012"


def test_concurrent_requests_are_answered_independently(chain: WebService) -> None:
    results: dict[int, list[str]] = {}

    def worker(index: int) -> None:
        results[index] = post(chain, {"key": ["i"], "value": [f"v{index}"]})["value"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: [f"V{i}!"] for i in range(8)}
