"""numpy <-> GeneralModelService Tensor: every wire field, and clear errors for tensors that cannot be used."""

import base64

import numpy as np
import pytest

from serving.errors import InputError
from serving.proto.general_model_config_pb2 import FeedVar
from serving.proto.general_model_service_pb2 import Tensor
from serving.tensors import ElemType, as_feed_types, feed_vars_by_key, to_array, to_tensor


def wire(tensor: Tensor) -> Tensor:
    """Through bytes and back, as the tensor would cross the network."""
    return Tensor.FromString(tensor.SerializeToString())


@pytest.mark.parametrize(("dtype", "elem_type", "field"), [
    (np.float32, ElemType.FP32, "float_data"), (np.int64, ElemType.INT64, "int64_data"),
    (np.int32, ElemType.INT32, "int_data"), (np.float64, ElemType.FP64, "float64_data"),
    (np.bool_, ElemType.BOOL, "bool_data")])
def test_repeated_field_types_round_trip(dtype: type, elem_type: int, field: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    tensor = wire(to_tensor("x", "image", array))
    assert (tensor.name, tensor.alias_name, tensor.elem_type) == ("x", "image", elem_type)
    assert list(tensor.shape) == [2, 3, 4]
    assert len(getattr(tensor, field)) == 24 and not tensor.tensor_content
    back = to_array(tensor)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(("dtype", "elem_type"), [
    (np.float16, ElemType.FP16), (np.int16, ElemType.INT16), (np.uint8, ElemType.UINT8), (np.int8, ElemType.INT8)])
def test_tensor_content_types_round_trip(dtype: type, elem_type: int) -> None:
    array = (np.arange(12).reshape(3, 4) - 6).astype(dtype)
    tensor = wire(to_tensor("x", "x", array))
    assert tensor.elem_type == elem_type and len(tensor.tensor_content) == array.nbytes
    np.testing.assert_array_equal(to_array(tensor), array)


def test_tensor_content_is_little_endian_whatever_the_array_order() -> None:
    big = np.array([[1.5, -2.0]], dtype=">f2")
    tensor = to_tensor("x", "x", big)
    assert tensor.tensor_content == np.array([1.5, -2.0], dtype="<f2").tobytes()
    np.testing.assert_array_equal(to_array(tensor), big)


def test_big_endian_and_strided_arrays_keep_their_values() -> None:
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    back = to_array(wire(to_tensor("x", "x", array)))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, array)


def test_bf16_tensor_content_decodes_to_float32() -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    high = (values.view(np.uint32) >> 16).astype("<u2")
    tensor = Tensor(name="y", elem_type=ElemType.BF16, shape=[3], tensor_content=high.tobytes())
    np.testing.assert_array_equal(to_array(tensor), values)


def test_bytes_are_sent_as_base64_text() -> None:
    data = b"\xff\xd8\xff\xe0 not utf-8 \x80"
    tensor = wire(to_tensor("image", "image", data))
    assert (tensor.elem_type, list(tensor.shape)) == (ElemType.STRING, [1])
    assert list(tensor.data) == [base64.b64encode(data).decode("ascii")]


def test_strings_lists_and_str_arrays_are_string_tensors() -> None:
    assert list(to_tensor("t", "t", "hello").data) == ["hello"]
    tensor = to_tensor("t", "t", [b"ab", "cd"])
    assert (list(tensor.data), list(tensor.shape)) == (["YWI=", "cd"], [2])
    assert to_array(wire(to_tensor("t", "t", np.array(["a", "b"])))).tolist() == ["a", "b"]


def test_unsupported_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="dtype complex64 is not supported"):
        to_tensor("x", "x", np.zeros(2, np.complex64))
    with pytest.raises(InputError, match="int is not an array, bytes, str"):
        to_tensor("x", "x", 3)
    with pytest.raises(InputError, match="float is not an array, bytes or str"):
        to_tensor("x", "x", ["a", 1.5])


def test_unknown_elem_type_is_named() -> None:
    with pytest.raises(InputError, match="out: elem_type 11 is not supported; known types are 0 INT64"):
        to_array(Tensor(alias_name="out", elem_type=11, shape=[1]))


def test_shape_mismatch_names_both_sizes() -> None:
    with pytest.raises(InputError, match=r"x: shape \[2, 3\] needs 6 elements but the tensor has 5"):
        to_array(Tensor(name="x", elem_type=ElemType.FP32, shape=[2, 3], float_data=[0.0] * 5))
    with pytest.raises(InputError, match="negative dimension"):
        to_array(Tensor(name="x", elem_type=ElemType.FP32, shape=[-1], float_data=[0.0]))
    with pytest.raises(InputError, match="not a whole number of 2-byte elements"):
        to_array(Tensor(name="x", elem_type=ElemType.FP16, shape=[1], tensor_content=b"\x00\x00\x00"))


def test_a_shape_whose_size_overflows_int64_is_an_input_error() -> None:
    """65536**4 is 2**64, which int64 arithmetic wraps to 0: an empty tensor must not pass for it (was err_no 10000)."""
    with pytest.raises(InputError, match=r"needs 18446744073709551616 elements but the tensor has 0"):
        to_array(Tensor(name="x", elem_type=ElemType.FP32, shape=[65536] * 4))


def test_absent_shape_means_one_dimension() -> None:
    assert to_array(Tensor(elem_type=ElemType.INT64, int64_data=[4, 5, 6])).tolist() == [4, 5, 6]


def test_feeds_are_cast_to_the_declared_type_within_their_kind_only() -> None:
    image = FeedVar(name="x", alias_name="image", feed_type=ElemType.FP32)
    ids = FeedVar(name="ids", alias_name="ids", feed_type=ElemType.INT64)
    cast = as_feed_types({"image": np.ones((1, 3), np.float64), "ids": np.ones(2, np.float32)}, [image, ids])
    assert cast["image"].dtype == np.float32 and cast["ids"].dtype == np.float32  # float -> int is not same kind
    single = as_feed_types({"anything": np.zeros((1, 2), np.float64)}, [image])
    assert single["anything"].dtype == np.float32
    text = np.array(["a"])
    assert as_feed_types({"image": text}, [image])["image"] is text


def test_a_single_feed_takes_a_lone_tensor_under_any_key_and_several_feeds_take_alias_or_name() -> None:
    image = FeedVar(name="x", alias_name="image", feed_type=ElemType.FP32)
    ids = FeedVar(name="ids_0", alias_name="ids", feed_type=ElemType.INT64)
    assert feed_vars_by_key({"anything": 0}, [image]) == {"anything": image}
    assert feed_vars_by_key({"image": 0, "extra": 0}, [image]) == {"image": image, "x": image}
    assert feed_vars_by_key({"anything": 0}, [image, ids]) == {"image": image, "x": image, "ids": ids, "ids_0": ids}
