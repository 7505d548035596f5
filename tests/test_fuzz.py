"""Property tests: arbitrary bytes into the frame decoder, request parsers and image decoder end in a clean
result or a clean, typed error — never another exception, never a hang."""

import json

import cv2
import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import InputError
from serving.images import ImageDecodeError, decode_bgr
from serving.proto import general_model_service_pb2 as gm
from serving.proto import pipeline_service_pb2 as pb
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols.baidu_std import FrameDecoder, FrameError, encode_frame
from serving.protocols.general_model import parse_json_request, response_json
from serving.protocols.pipeline_codec import request_from_json, request_from_proto

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_frame_decoder_never_crashes(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_body=4096)
    try:
        for start in range(0, len(data), chunk):
            for frame in decoder.feed(data[start : start + chunk]):
                assert isinstance(frame.payload, bytes)
    except FrameError:
        pass


@FAST
@given(st.binary(max_size=256), st.integers(min_value=0, max_value=300))
def test_mutated_valid_frames_decode_or_fail_cleanly(payload: bytes, flip: int) -> None:
    meta = RpcMeta(correlation_id=1)
    meta.request.service_name, meta.request.method_name = "S", "m"
    frame = bytearray(encode_frame(meta, payload, b"att"))
    position = flip % len(frame)
    frame[position] ^= 0xFF
    try:
        frames = FrameDecoder(max_body=1 << 20).feed(bytes(frame))
        assert len(frames) <= 1
    except FrameError:
        pass


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@FAST
@given(st.dictionaries(st.sampled_from(["key", "value", "logid", "tensors", "other"]), JSON_VALUES, max_size=5))
def test_json_requests_parse_or_raise_input_error(body: dict) -> None:
    try:
        request = request_from_json(json.loads(json.dumps(body)), "imagenet", "prediction", "127.0.0.1")
        assert all(isinstance(key, str) for key in request.keys)
    except InputError:
        pass


TENSOR_KEYS = st.sampled_from(["name", "alias_name", "elem_type", "shape", "data", "float_data", "int_data",
                               "float64_data", "int64_data", "lod", "other"])


@FAST
@given(st.dictionaries(st.sampled_from(["tensor", "fetch_var_names", "log_id", "other"]),
                       JSON_VALUES | st.lists(st.dictionaries(TENSOR_KEYS, JSON_VALUES, max_size=4), max_size=3),
                       max_size=4))
def test_model_server_json_parses_like_json_format_or_fails_cleanly(body: dict) -> None:
    assert_same_as_json_format(json.dumps(body).encode())


def test_model_server_json_edge_cases_follow_json_format() -> None:
    for odd in (b'{"tensor": [{"data": "abc"}]}', b'{"tensor": [{"float_data": [true]}]}',
                b'{"tensor": [{"int_data": [1.0, 2]}]}', b'{"tensor": [{"float_data": ["NaN", 1]}]}',
                b'{"tensor": [{"data": ["aGk="], "float_data": [0.5]}], "log_id": 3}'):
        assert_same_as_json_format(odd)


def assert_same_as_json_format(data: bytes) -> None:
    try:
        exact = json_format.Parse(data, gm.Request())
    except (json_format.ParseError, ValueError):
        exact = None
    try:
        assert parse_json_request(data) == exact
    except (json_format.ParseError, ValueError):
        assert exact is None


@FAST
@given(st.lists(st.floats(width=32), max_size=20), st.lists(st.floats(), max_size=20),
       st.lists(st.integers(min_value=-2**31, max_value=2**31 - 1), max_size=5), st.integers(0, 2**63))
def test_model_server_json_response_is_json_format_s_mapping(floats: list, doubles: list, ints: list,
                                                               log_id: int) -> None:
    tensor = gm.Tensor(float_data=floats, float64_data=doubles, int_data=ints, shape=[len(floats)], elem_type=1,
                       name="save_infer_model/scale_0.tmp_1", alias_name="prediction")
    response = gm.Response(outputs=[gm.ModelOutput(tensor=[tensor], engine_name="general_infer_0")], log_id=log_id)
    ours = response_json(response)
    strict = json.loads(ours, parse_constant=lambda name: pytest.fail(f"bare {name} is not JSON"))
    exact = json.loads(json_format.MessageToJson(response, preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True))
    ours_tensor, exact_tensor = strict["outputs"][0]["tensor"][0], exact["outputs"][0]["tensor"][0]
    assert {key: value for key, value in strict.items() if key != "outputs"} == {
        key: value for key, value in exact.items() if key != "outputs"}
    for key, dtype in (("float_data", np.float32), ("float64_data", np.float64), ("int_data", np.int64)):
        np.testing.assert_array_equal(np.array([float(v) for v in ours_tensor[key]], dtype),
                                      np.array([float(v) for v in exact_tensor.get(key, [])], dtype))
        assert [v for v in ours_tensor[key] if isinstance(v, str)] == [
            v for v in exact_tensor.get(key, []) if isinstance(v, str)]


@FAST
@given(st.binary(max_size=512))
def test_grpc_requests_parse_or_raise_input_error(data: bytes) -> None:
    message = pb.Request()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return
    try:
        request = request_from_proto(message, "peer")
    except InputError:
        return
    assert request.keys == list(message.key) and set(request.tensors) <= {tensor.name for tensor in message.tensors}


PNG = cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))[1].tobytes()
JPEG = cv2.imencode(".jpg", np.full((16, 16, 3), 120, np.uint8))[1].tobytes()


@FAST
@given(st.sampled_from([PNG, JPEG]), st.integers(min_value=0, max_value=10_000),
       st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=10_000))
def test_image_decoder_on_corrupted_files(image: bytes, position: int, value: int, cut: int) -> None:
    data = bytearray(image)
    data[position % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        pixels = decode_bgr(data, max_pixels=10_000)
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    except ImageDecodeError:
        pass
