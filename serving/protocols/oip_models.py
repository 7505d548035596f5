"""The two servers' endpoints as models of the Open Inference Protocol: what converts an InferRequest to theirs.

Each binding turns a checked InferRequest into the request its endpoint already takes (PipelineRequest, or
GeneralModelService's tensor Request) and the endpoint's response into output arrays, so an OIP call runs the
very code a Paddle Serving call runs.
"""

import ast
import base64

import numpy as np

from serving.context import RequestContext
from serving.dataplane import PREDICTION_METHOD, PipelineEndpoint, PipelineRequest, PipelineResponse
from serving.errors import ServiceNotFoundError, TypeCheckError
from serving.model_service import ModelService
from serving.proto import general_model_service_pb2 as gm
from serving.protocols.oip import DTYPES, InferRequest, Signature, TensorSpec
from serving.tensors import ELEM_TYPE_OF, ElemType, to_array, to_tensor

VERSION = "1"  # the version of a model that is not in a model repository
# Tensor's fixed-width float fields by numpy dtype, which the packed wire format stores as raw little-endian bytes.
PACKED_FLOATS = {np.dtype("<f4"): "float_data", np.dtype("<f8"): "float64_data"}


def _text(item: bytes | str) -> str:
    """An element as the text Paddle Serving's protocols carry: bytes (a file) as base64, JSON text as it is."""
    return item if isinstance(item, str) else base64.b64encode(item).decode("ascii")


class PipelineModel:
    """The pipeline service as one model, named like it; its signature comes from WebService.get_tensor_signature.

    A BYTES input `image` of N elements becomes the keys `image` (N = 1) or `image_0` ... `image_{N-1}`, Paddle
    Serving's convention, each value the element's text: elements that came as bytes (binary data, gRPC) go as
    base64, as Paddle Serving's clients send files; JSON has only text, which goes as it is (base64 of the file,
    as those clients send it). Numeric inputs go as the request's tensors. Each output is the result value of
    that name, the Python literal PaddleClas's ops write (str() of a list), typed by the signature.
    """

    platform = "paddle_serving_pipeline"

    def __init__(self, name: str, endpoint: PipelineEndpoint) -> None:
        self.name = name
        self.version = VERSION
        self.endpoint = endpoint
        self._signature: Signature | None = None
        self._attached = False

    @property
    def signature(self) -> Signature | None:
        """None while the DAG loads; a service that declares none is not a model here."""
        if self._attached and self._signature is None:
            raise ServiceNotFoundError(f"service {self.name!r} declares no tensor signature "
                                       "(WebService.get_tensor_signature), so the Open Inference Protocol cannot "
                                       f"call it; use POST /{self.name}/prediction")
        return self._signature

    def attach(self, signature: Signature | None) -> None:
        """The DAG is up: from now on `signature` (or none) is the model's."""
        self._signature, self._attached = signature, True

    def to_native(self, request: InferRequest, outputs: list[str], ctx: RequestContext) -> PipelineRequest:
        """Key/value pairs for BYTES inputs, tensors for the others; the pipeline computes every output."""
        keys, values, tensors = [], [], {}
        for tensor in request.inputs:
            if tensor.datatype != "BYTES":
                tensors[tensor.name] = tensor.data
                continue
            elements = list(tensor.data.flat)
            keys += [tensor.name] if len(elements) == 1 else [f"{tensor.name}_{i}" for i in range(len(elements))]
            values += [_text(item) for item in elements]
        return PipelineRequest(keys, values, tensors, self.name, PREDICTION_METHOD, ctx.log_id, ctx.client)

    def from_native(self, response: PipelineResponse) -> dict[str, np.ndarray]:
        """The declared outputs parsed from the result's literals."""
        result = dict(zip(response.keys, response.values, strict=True))
        arrays = {}
        for spec in self._signature.outputs:
            if spec.name not in result:
                raise TypeCheckError(f"the pipeline's result has no {spec.name!r} (it has {', '.join(result)}), "
                                     "though its tensor signature declares it")
            try:
                arrays[spec.name] = np.asarray(ast.literal_eval(result[spec.name]), dtype=DTYPES[spec.datatype])
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
                raise TypeCheckError(f"result {spec.name!r} = {result[spec.name]!r:.80} is not a Python literal of "
                                     f"{spec.datatype} values: {exc}") from None
        return arrays

    def labels(self, output: str) -> None:
        """The pipeline's outputs carry no class axis of their own."""
        return None


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _feed_tensor(name: str, alias: str, array: np.ndarray) -> gm.Tensor:
    """to_tensor's Tensor, but FP32/FP64 data parsed from its packed wire bytes by the C parser: to_tensor's
    tolist + extend holds the GIL ~6 ms for a [1, 3, 224, 224] image, which binary and raw gRPC data arrive without."""
    dtype = array.dtype.newbyteorder("<")
    if dtype not in PACKED_FLOATS:
        return to_tensor(name, alias, array)
    field = PACKED_FLOATS[dtype]
    tensor = gm.Tensor(name=name, alias_name=alias, elem_type=ELEM_TYPE_OF[dtype.newbyteorder("=")],
                       shape=list(array.shape))
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    key = gm.Tensor.DESCRIPTOR.fields_by_name[field].number << 3 | 2  # length-delimited: packed
    tensor.MergeFromString(_varint(key) + _varint(len(data)) + data)
    return tensor


def _datatype(elem_type: int) -> str:
    """The protocol's name for a model config's feed_type or fetch_type."""
    return "BYTES" if elem_type == ElemType.STRING else ElemType(elem_type).name


class ModelServiceModel:
    """A model server's model version: its feeds and fetches by alias, their config types and shapes after a batch
    of -1; what a model repository loads."""

    def __init__(self, service: ModelService, name: str, version: str = VERSION) -> None:
        self.service = service
        self.endpoint = service
        self.name = name
        self.version = version
        engine = service.predictor.engine_info
        # the precision where it is not FP32 (onnxruntime_int8): what OIP's model metadata has room to say
        precision = engine.get("precision", "fp32")
        self.platform = engine["engine"] + (f"_{precision}" if precision != "fp32" else "")
        config = service.model_config
        self.signature = Signature(
            tuple(TensorSpec(var.alias_name, _datatype(var.feed_type), (-1, *var.shape)) for var in config.feed_var),
            tuple(TensorSpec(var.alias_name, _datatype(var.fetch_type), (-1, *var.shape)) for var in config.fetch_var))
        self._names = {var.alias_name: var.name for var in config.feed_var}

    def to_native(self, request: InferRequest, outputs: list[str], ctx: RequestContext) -> gm.Request:
        """A GeneralModelService Request: the inputs as Tensors (BYTES elements as STRING text), the outputs fetched."""
        tensors = [to_tensor(self._names[tensor.name], tensor.name, [_text(item) for item in tensor.data.flat])
                   if tensor.datatype == "BYTES" else _feed_tensor(self._names[tensor.name], tensor.name, tensor.data)
                   for tensor in request.inputs]
        return gm.Request(tensor=tensors, fetch_var_names=outputs, log_id=ctx.log_id)

    def from_native(self, response: gm.Response) -> dict[str, np.ndarray]:
        """The fetched tensors by alias."""
        return {tensor.alias_name: to_array(tensor) for output in response.outputs for tensor in output.tensor}

    def labels(self, output: str) -> list[str] | None:
        """The model card's class names (as the pipeline answers them), when the model has a card."""
        return self.service.card.display_labels if self.service.card is not None else None

    def release(self) -> None:
        """Free the predictor pool: the repository retired this version and no request holds it."""
        self.service.predictor.release()
