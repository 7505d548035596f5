"""baidu_std framing: split and coalesced reads, attachments, sizes checked before reading, compression."""

import gzip
import zlib

import pytest

from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols.baidu_std import (
    HEADER,
    CompressType,
    FrameDecoder,
    FrameError,
    PayloadError,
    compress,
    decompress,
    encode_frame,
)


def request_meta(correlation_id: int) -> RpcMeta:
    meta = RpcMeta(correlation_id=correlation_id)
    meta.request.service_name = "GeneralModelService"
    meta.request.method_name = "inference"
    return meta


def test_frame_split_across_reads() -> None:
    data = encode_frame(request_meta(1), b"payload", b"attach")
    decoder = FrameDecoder()
    frames = [frame for i in range(len(data)) for frame in decoder.feed(data[i : i + 1])]
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.payload, frame.attachment, frame.meta.correlation_id) == (b"payload", b"attach", 1)
    assert frame.meta.attachment_size == 6 and frame.meta.request.method_name == "inference"


def test_several_frames_in_one_read_and_a_partial_tail() -> None:
    data = b"".join(encode_frame(request_meta(i), f"p{i}".encode()) for i in range(3))
    decoder = FrameDecoder()
    frames = decoder.feed(data + data[:5])
    assert [(f.meta.correlation_id, f.payload) for f in frames] == [(0, b"p0"), (1, b"p1"), (2, b"p2")]
    assert [f.payload for f in decoder.feed(data[5:])] == [b"p0", b"p1", b"p2"]


def test_header_checks_happen_before_the_body_arrives() -> None:
    with pytest.raises(FrameError, match="bad magic"):
        FrameDecoder().feed(b"HTTP" + bytes(8))
    with pytest.raises(FrameError, match="exceeds the limit of 1024"):
        FrameDecoder(max_body=1024).feed(HEADER.pack(b"PRPC", 2**31, 10))
    with pytest.raises(FrameError, match="meta size 20 exceeds body size 10"):
        FrameDecoder().feed(HEADER.pack(b"PRPC", 10, 20))
    with pytest.raises(FrameError, match="RpcMeta does not parse"):
        FrameDecoder().feed(HEADER.pack(b"PRPC", 4, 4) + b"\xff\xff\xff\xff")


def test_unknown_meta_fields_are_ignored() -> None:
    meta_bytes = request_meta(9).SerializeToString() + b"\xa8\x06\x01"  # field 101, varint 1: unknown to us
    data = HEADER.pack(b"PRPC", len(meta_bytes) + 2, len(meta_bytes)) + meta_bytes + b"ok"
    (frame,) = FrameDecoder().feed(data)
    assert frame.meta.correlation_id == 9 and frame.payload == b"ok"


def test_compression_round_trips_and_is_bounded() -> None:
    payload = b"x" * 10_000
    for kind in (CompressType.NONE, CompressType.GZIP, CompressType.ZLIB):
        assert decompress(compress(payload, kind), kind, 10_000) == payload
    assert decompress(gzip.compress(payload), CompressType.GZIP, 10_000) == payload
    with pytest.raises(PayloadError, match="exceeds 9999 bytes"):
        decompress(zlib.compress(payload), CompressType.ZLIB, 9_999)
    with pytest.raises(PayloadError, match="compress_type snappy is not supported; use none, gzip or zlib"):
        decompress(payload, CompressType.SNAPPY, 10_000)
    with pytest.raises(PayloadError, match="does not decompress"):
        decompress(b"not gzip", CompressType.GZIP, 10_000)
