"""OpenAPI 3.1 documents of both HTTP ports (GET /openapi.json): one table of operations, the server's own facts.

`ROUTES` lists every operation either port answers: method, path, body, and each status it answers with, as the
one error table (serving/errors.py) maps its errors. What a port answers on any path (a head over 64 KiB, a
request that arrives too slowly, a connection beyond the limit; on the model server's port also a body over the
limit) is added to every operation, and 401 when a token is configured; a request that does not parse as HTTP/1.1
(400) reaches no operation, so none lists it for that. The
document is built per request from the running server: the pipeline's service name, the Open Inference
Protocol's model (name, version, tensors; generic while it loads) and whether a token guards it.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from serving.context import TIMEOUT_HEADER
from serving.dataplane import PREDICTION_METHOD
from serving.errors import ErrorCode, ServingError
from serving.model_service import SERVICE_NAME as GENERAL_MODEL_SERVICE
from serving.protocols.http_common import MAX_HEAD_BYTES
from serving.protocols.oip import (
    DTYPES,
    EXTENSIONS,
    HEADER_LENGTH,
    REPOSITORY_EXTENSION,
    Model,
    OipService,
    Signature,
    TensorSpec,
)
from serving.tensors import ElemType

PATH = "/openapi.json"
PIPELINE, MODEL_SERVER = "pipeline", "model_server"
BOTH = frozenset({PIPELINE, MODEL_SERVER})
# A 1x1 PNG: an image file both servers decode and classify, so the document's examples run a whole inference.
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC")


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it takes and the statuses it answers with (besides the port's own and 401).

    `path` is an OpenAPI template: `{service}` is the pipeline's service name, written into the path;
    `{model_name}` and `{model_version}` are path parameters, the running model's. `responses` maps statuses to
    RESPONSES; `denied` is the RESPONSES entry for 401 when a token is configured, None where none is needed.
    """

    method: str
    path: str
    ports: frozenset[str]
    operation_id: str
    summary: str
    responses: Mapping[int, str]
    body: str | None = None  # a REQUEST_BODIES entry
    headers: tuple[str, ...] = ()  # HEADER_PARAMETERS entries
    denied: str | None = "paddle_error"


OIP_MODEL_PATHS = {"model": "/v2/models/{model_name}",
                   "model_version": "/v2/models/{model_name}/versions/{model_version}"}

# The one table: every HTTP operation of either port. A route added to a server gets its line here.
ROUTES: tuple[Operation, ...] = (
    Operation("GET", "/health", BOTH, "health", "Liveness: 200 as soon as the port accepts", {200: "status"},
              denied=None),
    Operation("GET", "/ready", frozenset({PIPELINE}), "ready",
              "Readiness: 503 while the models load and warm up, and once the server stops",
              {200: "status", 503: "status"}, denied=None),
    Operation("GET", "/ready", frozenset({MODEL_SERVER}), "ready",
              "Readiness: the model is loaded before the port opens", {200: "status"}, denied=None),
    Operation("GET", "/metadata", frozenset({PIPELINE}), "metadata",
              "Per op: feeds, fetches, model, classes, preprocessing, weights provenance ({} with 503 while loading)",
              {200: "metadata", 503: "metadata"}, denied="pipeline"),
    Operation("GET", "/metadata", frozenset({MODEL_SERVER}), "metadata",
              "The model: name, version, feeds, fetches, engine (and why, for auto), precision and, for INT8, its "
              "agreement with FP32 on the exporter's held-out images", {200: "model_server_metadata"}),
    Operation("GET", "/metrics", BOTH, "metrics", "Prometheus metrics", {200: "metrics"}, denied=None),
    Operation("GET", PATH, BOTH, "openapi", "This document, for this server and its model", {200: "openapi"}),
    Operation("POST", f"/{{service}}/{PREDICTION_METHOD}", frozenset({PIPELINE}), "prediction",
              "Paddle Serving's RESTful pipeline API: errors are err_no in a 200 answer, as its clients expect",
              {200: "pipeline", 400: "pipeline", 503: "pipeline"}, body="pipeline", headers=("timeout",),
              denied="pipeline"),
    *(Operation("POST", f"/{service}/{method}", frozenset({MODEL_SERVER}), f"{service}.{method}",
                f"GeneralModelService.{method} with the proto's JSON (brpc's HTTP side of the baidu_std port)",
                {200: "general_model", 400: "general_model", 503: "general_model"}, body="general_model",
                headers=("timeout",))
      for service in (GENERAL_MODEL_SERVICE.rsplit(".", 1)[-1], GENERAL_MODEL_SERVICE)
      for method in ("inference", "debug")),
    Operation("GET", "/v2", BOTH, "oip_server_metadata", "Open Inference Protocol: server name, version, extensions",
              {200: "server_metadata", 413: "oip_error"}, denied="oip_error"),
    Operation("GET", "/v2/health/live", BOTH, "oip_server_live", "Open Inference Protocol: liveness",
              {200: "live", 413: "oip_error"}, denied=None),
    Operation("GET", "/v2/health/ready", BOTH, "oip_server_ready",
              "Open Inference Protocol: readiness (400 while loading or stopping)",
              {200: "ready", 400: "not_ready", 413: "oip_error"}, denied=None),
    *(Operation("GET", path, BOTH, f"oip_{kind}_metadata", "Open Inference Protocol: the model's name, versions, "
                "platform and tensors", {200: "model_metadata", 404: "oip_error", 413: "oip_error",
                                         503: "oip_error"}, denied="oip_error")
      for kind, path in OIP_MODEL_PATHS.items()),
    *(Operation("GET", f"{path}/ready", BOTH, f"oip_{kind}_ready", "Open Inference Protocol: the model answers now",
                {200: "ready", 400: "not_ready", 404: "oip_error", 413: "oip_error"}, denied="oip_error")
      for kind, path in OIP_MODEL_PATHS.items()),
    *(Operation("POST", f"{path}/infer", BOTH, f"oip_{kind}_infer",
                "Open Inference Protocol: inference, JSON or with the binary tensor extension",
                {200: "infer", 400: "oip_error", 404: "oip_error", 413: "oip_error", 500: "oip_error",
                 503: "oip_error", 504: "oip_error"}, body="infer", headers=("timeout", "header_length"),
                denied="oip_error")
      for kind, path in OIP_MODEL_PATHS.items()),
    Operation("POST", "/v2/repository/index", BOTH, "oip_repository_index",
              "Triton's model repository extension: every model and version known, and its state (403 when off)",
              {200: "repository_index", 400: "oip_error", 403: "oip_error", 413: "oip_error"},
              body="repository_index", denied="oip_error"),
    *(Operation("POST", f"/v2/repository/models/{{repository_model}}/{action}", BOTH, f"oip_repository_{action}",
                f"Triton's model repository extension: {action} the model's versions (403 when off)",
                {200: "empty", 400: "oip_error", 403: "oip_error", 404: "oip_error", 413: "oip_error"},
                denied="oip_error")
      for action in ("load", "unload")),
)

# What each port answers on any path of a well-formed request before a route sees it
# (serving/protocols/http_server.py for the pipeline, http_stream.py and brpc_server.py for the model server).
PORT_RESPONSES: dict[str, dict[int, str]] = {
    PIPELINE: {408: "paddle_error", 431: "paddle_error", 503: "paddle_error"},
    MODEL_SERVER: {408: "paddle_error", 413: "paddle_error", 431: "paddle_error", 503: "paddle_error"},
}

STATUS_TEXT = {
    400: "Bad request: a body, header or tensor the server cannot use, or a version that failed to load",
    403: "The model repository API is off (start the model server with --repository_api)",
    401: "Missing or wrong token: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
    404: "Unknown model or version",
    408: "The request did not arrive within the client timeout (client_timeout_ms)",
    413: "The body is over the limit (max_body_bytes)",
    431: f"Request line and headers exceed {MAX_HEAD_BYTES} bytes",
    500: "An unexpected error; the message says what failed",
    503: "Loading, stopping, overloaded (max_inflight) or beyond max_connections: retry later or elsewhere",
    504: "The request's deadline passed (X-Request-Timeout-Ms, limits.request_timeout_ms)",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "") -> dict:
    return {**({"description": description} if description else {}), "content": {"application/json": {
        "schema": schema}}}


RESPONSES: dict[str, dict] = {
    "status": _json(_ref("Status"), "The server's state"),
    "metadata": _json(_ref("Metadata"), "The service's ops and models"),
    "model_server_metadata": _json(_ref("ModelServerMetadata"), "The model served"),
    "metrics": {"description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
    "openapi": _json({"type": "object", "required": ["openapi", "info", "paths"]}, "OpenAPI 3.1"),
    "pipeline": _json(_ref("PipelineResponse"), "Paddle Serving's Response: err_no 0 with the result, or the error"),
    "general_model": _json(_ref("GeneralModelResponse"), "GeneralModelService's Response: err_no 0 with the "
                           "outputs, or the error"),
    "paddle_error": _json(_ref("PaddleStatus")),
    "oip_error": _json(_ref("OipError")),
    "server_metadata": _json(_ref("ServerMetadata"), "Server metadata"),
    "model_metadata": _json(_ref("ModelMetadata"), "Model metadata"),
    "live": {"description": "Live (empty body)"},
    "empty": {"description": "Done (empty body)"},
    "repository_index": _json(_ref("RepositoryIndex"), "Every model and version, with its state"),
    "ready": {"description": "Ready (empty body)"},
    "not_ready": {"description": "Not ready (empty body)"},
    "infer": {"description": "The outputs: JSON, or with outputs asked for in binary the JSON header followed by "
                             f"them (application/octet-stream, its length in {HEADER_LENGTH})",
              "headers": {HEADER_LENGTH: {"description": "Bytes of the JSON header at the start of a binary body",
                                          "schema": {"type": "integer", "minimum": 0}}},
              "content": {"application/json": {"schema": _ref("InferResponse")},
                          "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}

OUTCOMES = {"not_ready"}  # answers with a 4xx status that are no error

HEADER_PARAMETERS: dict[str, dict] = {
    "timeout": {"name": TIMEOUT_HEADER, "in": "header", "required": False,
                "description": "The caller's own deadline in milliseconds; the server drops work once it passes",
                "schema": {"type": "number", "exclusiveMinimum": 0}},
    "header_length": {"name": HEADER_LENGTH, "in": "header", "required": False,
                      "description": "Binary tensor extension: the JSON header's length; binary inputs follow it",
                      "schema": {"type": "integer", "minimum": 0}},
}

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
INT64 = {"anyOf": [{"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                   {"type": "string", "pattern": r"^-?[0-9]{1,19}$"}]}  # the proto's JSON writes 64-bit as text
UINT64 = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
                    {"type": "string", "pattern": r"^[0-9]{1,20}$"}]}
# Proto JSON floats: numbers (float32's within its range), or the mapping's spelling of the non-finite ones.
NON_FINITE = {"enum": ["NaN", "Infinity", "-Infinity"]}
FLT_MAX = 3.4028234663852886e38
FLOAT = {"anyOf": [{"type": "number", "minimum": -FLT_MAX, "maximum": FLT_MAX}, NON_FINITE]}
DOUBLE = {"anyOf": [{"type": "number"}, NON_FINITE]}
BASE64 = {"type": "string", "contentEncoding": "base64",  # padded, the standard alphabet
          "pattern": r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}
PROTO_BYTES = {"type": "string", "contentEncoding": "base64",  # protobuf's JSON also takes the URL-safe alphabet
               "pattern": r"^([A-Za-z0-9+/_-]{4})*([A-Za-z0-9+/_-]{2}(==)?|[A-Za-z0-9+/_-]{3}=?)?$"}
JSON_ELEMENT = {"BOOL": {"type": "boolean"}, "BYTES": {"type": "string"}, "FP16": {"type": "number"},
                "FP32": {"type": "number"}, "FP64": {"type": "number"}}


def _general_model_tensor() -> dict:
    """GeneralModelService's Tensor in the proto's JSON (field names as in the .proto)."""
    repeated = {"int64_data": INT64, "float_data": FLOAT, "int_data": INT32, "float64_data": DOUBLE,
                "uint32_data": UINT32, "bool_data": {"type": "boolean"}, "complex64_data": FLOAT,
                "complex128_data": DOUBLE, "data": {"type": "string"}, "shape": INT32, "lod": INT32}
    return {"type": "object", "additionalProperties": False,
            "description": "Numbers in the field of their elem_type; image files as base64 text in `data` "
                           f"(elem_type {int(ElemType.STRING)}); raw little-endian bytes in tensor_content",
            "properties": {**{name: {"type": "array", "items": item} for name, item in repeated.items()},
                           "elem_type": {**INT32, "description": ", ".join(f"{int(kind)} {kind.name}"
                                                                           for kind in ElemType)},
                           "name": {"type": "string"}, "alias_name": {"type": "string"},
                           "tensor_content": PROTO_BYTES}}


def _input_schema(spec: TensorSpec) -> dict:
    """One input of the model as an InferRequest carries it: its name, datatype and shape (any size where -1)."""
    dims = [{"type": "integer", "minimum": 0} if dim < 0 else {"const": dim} for dim in spec.shape]
    element = JSON_ELEMENT.get(spec.datatype, {"type": "integer"})
    if spec.datatype == "BYTES":
        element = {**BASE64, "description": "base64 of the element's bytes (an image file)"}
    return {"type": "object", "required": ["name", "datatype", "shape"],
            "properties": {"name": {"const": spec.name}, "datatype": {"const": spec.datatype},
                           "shape": {"type": "array", "prefixItems": dims, "items": False,
                                     "minItems": len(dims)},
                           "data": {"type": "array", "items": element}, "parameters": _ref("TensorParameters")}}


def _oip_schemas(names: dict, versions: dict, signature: Signature | None) -> dict[str, dict]:
    """The protocol's messages, with the models' names and versions and the first model's tensors where known."""
    tensor = {"type": "object", "required": ["name", "datatype", "shape"],
              "properties": {"name": {"type": "string"}, "datatype": {"enum": list(DTYPES)},
                             "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                             "data": {"type": "array"}, "parameters": _ref("TensorParameters")}}
    inputs = {"type": "array", "items": tensor}
    outputs = {"type": "string"}
    if signature is not None:
        inputs = {"type": "array", "minItems": len(signature.inputs), "maxItems": len(signature.inputs),
                  "items": {"oneOf": [_input_schema(spec) for spec in signature.inputs]}}
        outputs = {"enum": [spec.name for spec in signature.outputs]}
    metadata = {"type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"}, "datatype": {"enum": list(DTYPES)},
                               "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}}
    return {
        "OipError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                           "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                          "extensions": {"type": "array", "items": {
                                              "enum": [*EXTENSIONS, REPOSITORY_EXTENSION]}}}},
        "RepositoryIndex": {"type": "array", "items": {
            "type": "object", "required": ["name", "version", "state"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"},
                           "reason": {"type": "string"}}}},
        "TensorMetadata": metadata,
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                          "properties": {"name": names,
                                         "versions": {"type": "array", "items": {"type": "string"}},
                                         "platform": {"type": "string"},
                                         "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                                         "outputs": {"type": "array", "items": _ref("TensorMetadata")}}},
        "TensorParameters": {"type": "object", "properties": {
            "binary_data_size": {"type": "integer", "minimum": 0,
                                 "description": "the tensor's bytes follow the JSON header (binary extension)"}}},
        "InferRequest": {
            "type": "object", "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "description": "echoed; a number is also the request's log id"},
                "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
                "inputs": inputs,
                "outputs": {"type": "array", "description": "the outputs to answer (none: all)", "items": {
                    "type": "object", "required": ["name"], "properties": {
                        "name": outputs,
                        "parameters": {"type": "object", "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {"type": "integer", "minimum": 1,
                                               "description": "the top K along the last axis as "
                                                              "'value:index[:label]'"}}}}}}}},
        "InferResponse": {
            "type": "object", "required": ["model_name", "model_version", "outputs"],
            "properties": {"model_name": names, "model_version": versions,
                           "id": {"type": "string"}, "parameters": {"type": "object"},
                           "outputs": {"type": "array", "items": {**tensor, "properties": {
                               **tensor["properties"], "name": outputs,
                               "data": {"type": "array", "items": {"type": ["number", "string", "boolean"]}}}}}}},
    }


def _schemas(names: dict, versions: dict, signature: Signature | None) -> dict[str, dict]:
    """Every schema the document refers to."""
    status = {"type": "object", "required": ["err_no", "err_msg"],
              "properties": {"err_no": {"type": "integer", "description": f"0, or Paddle Serving's error code "
                                        f"(e.g. {int(ErrorCode.INPUT)} bad input)"},
                             "err_msg": {"type": "string"}}}
    strings = {"type": "array", "items": {"type": "string"}}
    general_model_tensor = _general_model_tensor()
    return {
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "loading"]}}},
        "Metadata": {"type": "object", "properties": {"service": {"type": "string"}, "ops": {"type": "object"}}},
        "ModelServerMetadata": {
            "type": "object", "required": ["model", "version", "feeds", "fetches", "engine", "precision"],
            "properties": {"model": {"type": "string"}, "version": {"type": "string"}, "feeds": strings,
                           "fetches": strings, "engine": {"type": "string"}, "engine_choice": {"type": "string"},
                           "precision": {"type": "string"}, "int8_held_out": {"type": "object"}}},
        "PaddleStatus": status,
        "PipelineRequest": {
            "type": "object",
            "properties": {"key": {**strings, "description": "'image', or 'image_0' ... 'image_N' for a batch"},
                           "value": {"type": "array", "items": BASE64,
                                     "description": "base64 of each image file, by key"},
                           "logid": INT64,
                           "tensors": {"type": "array", "maxItems": 0, "description": "not taken over REST"}}},
        "PipelineResponse": {**status, "properties": {**status["properties"], "key": strings, "value": strings,
                                                      "tensors": {"type": "array"}}},
        "GeneralModelTensor": general_model_tensor,
        "GeneralModelRequest": {
            "type": "object", "additionalProperties": False,
            "properties": {"tensor": {"type": "array", "items": _ref("GeneralModelTensor")},
                           "fetch_var_names": strings, "profile_server": {"type": "boolean"}, "log_id": UINT64}},
        "GeneralModelResponse": {**status, "properties": {
            **status["properties"], "profile_time": {"type": "array", "items": INT64},
            "profile_server": {"type": "boolean"}, "log_id": UINT64,
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "tensor": {"type": "array", "items": _ref("GeneralModelTensor")},
                "engine_name": {"type": "string"}}}}}},
        **_oip_schemas(names, versions, signature),
    }


def _request_bodies(signature: Signature | None) -> dict[str, dict]:
    """The bodies operations take, with examples that run a whole inference where an image file is the input."""
    image_input = next((spec for spec in signature.inputs if spec.datatype == "BYTES"), None) if signature else None
    infer = {"schema": _ref("InferRequest")}
    if image_input is not None:
        infer["example"] = {"id": "1", "inputs": [{"name": image_input.name, "datatype": "BYTES", "shape": [1],
                                                   "data": [EXAMPLE_IMAGE]}]}
    image_tensor = {"name": "image", "alias_name": "image", "elem_type": int(ElemType.STRING), "shape": [1],
                    "data": [EXAMPLE_IMAGE]}
    return {
        "pipeline": {"required": True, "content": {"application/json": {
            "schema": _ref("PipelineRequest"), "example": {"key": ["image"], "value": [EXAMPLE_IMAGE], "logid": 1}}}},
        "general_model": {"required": True, "content": {"application/json": {
            "schema": _ref("GeneralModelRequest"), "example": {"tensor": [image_tensor], "log_id": 1}}}},
        "repository_index": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"ready": {"type": "boolean"}}}, "example": {"ready": True}}}},
        "infer": {"required": True, "content": {
            "application/json": infer,
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": f"the JSON InferRequest ({HEADER_LENGTH} bytes), then the inputs whose "
                                          "parameters.binary_data_size say so, in order: little-endian, BYTES "
                                          "elements each a 4-byte length and the bytes"}}}},
    }


def _signature(model: Model) -> Signature | None:
    """The model's tensors; None while it loads, or for a pipeline that declares none (its calls answer 404)."""
    try:
        return model.signature
    except ServingError:
        return None


def _merged(response: dict, other: dict) -> dict:
    """One status two ways (a route's error or the port's): each media type's schema is either."""
    content = dict(response.get("content", {}))
    for media, entry in other.get("content", {}).items():
        mine = content.get(media)
        content[media] = entry if mine is None or mine == entry else {"schema": {"anyOf": [mine["schema"],
                                                                                           entry["schema"]]}}
    described = response["description"]
    if other["description"] != described:
        described += f"; or: {other['description']}"
    return {**response, "description": described, "content": content}


def _response(status: int, kind: str) -> dict:
    """RESPONSES[kind], described by what `status` means (the protocol's 'not ready' is no error)."""
    entry = RESPONSES[kind]
    error = status >= 300 and kind not in OUTCOMES
    return {**entry, "description": STATUS_TEXT[status] if error else entry["description"]}


def _operation(operation: Operation, path: str, port: str, token: bool, path_parameters: Mapping[str, dict]) -> dict:
    """The operation object: parameters, body, every status, and whether the token is needed."""
    statuses = dict(operation.responses)
    if token and operation.denied is not None:
        statuses[401] = operation.denied
    responses = {status: _response(status, kind) for status, kind in statuses.items()}
    for status, kind in PORT_RESPONSES[port].items():
        port_response = _response(status, kind)
        responses[status] = _merged(responses[status], port_response) if status in responses else port_response
    if 401 in responses:
        responses[401]["headers"] = {"WWW-Authenticate": {"schema": {"const": "Bearer"}}}
    names = re.findall(r"{(\w+)}", path)
    entry = {"operationId": operation.operation_id, "summary": operation.summary,
             "tags": [_tag(operation.path)],
             "parameters": [{"name": name, "in": "path", "required": True, **path_parameters[name]} for name in names]
             + [HEADER_PARAMETERS[name] for name in operation.headers],
             "responses": {str(status): responses[status] for status in sorted(responses)}}
    if operation.body is not None:
        entry["requestBody"] = {"$ref": f"#/components/requestBodies/{operation.body}"}
    if token and operation.denied is None:
        entry["security"] = []  # probes stay open
    return entry


def _tag(path: str) -> str:
    """Groups for a reader: the two protocols and the operations around them."""
    if path.startswith("/v2"):
        return "Open Inference Protocol"
    return "Paddle Serving" if path.count("/") > 1 else "Operations"


def document(port: str, oip: OipService, token: bool, service: str = "") -> dict:
    """The OpenAPI 3.1 document of `port` (PIPELINE, whose service is `service`, or MODEL_SERVER) as it runs now."""
    models = oip.endpoint.models
    served = models.names
    model = models.find(served[0], "") if served else None
    signature = _signature(model) if model is not None else None
    versions = sorted({version for name in served for version in models.versions(name)})
    names = {"enum": served} if served else {"type": "string"}
    numbers = {"enum": versions} if versions else {"type": "string"}
    path_parameters = {"model_name": {"schema": names}, "model_version": {"schema": numbers},
                       "repository_model": {"schema": {"type": "string", "minLength": 1}}}
    paths: dict[str, dict] = {}
    for operation in routes(port):
        path = operation.path.replace("{service}", service)
        paths.setdefault(path, {})[operation.method.lower()] = _operation(operation, path, port, token,
                                                                       path_parameters)
    what = f"pipeline service {service!r}" if port == PIPELINE else f"model server of {', '.join(served)}"
    doc = {"openapi": "3.1.0",
           "info": {"title": f"pipeline-serving-kit: {what}", "version": oip.version,
                    "description": "Paddle Serving's HTTP API and the Open Inference Protocol (KServe v2) on one "
                                   "port. Errors take their status from one table: see docs/oip.md."},
           "paths": paths,
           "components": {"schemas": _schemas(names, numbers, signature),
                          "requestBodies": _request_bodies(signature)}}
    if token:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


def routes(port: str) -> list[Operation]:
    """The operations `port` answers."""
    return [operation for operation in ROUTES if port in operation.ports]

