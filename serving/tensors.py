"""numpy <-> GeneralModelService `Tensor`: shared by the brpc client and the model server."""

import base64
import math
from enum import IntEnum

import numpy as np

from serving.errors import InputError
from serving.proto.general_model_config_pb2 import FeedVar
from serving.proto.general_model_service_pb2 import Tensor


class ElemType(IntEnum):
    """Tensor.elem_type codes (protocols.md §4)."""

    INT64 = 0
    FP32 = 1
    INT32 = 2
    FP64 = 3
    INT16 = 4
    FP16 = 5
    BF16 = 6
    UINT8 = 7
    INT8 = 8
    BOOL = 9
    STRING = 20


# Types carried in a repeated field: elem_type -> (numpy dtype, field name).
REPEATED = {ElemType.INT64: (np.dtype(np.int64), "int64_data"), ElemType.FP32: (np.dtype(np.float32), "float_data"),
            ElemType.INT32: (np.dtype(np.int32), "int_data"), ElemType.FP64: (np.dtype(np.float64), "float64_data"),
            ElemType.BOOL: (np.dtype(np.bool_), "bool_data")}
# Types carried as raw little-endian bytes in tensor_content.
RAW = {ElemType.FP16: np.dtype("<f2"), ElemType.INT16: np.dtype("<i2"), ElemType.UINT8: np.dtype(np.uint8),
       ElemType.INT8: np.dtype(np.int8)}
ELEM_TYPE_OF = {dtype: elem for elem, (dtype, _) in REPEATED.items()} | {
    dtype.newbyteorder("="): elem for elem, dtype in RAW.items()}
# The numpy dtype a config's feed_type asks for (BF16 has no numpy dtype; STRING is not numeric).
DTYPE_OF = {elem: dtype for dtype, elem in ELEM_TYPE_OF.items()}

TensorValue = np.ndarray | bytes | str | list[bytes | str]


def to_tensor(name: str, alias: str, value: TensorValue) -> Tensor:
    """A Tensor for a feed: arrays by dtype, bytes (an image file) as base64 STRING, str as STRING."""
    if isinstance(value, np.ndarray):
        return _array_tensor(name, alias, value)
    if isinstance(value, bytes | str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InputError(f"feed {name!r}: {type(value).__name__} is not an array, bytes, str or a list of them")
    texts = [_text(name, item) for item in value]
    return Tensor(name=name, alias_name=alias, elem_type=ElemType.STRING, shape=[len(texts)], data=texts)


def _text(name: str, item: object) -> str:
    """STRING elements are proto3 strings: file bytes travel as base64 text, which strict parsers accept."""
    if isinstance(item, bytes):
        return base64.b64encode(item).decode("ascii")
    if isinstance(item, str):
        return item
    raise InputError(f"feed {name!r}: {type(item).__name__} is not an array, bytes or str")


def _array_tensor(name: str, alias: str, array: np.ndarray) -> Tensor:
    """Numeric arrays in the field Paddle Serving uses for their dtype; str arrays as STRING."""
    if array.dtype.kind in "US":
        return to_tensor(name, alias, array.ravel().tolist())
    elem_type = ELEM_TYPE_OF.get(array.dtype.newbyteorder("="))
    if elem_type is None:
        supported = sorted(str(dtype) for dtype in ELEM_TYPE_OF)
        raise InputError(f"feed {name!r}: dtype {array.dtype} is not supported; use one of {supported}")
    tensor = Tensor(name=name, alias_name=alias, elem_type=elem_type, shape=list(array.shape))
    if elem_type in RAW:
        tensor.tensor_content = np.ascontiguousarray(array, dtype=RAW[elem_type]).tobytes()
    else:
        dtype, field = REPEATED[elem_type]
        getattr(tensor, field).extend(np.asarray(array, dtype=dtype).ravel().tolist())
    return tensor


def to_array(tensor: Tensor) -> np.ndarray:
    """The tensor's values shaped by its shape; STRING tensors become object arrays of str."""
    label = tensor.alias_name or tensor.name or "tensor"
    elem_type = tensor.elem_type
    if elem_type in REPEATED:
        dtype, field = REPEATED[elem_type]
        values = getattr(tensor, field)
        flat = np.fromiter(values, dtype=dtype, count=len(values))
    elif elem_type in RAW:
        flat = _from_bytes(label, tensor.tensor_content, RAW[elem_type])
    elif elem_type == ElemType.BF16:
        high = _from_bytes(label, tensor.tensor_content, np.dtype("<u2"))
        flat = (high.astype(np.uint32) << 16).view(np.float32)
    elif elem_type == ElemType.STRING:
        flat = np.array(list(tensor.data), dtype=object)
    else:
        raise InputError(f"{label}: elem_type {elem_type} is not supported; known types are "
                         f"{', '.join(f'{kind.value} {kind.name}' for kind in ElemType)}")
    return _shaped(label, flat, list(tensor.shape))


def _from_bytes(label: str, content: bytes, dtype: np.dtype) -> np.ndarray:
    """Raw little-endian tensor_content as a native-order array."""
    if len(content) % dtype.itemsize:
        raise InputError(f"{label}: tensor_content of {len(content)} bytes is not a whole number of "
                         f"{dtype.itemsize}-byte elements")
    return np.frombuffer(content, dtype=dtype).astype(dtype.newbyteorder("="))


def _shaped(label: str, flat: np.ndarray, shape: list[int]) -> np.ndarray:
    """Reshape by the declared shape (an absent shape means 1-D), naming both sizes on a mismatch."""
    if not shape:
        return flat
    if any(dim < 0 for dim in shape):
        raise InputError(f"{label}: shape {shape} has a negative dimension")
    if math.prod(shape) != flat.size:  # exact: np.prod wraps at 2**63, and a wrapped 0 would pass an empty tensor
        raise InputError(f"{label}: shape {shape} needs {math.prod(shape)} elements but the tensor has {flat.size}")
    return flat.reshape(shape)


def feed_vars_by_key(feed: dict, feed_vars: list[FeedVar]) -> dict[str, FeedVar]:
    """Feed variables by the keys a request may use (alias or name); a model with a single feed takes a lone
    tensor under any key, as Paddle Serving does, so the cast and the predictor's check agree on it."""
    if len(feed_vars) == 1 and len(feed) == 1:
        return {key: feed_vars[0] for key in feed}
    return {var.alias_name: var for var in feed_vars} | {var.name: var for var in feed_vars}


def as_feed_types(feed: dict, feed_vars: list[FeedVar]) -> dict:
    """Numeric arrays cast to their feed's declared type within the same kind (float64 -> float32), as Paddle
    Serving's LocalPredictor does for what a preprocess returns; other mismatches are left for the check."""
    by_key = feed_vars_by_key(feed, feed_vars)
    cast = {}
    for key, value in feed.items():
        target = DTYPE_OF.get(by_key[key].feed_type) if key in by_key else None
        if (isinstance(value, np.ndarray) and target is not None and value.dtype != target
                and value.dtype.kind in "biuf" and np.can_cast(value.dtype, target, "same_kind")):
            value = value.astype(target)
        cast[key] = value
    return cast
