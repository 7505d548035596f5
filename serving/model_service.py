"""GeneralModelService: the tensor-level model API, protocol-neutral, plus its baidu_std/HTTP/gRPC bindings."""

import base64
import binascii
import json
import logging
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from serving import metrics
from serving.config import LimitsConfig
from serving.errors import InputError, error_of
from serving.images import check_image_count
from serving.logs import request_line
from serving.model_card import ModelCard
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto.general_model_config_pb2 import GeneralModelConfig
from serving.protocols.baidu_std import PayloadError
from serving.protocols.brpc_server import Route, RpcService
from serving.tensors import ElemType, to_array, to_tensor

log = logging.getLogger("serving.model_service")

SERVICE_NAME = "baidu.paddle_serving.predictor.general_model.GeneralModelService"
ENGINE_NAME = "general_infer_0"


class ModelService:
    """Feeds in (tensors, or image files as base64 STRING), predictor, outputs out; errors in err_no."""

    def __init__(self, predictor: Any, model_config: GeneralModelConfig, card: ModelCard | None,
                 limits: LimitsConfig) -> None:
        self.predictor = predictor
        self.model_config = model_config
        self.card = card
        self.limits = limits
        self.feeds = {key for var in model_config.feed_var for key in (var.name, var.alias_name)}
        self.names = {var.alias_name: var.name for var in model_config.fetch_var}

    def infer(self, request: gm.Request, protocol: str) -> gm.Response:
        """Never raises: failures come back as err_no / err_msg, as Paddle Serving's clients expect; one log line."""
        started = time.perf_counter()
        response = self._answer(request)
        elapsed = time.perf_counter() - started
        metrics.REQUESTS.labels(err_no=response.err_no, protocol=protocol).inc()
        metrics.LATENCY.labels(protocol=protocol).observe(elapsed)
        request_line(log, request.log_id, protocol, response.err_no, elapsed)
        return response

    def _answer(self, request: gm.Request) -> gm.Response:
        try:
            feed = {self._feed_key(tensor): self._feed_value(tensor) for tensor in request.tensor}
            if not feed:
                raise InputError("request has no tensor; send one per feed "
                                 f"({', '.join(var.alias_name for var in self.model_config.feed_var)})")
            outputs = self.predictor.predict(feed, list(request.fetch_var_names) or None)
        except Exception as exc:
            err_no, err_msg = error_of(exc)
            if err_no >= 10000:
                log.exception("log_id %s: unexpected error", request.log_id)
            return gm.Response(err_no=err_no, err_msg=err_msg, log_id=request.log_id)
        tensors = [to_tensor(self.names.get(alias, alias), alias, value) for alias, value in outputs.items()]
        return gm.Response(outputs=[gm.ModelOutput(tensor=tensors, engine_name=ENGINE_NAME)], log_id=request.log_id)

    def _feed_key(self, tensor: gm.Tensor) -> str:
        """The feed a tensor names (by alias or name); image files under the client config's alias feed the image."""
        if tensor.elem_type == ElemType.STRING and len(self.model_config.feed_var) == 1:
            return self.model_config.feed_var[0].alias_name
        named = [key for key in (tensor.alias_name, tensor.name) if key]
        known = next((key for key in named if key in self.feeds), None)
        if known is None:
            raise InputError(f"tensor {' / '.join(repr(key) for key in named) or '(unnamed)'} names no feed of this "
                             f"model; its feeds are {', '.join(var.alias_name for var in self.model_config.feed_var)}")
        return known

    def _feed_value(self, tensor: gm.Tensor) -> np.ndarray:
        """A numeric tensor as an array; STRING elements are image files, preprocessed per the model card."""
        if tensor.elem_type != ElemType.STRING:
            return to_array(tensor)
        if self.card is None:
            raise InputError("this model has no model card, so it cannot preprocess image files; send FP32 tensors")
        if not tensor.data:
            raise InputError(f"feed {tensor.alias_name or tensor.name!r} holds no image")
        check_image_count(len(tensor.data), self.limits.max_images_per_request)
        check_image_count(len(tensor.data), self.predictor.max_batch_size, "the model's max_batch_size")
        images = []
        for index, text in enumerate(tensor.data):
            try:
                images.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise InputError(f"feed {tensor.alias_name or tensor.name!r}[{index}] is not base64 text of an "
                                 "image file") from None
        return self.card.transforms.batch(images, self.limits.max_image_pixels, self.limits.max_request_pixels)


def rpc_service(service: ModelService) -> RpcService:
    """baidu_std binding: `inference` and `debug` (the same call, as far as clients can tell)."""

    def call(payload: bytes, attachment: bytes, log_id: int) -> tuple[bytes, bytes]:
        request = gm.Request()
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            raise PayloadError(f"payload is not a GeneralModelService Request: {exc}") from None
        if not request.log_id and log_id > 0:
            request.log_id = log_id  # brpc clients may set it only in RpcMeta
        return service.infer(request, "brpc").SerializeToString(), b""

    return RpcService(SERVICE_NAME, {"inference": call, "debug": call})


def http_routes(service: ModelService) -> dict[str, Route]:
    """HTTP binding: `POST /GeneralModelService/inference` (and `/debug`) with the proto's JSON."""

    def call(body: bytes) -> tuple[int, bytes]:
        try:
            request = parse_json_request(body)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            error = gm.Response(err_no=5000, err_msg=f"body is not a JSON GeneralModelService Request: {exc}")
            return 400, _json(error)
        return 200, _json(service.infer(request, "http"))

    return {f"/{name}/{method}": call for name in (SERVICE_NAME, SERVICE_NAME.rsplit(".", 1)[-1])
            for method in ("inference", "debug")}


# Repeated fields json_format would convert one element at a time (~4 ms for 1000 floats); JSON numbers either way.
_BULK_FIELDS = ("float_data", "float64_data", "int_data")


def parse_json_request(body: bytes) -> gm.Request:
    """json_format.Parse, with image strings and numeric lists set in bulk (Parse alone takes ~3 ms per image)."""
    data = json.loads(body)
    tensors = data.get("tensor") if isinstance(data, dict) else None
    if not isinstance(tensors, list) or not all(isinstance(tensor, dict) for tensor in tensors):
        return json_format.Parse(body, gm.Request())  # not the usual shape: json_format names what is wrong
    bulk = [{name: tensor.pop(name) for name in ("data", *_BULK_FIELDS) if name in tensor} for tensor in tensors]
    plain = all(isinstance(value, list) and not any(isinstance(item, bool) for item in value)
                for values in bulk for value in values.values())
    request = json_format.ParseDict(data, gm.Request())
    try:
        if not plain:
            raise TypeError("not plain lists")
        for tensor, values in zip(request.tensor, bulk, strict=True):
            for name, value in values.items():
                getattr(tensor, name).extend(value)
    except TypeError:  # e.g. "NaN" spelled as a string, which the JSON mapping allows: the exact path decides
        return json_format.Parse(body, gm.Request())
    return request


def _json(response: gm.Response) -> bytes:
    """The proto's JSON mapping, with the bulky numeric lists copied out by the C extension instead of json_format."""
    light = gm.Response()
    light.CopyFrom(response)
    bulk = []
    for output in light.outputs:
        for tensor in output.tensor:
            bulk.append({name: list(getattr(tensor, name)) for name in _BULK_FIELDS})
            for name in _BULK_FIELDS:
                tensor.ClearField(name)
    data = json_format.MessageToDict(light, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    tensors = [tensor for output in data.get("outputs", []) for tensor in output["tensor"]]
    for tensor, values in zip(tensors, bulk, strict=True):
        tensor.update(values)
    return json.dumps(data).encode()


class ModelServicer(gm_grpc.GeneralModelServiceServicer):
    """gRPC binding of the same service."""

    def __init__(self, service: ModelService) -> None:
        self.service = service

    def inference(self, request: gm.Request, context: grpc.ServicerContext) -> gm.Response:
        """Errors travel in err_no / err_msg; a call whose deadline passed while it was queued is not computed."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while it was queued")
        return self.service.infer(request, "grpc")

    debug = inference

