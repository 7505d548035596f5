"""Closed-loop load from this process: N workers each keep one request in flight on a reused connection."""

import asyncio
import base64
import http.client
import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from clients import PipelineClient
from clients.brpc_client import Client
from serving.model_card import load_card
from serving.model_config import read_config
from serving.proto import grpc_predict_v2_pb2 as oip_pb
from serving.protocols.oip import HEADER_LENGTH
from serving.tensors import ElemType

TIMEOUT_S = 60.0
ERROR_PAUSE_S = 0.01  # after a failed call, so a dead server yields a bounded error count, not a busy loop
PIPELINE_PATH = "/imagenet/prediction"
MODEL_SERVER_PATH = "/GeneralModelService/inference"
STRING = 20
OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class LoadResult:
    """Latencies (s) of the answered requests, error texts, and the wall time of the measured window."""

    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Caller(Protocol):
    """One worker's connection: a call raises on any failure, err_no != 0 included."""

    def __call__(self) -> None:
        """One request and its answer."""

    def close(self) -> None:
        """Release the connection."""


@dataclass(frozen=True)
class OipPayloads:
    """The Open Inference Protocol's three request bodies for the model server's tensor, each encoded once."""

    path: str
    json: bytes
    binary: bytes
    header_length: int
    grpc: bytes


@dataclass(frozen=True)
class Payloads:
    """Every request body built once, so the workers spend no time encoding (brpc's Client encodes per call)."""

    pipeline_json: bytes
    pipeline_feed: dict[str, str]
    model_json: bytes
    brpc_feed: dict[str, list[str] | np.ndarray]
    client_config: Path
    oip: OipPayloads | None = None  # with tensor input only: the model server's OIP inputs are its tensors


def oip_payloads(model: str, feed: str, fetch: str, batch: np.ndarray) -> OipPayloads:
    """One FP32 input `feed` and the output `fetch`: JSON data, binary data (output too), and a raw gRPC request."""
    shape = list(batch.shape)
    raw = np.ascontiguousarray(batch, dtype="<f4").tobytes()
    inputs = [{"name": feed, "datatype": "FP32", "shape": shape, "data": batch.ravel().tolist()}]
    json_body = json.dumps({"inputs": inputs, "outputs": [{"name": fetch}]}).encode()
    header = json.dumps({"inputs": [{"name": feed, "datatype": "FP32", "shape": shape,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": fetch, "parameters": {"binary_data": True}}]}).encode()
    message = oip_pb.ModelInferRequest(model_name=model, raw_input_contents=[raw])
    message.inputs.add(name=feed, datatype="FP32", shape=shape)
    message.outputs.add(name=fetch)
    return OipPayloads(f"/v2/models/{model}/infer", json_body, header + raw, len(header), message.SerializeToString())


def build_payloads(image: bytes, images: int, server_dir: Path, tensor: bool = False) -> Payloads:
    """`images` copies of the JPEG per request, as base64 text, in each protocol's request shape.

    `tensor`: the model server's rows send the JPEG preprocessed once here (FP32 [images, 3, S, S]) instead, so
    its protocols, the Open Inference Protocol's among them, carry the same tensor and the server only predicts.
    """
    text = base64.b64encode(image).decode("ascii")
    keys = ["image"] if images == 1 else [f"image_{i}" for i in range(images)]
    client_config = server_dir.parent / "serving_client" / "serving_client_conf.prototxt"
    config = read_config(client_config)
    feed, fetch = config.feed_var[0], config.fetch_var[0]
    tensor_json = {"name": feed.name, "alias_name": feed.alias_name, "elem_type": STRING, "shape": [images],
                   "data": [text] * images}
    brpc_feed: dict[str, list[str] | np.ndarray] = {feed.alias_name: [text] * images}
    oip = None
    if tensor:
        card = load_card(server_dir)
        batch = card.transforms.batch([image] * images)
        tensor_json = {"name": feed.name, "alias_name": feed.alias_name, "elem_type": int(ElemType.FP32),
                       "shape": list(batch.shape), "float_data": batch.ravel().tolist()}
        brpc_feed = {feed.alias_name: batch}
        oip = oip_payloads(card.model, feed.alias_name, fetch.alias_name, batch)
    return Payloads(
        pipeline_json=json.dumps({"key": keys, "value": [text] * images}).encode(),
        pipeline_feed=dict.fromkeys(keys, text),
        model_json=json.dumps({"tensor": [tensor_json], "fetch_var_names": [fetch.alias_name]}).encode(),
        brpc_feed=brpc_feed,
        client_config=client_config,
        oip=oip,
    )


class HttpCaller:
    """One keep-alive HTTP/1.1 connection; a non-200 status or err_no != 0 is an error."""

    def __init__(self, endpoint: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        self.path, self.body = path, body
        self.headers = headers or {"Content-Type": "application/json"}

    def __call__(self) -> None:
        """POST the prepared body and read the whole answer; a broken connection is closed and re-raised."""
        try:
            self.connection.request("POST", self.path, self.body, self.headers)
            response = self.connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the next request reconnects
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        self.check(response, data)

    def check(self, response: http.client.HTTPResponse, data: bytes) -> None:
        """Paddle Serving answers 200 and says a failure in err_no."""
        answer = json.loads(data)
        if answer.get("err_no", 0) != 0:
            raise RuntimeError(f"err_no {answer['err_no']}: {answer.get('err_msg', '')}")

    def close(self) -> None:
        """Close the socket."""
        self.connection.close()


class OipHttpCaller(HttpCaller):
    """OIP REST: a failure is the HTTP status; the JSON header (before any binary outputs) is parsed, as a client
    must to find its outputs."""

    def check(self, response: http.client.HTTPResponse, data: bytes) -> None:
        """The answer names its outputs."""
        length = response.getheader(HEADER_LENGTH)
        if not json.loads(data[:int(length)] if length else data).get("outputs"):
            raise RuntimeError(f"no outputs in {data[:200]!r}")


def oip_binary_caller(endpoint: str, oip: OipPayloads) -> OipHttpCaller:
    """The binary tensor extension: JSON header, then the raw FP32 input, its length in a header."""
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(oip.header_length)}
    return OipHttpCaller(endpoint, oip.path, oip.binary, headers)


class OipGrpcCaller:
    """One channel per worker calling ModelInfer with the request serialized once (raw_input_contents)."""

    def __init__(self, endpoint: str, request: bytes) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.infer = self.channel.unary_unary(OIP_INFER, response_deserializer=oip_pb.ModelInferResponse.FromString)
        self.request = request

    def __call__(self) -> None:
        """One ModelInfer call; a non-OK status raises grpc.RpcError."""
        if not self.infer(self.request, timeout=TIMEOUT_S).raw_output_contents:
            raise RuntimeError("ModelInfer answered no raw_output_contents")

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


class GrpcCaller:
    """One PipelineClient (its own channel) per worker."""

    def __init__(self, endpoint: str, feed: dict[str, str]) -> None:
        self.client = PipelineClient(timeout_s=TIMEOUT_S)
        self.client.connect([endpoint])
        self.feed = feed

    def __call__(self) -> None:
        """One PipelineService.inference call."""
        response = self.client.predict(feed_dict=self.feed, fetch=["label", "prob"])
        if response.err_no != 0:
            raise RuntimeError(f"err_no {response.err_no}: {response.err_msg}")

    def close(self) -> None:
        """Close the channel."""
        self.client.close()


def _describe(exc: BaseException) -> str:
    """An error's type and message, short enough to keep thousands of them."""
    return f"{type(exc).__name__}: {exc}"[:300]


def drive_threads(factory: Callable[[], Caller], concurrency: int, seconds: float,
                  requests: float = math.inf) -> LoadResult:
    """`concurrency` threads, a caller each: one untimed call, then together until `seconds` or `requests` calls."""
    callers = [factory() for _ in range(concurrency)]
    result = LoadResult()
    clock: dict[str, float] = {}
    tickets = itertools.count()  # next() is atomic under the GIL: one ticket per timed call
    barrier = threading.Barrier(concurrency, action=lambda: clock.update(start=time.perf_counter()))

    def loop(caller: Caller) -> None:
        latencies, errors = [], []
        try:
            caller()
        except Exception as exc:
            errors.append(_describe(exc))
        barrier.wait()
        while (start := time.perf_counter()) < clock["start"] + seconds and next(tickets) < requests:
            try:
                caller()
            except Exception as exc:
                errors.append(_describe(exc))
                time.sleep(ERROR_PAUSE_S)
                continue
            latencies.append(time.perf_counter() - start)
        result.latencies_s.extend(latencies)
        result.errors.extend(errors)

    threads = [threading.Thread(target=loop, args=(caller,), daemon=True) for caller in callers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for caller in callers:
            caller.close()
    result.wall_s = time.perf_counter() - clock.get("start", time.perf_counter())
    return result


async def _brpc_loop(client: Client, feed: dict, concurrency: int, seconds: float, requests: float) -> LoadResult:
    """`concurrency` coroutines on one event loop over the client's pipelined connections."""
    result = LoadResult()
    tickets = itertools.count()

    async def call() -> bool:
        try:
            await client.predict_async(feed=feed, fetch=["prediction"], batch=True)
            return True
        except Exception as exc:
            result.errors.append(_describe(exc))
            await asyncio.sleep(ERROR_PAUSE_S)
            return False

    await asyncio.gather(*(call() for _ in range(concurrency)))
    started = time.perf_counter()

    async def worker() -> None:
        while (start := time.perf_counter()) < started + seconds and next(tickets) < requests:
            if await call():
                result.latencies_s.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


def drive_brpc(endpoint: str, payloads: Payloads, concurrency: int, seconds: float,
               requests: float = math.inf) -> LoadResult:
    """brpc through Client.predict_async: one warm-up call per worker, then closed-loop load as drive_threads."""
    client = Client(timeout_ms=int(TIMEOUT_S * 1000))
    client.load_client_config(payloads.client_config)
    client.connect([endpoint])
    try:
        return asyncio.run(_brpc_loop(client, payloads.brpc_feed, concurrency, seconds, requests))
    finally:
        client.close()


def drive(target: str, protocol: str, endpoint: str, payloads: Payloads, concurrency: int, seconds: float,
          requests: float = math.inf) -> LoadResult:
    """Load one server over one protocol for `seconds` or `requests` timed calls, whichever ends first."""
    if protocol == "brpc":
        return drive_brpc(endpoint, payloads, concurrency, seconds, requests)
    if protocol == "grpc":
        return drive_threads(lambda: GrpcCaller(endpoint, payloads.pipeline_feed), concurrency, seconds, requests)
    if protocol.startswith("oip_"):
        return drive_threads(_oip_factory(protocol, endpoint, payloads), concurrency, seconds, requests)
    path, body = ((MODEL_SERVER_PATH, payloads.model_json) if target == "model_server"
                  else (PIPELINE_PATH, payloads.pipeline_json))
    return drive_threads(lambda: HttpCaller(endpoint, path, body), concurrency, seconds, requests)


def _oip_factory(protocol: str, endpoint: str, payloads: Payloads) -> Callable[[], Caller]:
    """The callers of oip_json, oip_binary and oip_grpc; they need the tensor payloads."""
    oip = payloads.oip
    if oip is None:
        raise ValueError(f"{protocol} sends the model's tensor: build the payloads with tensor=True")
    factories: dict[str, Callable[[], Caller]] = {
        "oip_json": lambda: OipHttpCaller(endpoint, oip.path, oip.json),
        "oip_binary": lambda: oip_binary_caller(endpoint, oip),
        "oip_grpc": lambda: OipGrpcCaller(endpoint, oip.grpc)}
    return factories[protocol]
