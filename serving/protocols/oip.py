"""The Open Inference Protocol (KServe v2, Triton's): typed requests and responses, their two wires, one data plane.

`InferRequest` and `InferResponse` are what REST (JSON, with Triton's binary tensor extension) and gRPC
(`inference.GRPCInferenceService`, raw contents) decode to and encode from. `OipEndpoint` runs them on the
server's own data plane through the endpoint of the model asked for, which a `Model` binding
(serving/protocols/oip_models.py) converts to and from, so admission, deadlines, metrics and logs are those of the
Paddle Serving protocols. The server's `Models` find a model by name and version and hold it for the request (a
model repository reloads versions beside running requests). `OipRest` (the /v2 paths of either HTTP server) and
`OipServicer` (gRPC) are the thin front ends, with Triton's model repository extension where a server has a
repository and enables it; every error takes its HTTP status and gRPC code from the one error table.
"""

import dataclasses
import json
import math
import re
import struct
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import unquote

import grpc
import numpy as np

from serving.context import TIMEOUT_HEADER, RequestContext, client_timeout_ms, timeout_header_ms
from serving.dataplane import Answer, DataPlane, Endpoint
from serving.errors import (
    AuthError,
    InitError,
    InputError,
    RepositoryOffError,
    ServiceNotFoundError,
    ServingError,
    TypeCheckError,
    error_of,
    wire_status_of,
)
from serving.proto import grpc_predict_v2_pb2 as pb
from serving.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.protocols.http_common import DEEP_JSON
from serving.security import HTTP_HINT

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # from the .proto
SERVER_NAME = "pipeline-serving-kit"
EXTENSIONS = ("binary_tensor_data", "classification")
REPOSITORY_EXTENSION = "model_repository"  # listed where the repository API is enabled
HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's datatypes; binary data is little-endian, BYTES elements each a 4-byte length and the bytes.
DTYPES = {name: np.dtype(code) for name, code in (
    ("BOOL", "?"), ("UINT8", "<u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"), ("INT8", "<i1"),
    ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    ("BYTES", "O"))}
# gRPC's typed contents field per datatype (FP16 travels only raw).
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
            "BYTES": "bytes_contents"}
SHARED_MEMORY = "shared_memory_region"  # Triton's shared-memory extension, which this server does not offer


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as its metadata shows it; -1 in `shape` is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def misfit(self, datatype: str, shape: tuple[int, ...]) -> str:
        """What keeps a tensor of `datatype` and `shape` from being this one ('' when it fits)."""
        if datatype != self.datatype:
            return f"is {datatype}; the model's {self.name!r} is {self.datatype}"
        if len(shape) != len(self.shape) or any(0 <= want != got for got, want in zip(shape, self.shape, strict=True)):
            return f"has shape {list(shape)}; the model's {self.name!r} has shape {list(self.shape)}"
        return ""

    def as_json(self) -> dict:
        """Its entry in the model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass
class Tensor:
    """A tensor as the protocol carries it; BYTES data holds bytes (binary, gRPC) or str (JSON text) elements."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names: in binary form or JSON (REST; None: the request's default), or its top K."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass
class InferRequest:
    """An inference request, from either wire."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # none: every output of the model
    binary_output: bool = False  # REST: parameters.binary_data_output, for outputs that do not say


@dataclass
class InferResponse:
    """Its answer (no outputs on failure: the data plane's Answer carries the error)."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)


class Runner(Protocol):
    """What runs a model's native requests: the server's own endpoint, or one model version's service."""

    def run(self, request: Any, ctx: RequestContext) -> Any:
        """The native answer; raises a ServingError on failure."""


class Model(Protocol):
    """A model version of the protocol: its name and signature, conversions to and from its native requests."""

    name: str
    version: str
    platform: str
    endpoint: Runner

    @property
    def signature(self) -> Signature | None:
        """Inputs and outputs; None while the endpoint loads."""

    def to_native(self, request: InferRequest, outputs: list[str], ctx: RequestContext) -> Any:
        """The endpoint's own request for these (checked) inputs and the outputs to compute."""

    def from_native(self, response: Any) -> dict[str, np.ndarray]:
        """The endpoint's answer as output arrays by name."""

    def labels(self, output: str) -> list[str] | None:
        """Class names by index of `output`'s last axis (for the classification extension), if it has them."""


class Models(Protocol):
    """The models a server offers: found by name and version ("" is the highest), held for a request's duration."""

    @property
    def ready(self) -> bool:
        """True once the models are loaded."""

    @property
    def names(self) -> list[str]:
        """The models served now, by name."""

    def versions(self, name: str) -> list[str]:
        """The model's versions served now; an unknown model is a ServiceNotFoundError."""

    def find(self, name: str, version: str) -> Model:
        """The model version, for metadata and readiness; an unknown one is a ServiceNotFoundError."""

    def hold(self, name: str, version: str) -> AbstractContextManager[Model]:
        """The model version, kept loaded until the block ends."""


class Repository(Protocol):
    """Triton's model repository extension: the index, and explicit loads and unloads."""

    def index(self) -> list[dict]:
        """Every model and version the repository knows: name, version, state, reason."""

    def load(self, name: str) -> None:
        """Load (or reload) the model's versions per its policy; raises when a version was refused."""

    def unload(self, name: str) -> None:
        """Stop serving every version of the model."""


class OneModel:
    """A server that is one model of one version (the pipeline service, on its endpoint); nothing to hold."""

    def __init__(self, model: Model, endpoint: Endpoint) -> None:
        self.model = model
        self.endpoint = endpoint

    @property
    def ready(self) -> bool:
        """Ready with the endpoint under it."""
        return self.endpoint.ready

    @property
    def names(self) -> list[str]:
        """Its one model."""
        return [self.model.name]

    def versions(self, name: str) -> list[str]:
        """Its one version."""
        return [self.find(name, "").version]

    def find(self, name: str, version: str) -> Model:
        """The model; another name or version is unknown (404, NOT_FOUND)."""
        if name != self.model.name:
            raise ServiceNotFoundError(f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version not in ("", self.model.version):
            raise ServiceNotFoundError(f"unknown version {version!r} of model {name!r}; it has version "
                                       f"{self.model.version!r}")
        return self.model

    def hold(self, name: str, version: str) -> AbstractContextManager[Model]:
        """The model itself: it is never unloaded while the server runs."""
        return nullcontext(self.find(name, version))


def _shaped(name: str, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`flat` in `shape`, or an InputError naming both sizes."""
    if flat.size != math.prod(shape):
        raise InputError(f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} elements but its data has "
                         f"{flat.size}")
    return flat.reshape(shape)


def _objects(elements: list) -> np.ndarray:
    """A 1-D object array of these elements, never split into more dimensions."""
    flat = np.empty(len(elements), dtype=object)
    flat[:] = elements
    return flat


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """A tensor from the binary layout; lengths that do not add up are an InputError."""
    if datatype != "BYTES":
        need = math.prod(shape) * DTYPES[datatype].itemsize
        if len(raw) != need:
            raise InputError(f"input {name!r}: {len(raw)} bytes of binary data, but {datatype} {list(shape)} takes "
                             f"{need}")
        return np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"input {name!r}: its BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + size > len(raw):
            raise InputError(f"input {name!r}: a BYTES element of {size} bytes runs past the end of its data")
        elements.append(bytes(raw[offset + 4:offset + 4 + size]))
        offset += 4 + size
    return _shaped(name, _objects(elements), shape)


def encode_raw(tensor: Tensor) -> bytes:
    """The binary layout of a tensor (str elements as UTF-8)."""
    if tensor.datatype != "BYTES":
        return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()
    elements = [item.encode() if isinstance(item, str) else bytes(item) for item in tensor.data.flat]
    return b"".join(struct.pack("<I", len(item)) + item for item in elements)


def _datatype(name: str, datatype: object) -> str:
    if datatype not in DTYPES:
        raise InputError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    return str(datatype)


def _shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _classification(output: str, value: object) -> int:
    if value is None:
        return 0
    if type(value) is not int or value < 1:
        raise InputError(f"output {output!r}: classification must be a positive integer, got {value!r}")
    return value


def _no_shared_memory(name: str, parameters: Mapping) -> None:
    if SHARED_MEMORY in parameters:
        raise InputError(f"input {name!r}: shared memory is not served here; send the data in the request")


# ---- REST: JSON, and the binary tensor extension ------------------------------------------------------------------

JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}


def _member(body: dict, key: str, kind: type, default: object) -> Any:
    """body[key] (or `default` when absent), which must be of `kind`."""
    value = body.get(key, default)
    if not isinstance(value, kind) and not (value is None and default is None):
        raise InputError(f"{key!r} must be {JSON_KINDS[kind]}, got {value!r:.100}")
    return value


def _json_data(name: str, datatype: str, shape: tuple[int, ...], data: object) -> np.ndarray:
    """A tensor from JSON data, flat or nested, row-major; BYTES elements are strings."""
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            if not all(isinstance(item, str) for item in flat):
                raise InputError(f"input {name!r}: BYTES data in JSON must be strings")
        else:
            flat = np.asarray(data, dtype=DTYPES[datatype]).ravel()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"input {name!r}: data is not {datatype} elements in a {list(shape)} array: {exc}") from None
    return _shaped(name, flat, shape)


def request_from_rest(body: bytes, header_length: str | None, model: str, version: str) -> InferRequest:
    """The JSON header (the body, or its first Inference-Header-Content-Length bytes) and binary tensors after it."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit():
            raise InputError(f"{HEADER_LENGTH} {header_length!r} is not a number of bytes")
        if int(header_length) > len(body):
            raise InputError(f"{HEADER_LENGTH} {header_length!r} is beyond the body of {len(body)} bytes")
        size = int(header_length)
    try:
        header = json.loads(body[:size])
    except ValueError as exc:
        raise InputError(f"the inference request is not JSON: {exc}") from None
    except RecursionError:
        raise InputError(DEEP_JSON) from None
    if not isinstance(header, dict):
        raise InputError("the inference request must be a JSON object with 'inputs'")
    binary, offset, inputs = memoryview(body)[size:], 0, []
    for item in _member(header, "inputs", list, []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(f"every input must be a JSON object with a 'name', got {item!r:.100}")
        name = item["name"]
        datatype, shape = _datatype(name, item.get("datatype")), _shape(name, item.get("shape"))
        parameters = _member(item, "parameters", dict, {})
        _no_shared_memory(name, parameters)
        length = parameters.get("binary_data_size")
        if length is None:
            if "data" not in item:
                raise InputError(f"input {name!r} has neither data nor parameters.binary_data_size")
            inputs.append(Tensor(name, datatype, _json_data(name, datatype, shape, item["data"])))
            continue
        if type(length) is not int or length < 0 or offset + length > len(binary):
            raise InputError(f"input {name!r}: binary_data_size {length!r} from byte {offset} runs past the "
                             f"{len(binary)} bytes after the JSON header")
        inputs.append(Tensor(name, datatype, decode_raw(name, datatype, shape, bytes(binary[offset:offset + length]))))
        offset += length
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes after the JSON header belong to no input: the inputs' "
                         f"binary_data_size add up to {offset} of {len(binary)}")
    outputs = []
    for item in _member(header, "outputs", list, []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(f"every requested output must be a JSON object with a 'name', got {item!r:.100}")
        parameters = _member(item, "parameters", dict, {})
        outputs.append(RequestedOutput(item["name"], _member(parameters, "binary_data", bool, None),
                                       _classification(item["name"], parameters.get("classification"))))
    parameters = _member(header, "parameters", dict, {})
    return InferRequest(model, version, _member(header, "id", str, ""), inputs, outputs,
                        _member(parameters, "binary_data_output", bool, False))


def _json_elements(tensor: Tensor) -> list:
    """Row-major JSON data: numbers, or strings for BYTES."""
    if tensor.datatype != "BYTES":
        return tensor.data.ravel().tolist()
    return [item if isinstance(item, str) else bytes(item).decode("utf-8", "replace") for item in tensor.data.flat]


def response_to_rest(response: InferResponse, request: InferRequest) -> tuple[bytes, str, dict[str, str]]:
    """Body, content type and headers: JSON, with the outputs asked for in binary after it (and its length)."""
    binary = {output.name: output.binary for output in request.outputs}
    outputs, chunks = [], []
    for tensor in response.outputs:
        entry: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.data.shape)}
        wanted = binary.get(tensor.name)
        if request.binary_output if wanted is None else wanted:
            chunks.append(encode_raw(tensor))
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = _json_elements(tensor)
        outputs.append(entry)
    text = json.dumps({"model_name": response.model_name, "model_version": response.model_version,
                       **({"id": response.id} if response.id else {}), "outputs": outputs}).encode()
    if not chunks:
        return text, "application/json", {}
    return text + b"".join(chunks), "application/octet-stream", {HEADER_LENGTH: str(len(text))}


# ---- gRPC -----------------------------------------------------------------------------------------------------------

def _parameter(value: pb.InferParameter | None) -> object:
    """An InferParameter's value (None when absent)."""
    return None if value is None else getattr(value, value.WhichOneof("parameter_choice") or "string_param")


def _contents(name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents) -> np.ndarray:
    """A tensor from gRPC's typed contents."""
    if datatype not in CONTENTS:
        raise InputError(f"input {name!r}: {datatype} travels only in raw_input_contents")
    values = getattr(contents, CONTENTS[datatype])
    if datatype == "BYTES":
        return _shaped(name, _objects(list(values)), shape)
    try:
        flat = np.fromiter(values, dtype=DTYPES[datatype], count=len(values))
    except (OverflowError, ValueError) as exc:
        raise InputError(f"input {name!r}: contents are not {datatype}: {exc}") from None
    return _shaped(name, flat, shape)


def request_from_grpc(message: pb.ModelInferRequest) -> InferRequest:
    """ModelInferRequest, with raw_input_contents (one per input, in order) or typed contents."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; send one "
                         "per input, in order")
    inputs = []
    for index, item in enumerate(message.inputs):
        datatype, shape = _datatype(item.name, item.datatype), _shape(item.name, list(item.shape))
        _no_shared_memory(item.name, item.parameters)
        if raw and item.HasField("contents"):
            raise InputError(f"input {item.name!r} has contents beside raw_input_contents; send one or the other")
        data = decode_raw(item.name, datatype, shape, raw[index]) if raw else _contents(
            item.name, datatype, shape, item.contents)
        inputs.append(Tensor(item.name, datatype, data))
    outputs = [RequestedOutput(item.name, classification=_classification(
        item.name, _parameter(item.parameters.get("classification")))) for item in message.outputs]
    return InferRequest(message.model_name, message.model_version, message.id, inputs, outputs)


def response_to_grpc(response: InferResponse) -> pb.ModelInferResponse:
    """ModelInferResponse with every output in raw_output_contents, as Triton answers."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id)
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.data.shape)
        message.raw_output_contents.append(encode_raw(tensor))
    return message


# ---- the data plane -------------------------------------------------------------------------------------------------

def classify(tensor: Tensor, count: int, labels: list[str] | None) -> Tensor:
    """The classification extension: the top `count` along the last axis as "value:index[:label]" strings."""
    if tensor.datatype == "BYTES" or tensor.data.ndim == 0:
        raise InputError(f"output {tensor.name!r} is {tensor.datatype} {list(tensor.data.shape)}: classification "
                         "takes a numeric output with a class axis")
    values = tensor.data.astype(np.float64)
    top = np.argsort(-values, axis=-1, kind="stable")[..., :count]
    picked = np.take_along_axis(values, top, axis=-1)
    texts = [f"{value:f}:{index}" + (f":{labels[index]}" if labels and index < len(labels) else "")
             for value, index in zip(picked.flat, top.flat, strict=True)]
    return Tensor(tensor.name, "BYTES", _objects(texts).reshape(top.shape))


class OipEndpoint:
    """The data plane's endpoint for InferRequests: checks them against the model asked for, runs its endpoint."""

    def __init__(self, models: Models) -> None:
        self.models = models

    @property
    def ready(self) -> bool:
        """Ready once the models are loaded."""
        return self.models.ready

    def metadata(self) -> dict:
        """None of its own: GET /metadata shows the server's endpoint, the protocol has each model's."""
        return {}

    def check(self, request: InferRequest) -> None:
        """Before admission: the model and version exist, and offer the protocol (a pipeline may declare no tensors)."""
        _ = self.models.find(request.model_name, request.model_version).signature

    def run(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """The model version held while its inputs are checked, its endpoint's own request runs, the outputs typed."""
        with self.models.hold(request.model_name, request.model_version) as model:
            return self._run(model, request, ctx)

    @staticmethod
    def _run(model: Model, request: InferRequest, ctx: RequestContext) -> InferResponse:
        signature = model.signature
        inputs = {spec.name: spec for spec in signature.inputs}
        outputs = {spec.name: spec for spec in signature.outputs}
        names = [tensor.name for tensor in request.inputs]
        for name in names:
            if name not in inputs or names.count(name) > 1:
                raise InputError(f"input {name!r} is {'sent twice' if name in inputs else 'not an input'}; the "
                                 f"model's inputs are {', '.join(inputs)}")
        missing = [spec for name, spec in inputs.items() if name not in names]
        if missing:
            raise InputError(f"missing input {missing[0].name!r} ({missing[0].datatype} {list(missing[0].shape)})")
        for tensor in request.inputs:
            misfit = inputs[tensor.name].misfit(tensor.datatype, tensor.data.shape)
            if misfit:
                raise InputError(f"input {tensor.name!r} {misfit}")
        wanted = request.outputs or [RequestedOutput(name) for name in outputs]
        unknown = [output.name for output in wanted if output.name not in outputs]
        if unknown:
            raise InputError(f"unknown output {unknown[0]!r}; the model's outputs are {', '.join(outputs)}")
        native = model.to_native(request, [output.name for output in wanted], ctx)
        arrays = model.from_native(model.endpoint.run(native, ctx))
        answered = []
        for output in wanted:
            tensor = Tensor(output.name, outputs[output.name].datatype, arrays[output.name])
            misfit = outputs[output.name].misfit(tensor.datatype, tensor.data.shape)
            if misfit:
                raise TypeCheckError(f"output {output.name!r} {misfit}")
            answered.append(classify(tensor, output.classification, model.labels(output.name))
                            if output.classification else tensor)
        return InferResponse(model.name, model.version, request.id, answered)

    def failure(self, exc: BaseException, request: InferRequest, ctx: RequestContext) -> InferResponse:
        """No outputs: the front ends send the error itself, with the table's status."""
        return InferResponse(request.model_name, request.model_version, request.id)


def _server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "0+checkout"


class OipService:
    """What both wires ask of a server: liveness, readiness, metadata and inference on its one data plane, and the
    repository extension where `repository` is given (else its calls are refused with `repository_off`)."""

    def __init__(self, dataplane: DataPlane, endpoint: OipEndpoint, repository: Repository | None = None,
                 repository_off: str = "this server has no model repository") -> None:
        self.dataplane = dataplane
        self.endpoint = endpoint
        self.repository = repository
        self.repository_off = repository_off
        self.version = _server_version()

    @property
    def ready(self) -> bool:
        """The server answers inference requests, and a pipeline's remote ops have a model server that answers."""
        return self.dataplane.ready_for_traffic

    def server_metadata(self) -> dict:
        """Name, version and the extensions served."""
        extensions = [*EXTENSIONS, *([REPOSITORY_EXTENSION] if self.repository is not None else [])]
        return {"name": SERVER_NAME, "version": self.version, "extensions": extensions}

    def model_metadata(self, name: str, version: str) -> dict:
        """Name, versions, platform, inputs and outputs; a model still loading has none yet (503)."""
        model = self.endpoint.models.find(name, version)
        signature = model.signature
        if signature is None:
            raise InitError(f"model {name!r} is still loading; retry when /v2/models/{name}/ready answers 200")
        return {"name": model.name, "versions": self.endpoint.models.versions(name), "platform": model.platform,
                "inputs": [spec.as_json() for spec in signature.inputs],
                "outputs": [spec.as_json() for spec in signature.outputs]}

    def model_ready(self, name: str, version: str) -> bool:
        """The model exists (else ServiceNotFoundError) and answers now."""
        return self.endpoint.models.find(name, version).signature is not None and self.dataplane.ready

    def infer(self, request: InferRequest, ctx: RequestContext) -> Answer:
        """One request through the data plane, with the request's numeric id as its log id."""
        if request.id.isdigit() and len(request.id) < 19:
            ctx = dataclasses.replace(ctx, log_id=int(request.id))
        return self.dataplane.infer(request, ctx, self.endpoint)

    def enabled_repository(self) -> Repository:
        """The repository, or RepositoryOffError saying how to enable it."""
        if self.repository is None:
            raise RepositoryOffError(f"the model repository API is off: {self.repository_off}")
        return self.repository


# ---- REST front end, for either HTTP server ---------------------------------------------------------------------

MODEL_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")
REPOSITORY_PATH = re.compile(r"/v2/repository/(?:index|models/(?P<model>[^/]+)/(?P<action>load|unload))")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # probes need no token


@dataclass(frozen=True)
class RestReply:
    """An HTTP answer: status, body, content type and other headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def error_reply(exc: BaseException) -> RestReply:
    """The protocol's error body with the error table's HTTP status."""
    status = wire_status_of(exc).oip_http
    return RestReply(status, _error_body(error_of(exc)[1]), headers={"WWW-Authenticate": "Bearer"} if status == 401
                     else {})


class OipRest:
    """The protocol's REST paths for any HTTP server: it hands over method, path, headers (lower-case) and body."""

    def __init__(self, service: OipService) -> None:
        self.service = service

    @staticmethod
    def owns(path: str) -> bool:
        """True for the paths under /v2."""
        return path == "/v2" or path.startswith("/v2/")

    @staticmethod
    def blocks(method: str, path: str) -> bool:
        """Inference, the repository's calls (a load takes seconds) and server readiness: servers run them on a
        worker thread, the rest on their event loop."""
        return ((method == "POST" and (path.endswith("/infer") or path.startswith("/v2/repository/")))
                or path.rstrip("/") == "/v2/health/ready")  # a pipeline's asks its remote model servers

    def call(self, method: str, path: str, headers: Mapping[str, str], body: bytes, client: str,
             authorized: bool) -> RestReply:
        """The answer to one request on a /v2 path; errors as {"error": ...} with the table's status."""
        path = path.rstrip("/")
        found = MODEL_PATH.fullmatch(path)
        repository = REPOSITORY_PATH.fullmatch(path)
        model = unquote(found["model"]) if found else ""
        version = unquote(found["version"] or "") if found else ""
        action = found["action"] if found else path
        allowed = ("POST",) if action == "/infer" or repository else ("GET", "HEAD")
        try:
            if found is None and repository is None and path not in ("/v2", *OPEN_PATHS):
                raise ServiceNotFoundError(f"no {path}; the protocol's paths are /v2, /v2/health/live, "
                                           "/v2/health/ready, /v2/models/{name}[/versions/{v}][/ready|/infer] and "
                                           "/v2/repository/index, /v2/repository/models/{name}/load|unload")
            if method not in allowed:
                return RestReply(405, _error_body(f"no {method} {path}: use {' or '.join(allowed)}"),
                                 headers={"Allow": ", ".join(allowed)})
            if not authorized and path not in OPEN_PATHS:
                raise AuthError(HTTP_HINT)
            if repository is not None:
                return self._repository(repository["action"], unquote(repository["model"] or ""), body)
            if path in OPEN_PATHS:
                return RestReply(200 if path.endswith("live") or self.service.ready else 400)
            if path == "/v2":
                return RestReply(200, json.dumps(self.service.server_metadata()).encode())
            if action == "/ready":
                return RestReply(200 if self.service.model_ready(model, version) else 400)
            if action is None:
                return RestReply(200, json.dumps(self.service.model_metadata(model, version)).encode())
            return self._infer(model, version, headers, body, client)
        except ServingError as exc:
            return error_reply(exc)

    def _repository(self, action: str | None, model: str, body: bytes) -> RestReply:
        """POST /v2/repository/index (optionally {"ready": true}: only versions serving), .../load, .../unload."""
        repository = self.service.enabled_repository()
        if action == "load":
            repository.load(model)
            return RestReply(200)
        if action == "unload":
            repository.unload(model)
            return RestReply(200)
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise InputError(f"the index request is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise InputError('the index request must be a JSON object, e.g. {"ready": true}')
        ready = _member(options, "ready", bool, False)
        rows = [row for row in repository.index() if not ready or row["state"] == "READY"]
        return RestReply(200, json.dumps(rows).encode())

    def _infer(self, model: str, version: str, headers: Mapping[str, str], body: bytes, client: str) -> RestReply:
        encoding = headers.get("content-encoding", "identity")
        if encoding != "identity":
            raise InputError(f"Content-Encoding {encoding!r} is not served; send the body uncompressed")
        request = request_from_rest(body, headers.get(HEADER_LENGTH.lower()), model, version)
        ctx = RequestContext.arrived("oip_http", client, 0, timeout_header_ms(headers.get(TIMEOUT_HEADER.lower())))
        answer = self.service.infer(request, ctx)
        if answer.error is not None:
            return error_reply(answer.error)
        body, content_type, reply_headers = response_to_rest(answer.response, request)
        return RestReply(200, body, content_type, reply_headers)


# ---- gRPC front end -------------------------------------------------------------------------------------------------

def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the error table's gRPC code and the error's text."""
    context.abort(wire_status_of(exc).oip_grpc, error_of(exc)[1])


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService`: each call one line onto the OipService."""

    def __init__(self, service: OipService) -> None:
        self.service = service

    def ServerLive(self, request: pb.ServerLiveRequest,  # noqa: N802 - the proto's method names
                   context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        """Live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest,  # noqa: N802
                    context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        """Ready once the models are loaded, until the server stops."""
        return pb.ServerReadyResponse(ready=self.service.ready)

    def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                       context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        """Name, version, extensions."""
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    def ModelReady(self, request: pb.ModelReadyRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        """Whether the model answers now; an unknown one is NOT_FOUND."""
        try:
            return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))
        except ServingError as exc:
            _abort(context, exc)

    def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                      context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        """The model's name, versions, platform and tensors."""
        try:
            return pb.ModelMetadataResponse(**self.service.model_metadata(request.name, request.version))
        except ServingError as exc:
            _abort(context, exc)

    def ModelInfer(self, request: pb.ModelInferRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> pb.ModelInferResponse:
        """Decode, run on the data plane, encode; errors as the table's gRPC code."""
        try:
            decoded = request_from_grpc(request)
            ctx = RequestContext.arrived("oip_grpc", context.peer(), 0, client_timeout_ms(context))
        except ServingError as exc:
            _abort(context, exc)
        answer = self.service.infer(decoded, ctx)
        if answer.error is not None:
            _abort(context, answer.error)
        return response_to_grpc(answer.response)


    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,  # noqa: N802
                            context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        """Load (or reload) a model's versions; off unless the server enables its repository API."""
        try:
            self.service.enabled_repository().load(request.model_name)
        except ServingError as exc:
            _abort(context, exc)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,  # noqa: N802
                              context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        """Unload every version of a model; off unless the server enables its repository API."""
        try:
            self.service.enabled_repository().unload(request.model_name)
        except ServingError as exc:
            _abort(context, exc)
        return pb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)


def add_oip_servicer(server: grpc.Server, service: OipService) -> None:
    """Serve GRPCInferenceService on `server` (its health name is SERVICE_NAME)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(OipServicer(service), server)
