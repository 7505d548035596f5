"""GeneralModelService's wire bindings: baidu_std methods, HTTP routes with the proto's JSON, and gRPC.

Each is a thin adapter: decode, `DataPlane.infer`, encode; the error table picks wire statuses.
"""

import dataclasses
import json
import math

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from serving.context import RequestContext, client_timeout_ms
from serving.dataplane import DataPlane
from serving.errors import DeadlineExceededError, ErrorCode, PayloadError, wire_status_of
from serving.model_service import SERVICE_NAME
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.protocols.brpc_server import Route, RpcService
from serving.protocols.http_common import DEEP_JSON

ModelDataPlane = DataPlane[gm.Request, gm.Response]


def rpc_service(dataplane: ModelDataPlane) -> RpcService:
    """baidu_std binding: `inference` and `debug` (the same call, as far as clients can tell)."""

    def call(payload: bytes, attachment: bytes, ctx: RequestContext) -> tuple[bytes, bytes]:
        request = gm.Request()
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            raise PayloadError(f"payload is not a GeneralModelService Request: {exc}") from None
        if request.log_id:
            ctx = dataclasses.replace(ctx, log_id=request.log_id)
        else:
            request.log_id = ctx.log_id  # brpc clients may set it only in RpcMeta
        answer = dataplane.infer(request, ctx)
        if answer.error is not None and wire_status_of(answer.error).brpc_code is not None:
            raise answer.error  # overload, shutdown: the brpc error code, not a payload
        return answer.response.SerializeToString(), b""

    return RpcService(SERVICE_NAME, {"inference": call, "debug": call})


def http_routes(dataplane: ModelDataPlane) -> dict[str, Route]:
    """HTTP binding: `POST /GeneralModelService/inference` (and `/debug`) with the proto's JSON."""

    def call(body: bytes, ctx: RequestContext) -> tuple[int, bytes]:
        try:
            request = parse_json_request(body)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            error = gm.Response(err_no=ErrorCode.INPUT, err_msg=f"body is not a JSON GeneralModelService Request: "
                                                                f"{exc}")
            return 400, response_json(error)
        except RecursionError:
            error = gm.Response(err_no=ErrorCode.INPUT, err_msg=DEEP_JSON)
            return 400, response_json(error)
        answer = dataplane.infer(request, dataclasses.replace(ctx, log_id=request.log_id))
        return wire_status_of(answer.error).http_status, response_json(answer.response)

    return {f"/{name}/{method}": call for name in (SERVICE_NAME, SERVICE_NAME.rsplit(".", 1)[-1])
            for method in ("inference", "debug")}


class ModelServicer(gm_grpc.GeneralModelServiceServicer):
    """gRPC binding of the same service."""

    def __init__(self, dataplane: ModelDataPlane) -> None:
        self.dataplane = dataplane

    def inference(self, request: gm.Request, context: grpc.ServicerContext) -> gm.Response:
        """Errors travel in err_no / err_msg (overload: RESOURCE_EXHAUSTED); a call already late is not computed."""
        try:
            timeout_ms = client_timeout_ms(context)
        except DeadlineExceededError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while it was queued")
        ctx = RequestContext.arrived("grpc", context.peer(), request.log_id, timeout_ms)
        answer = self.dataplane.infer(request, ctx)
        code = wire_status_of(answer.error).grpc_code
        if code is not None:
            context.abort(code, answer.response.err_msg)
        return answer.response

    debug = inference


# Repeated fields json_format would convert one element at a time (~4 ms for 1000 floats); JSON numbers either way.
_BULK_FIELDS = ("float_data", "float64_data", "int_data")
# The proto JSON mapping's spelling of non-finite floats, which JSON numbers cannot carry.
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


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


def _json_values(values: list) -> list:
    """Numbers as JSON numbers; NaN and infinities as the strings json_format writes ("NaN", "Infinity")."""
    if not values or np.isfinite(np.asarray(values, dtype=np.float64)).all():
        return values
    return [value if math.isfinite(value) else ("NaN" if math.isnan(value) else _NON_FINITE[value])
            for value in values]


def response_json(response: gm.Response) -> bytes:
    """The proto's JSON mapping, with the bulky numeric lists copied out by the C extension instead of json_format."""
    light = gm.Response()
    light.CopyFrom(response)
    bulk = []
    for output in light.outputs:
        for tensor in output.tensor:
            bulk.append({name: _json_values(list(getattr(tensor, name))) for name in _BULK_FIELDS})
            for name in _BULK_FIELDS:
                tensor.ClearField(name)
    data = json_format.MessageToDict(light, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    tensors = [tensor for output in data.get("outputs", []) for tensor in output["tensor"]]
    for tensor, values in zip(tensors, bulk, strict=True):
        tensor.update(values)
    return json.dumps(data, allow_nan=False).encode()
