"""Pipeline Request/Response <-> wire: JSON (RESTful) and protobuf (gRPC), field for field as Paddle Serving."""

import numpy as np

from serving.dataplane import PipelineRequest, PipelineResponse
from serving.errors import InputError
from serving.proto import pipeline_service_pb2 as pb
from serving.tensors import REPEATED

# The pipeline Tensor carries the repeated-field types with GeneralModelService's codes and field names.
_TENSOR_FIELDS = REPEATED
PIPELINE_STRING = 12  # the pipeline proto's own code for str_data


def _strings(body: dict, key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(f"field {key!r} must be a list of strings")
    return value


def _logid(value: object) -> int:
    """int64 in JSON: a number or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"field 'logid' must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise InputError(f"field 'logid' must be an integer, got {value!r}") from None


def request_from_json(body: object, name: str, method: str, clientip: str) -> PipelineRequest:
    """The RESTful body; name and method come from the URL path."""
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object like {\"key\": [...], \"value\": [...]}")
    if body.get("tensors"):
        raise InputError("tensors are not supported over RESTful JSON; send key/value pairs")
    return PipelineRequest(keys=_strings(body, "key"), values=_strings(body, "value"), name=name, method=method,
                           logid=_logid(body.get("logid", 0)), clientip=clientip)


def response_to_json(response: PipelineResponse) -> dict:
    """Every field, defaults included, as Paddle Serving's gateway emits them."""
    return {"err_no": response.err_no, "err_msg": response.err_msg, "key": response.keys,
            "value": response.values, "tensors": []}


def _tensor_array(tensor: pb.Tensor) -> np.ndarray:
    if tensor.elem_type == PIPELINE_STRING:
        return np.array(list(tensor.str_data), dtype=object).reshape(tuple(tensor.shape) or (-1,))
    if tensor.elem_type not in _TENSOR_FIELDS:
        raise InputError(f"tensor {tensor.name!r}: elem_type {tensor.elem_type} is not supported; "
                         f"use one of {sorted(_TENSOR_FIELDS)} or {PIPELINE_STRING} (STRING)")
    dtype, field = _TENSOR_FIELDS[tensor.elem_type]
    data = np.asarray(getattr(tensor, field), dtype=dtype)
    try:
        return data.reshape(tuple(tensor.shape)) if tensor.shape else data
    except ValueError:
        raise InputError(f"tensor {tensor.name!r}: {data.size} values do not fill shape {list(tensor.shape)}") from None


def request_from_proto(message: pb.Request, clientip: str) -> PipelineRequest:
    """The gRPC Request; tensors are decoded to numpy arrays by name."""
    tensors = {tensor.name: _tensor_array(tensor) for tensor in message.tensors}
    return PipelineRequest(keys=list(message.key), values=list(message.value), tensors=tensors, name=message.name,
                           method=message.method, logid=message.logid, clientip=message.clientip or clientip)


def response_to_proto(response: PipelineResponse) -> pb.Response:
    """The gRPC Response."""
    return pb.Response(err_no=response.err_no, err_msg=response.err_msg, key=response.keys, value=response.values)
