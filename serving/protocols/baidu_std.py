"""brpc's baidu_std framing: 12-byte header (`PRPC`, body size, meta size), RpcMeta, payload, attachment."""

import asyncio
import gzip
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.message import DecodeError

from serving.errors import BrpcCode, PayloadError
from serving.proto.brpc_meta_pb2 import RpcMeta

__all__ = ["BrpcCode", "CompressType", "Frame", "FrameError", "PayloadError"]

MAGIC = b"PRPC"
HEADER = struct.Struct(">4sII")
DEFAULT_MAX_BODY = 64 * 1024 * 1024


class CompressType(IntEnum):
    """RpcMeta.compress_type."""

    NONE = 0
    SNAPPY = 1
    GZIP = 2
    ZLIB = 3
    LZ4 = 4


class FrameError(Exception):
    """The byte stream is not baidu_std (bad magic, sizes, meta): the connection must be closed."""


@dataclass
class Frame:
    """One decoded message."""

    meta: RpcMeta
    payload: bytes
    attachment: bytes = b""


def encode_frame(meta: RpcMeta, payload: bytes, attachment: bytes = b"") -> bytes:
    """Header + meta + payload + attachment; sets meta.attachment_size."""
    if attachment:
        meta.attachment_size = len(attachment)
    else:
        meta.ClearField("attachment_size")
    meta_bytes = meta.SerializeToString()
    body_size = len(meta_bytes) + len(payload) + len(attachment)
    return HEADER.pack(MAGIC, body_size, len(meta_bytes)) + meta_bytes + payload + attachment


def parse_header(header: bytes, max_body: int) -> tuple[int, int]:
    """(body size, meta size) after checking magic and sizes, before any body byte is read."""
    magic, body_size, meta_size = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}: not baidu_std")
    if body_size > max_body:
        raise FrameError(f"body of {body_size} bytes exceeds the limit of {max_body}")
    if meta_size > body_size:
        raise FrameError(f"meta size {meta_size} exceeds body size {body_size}")
    return body_size, meta_size


def parse_body(body: bytes, meta_size: int) -> Frame:
    """Split a body into meta, payload and attachment."""
    meta = RpcMeta()
    try:
        meta.ParseFromString(body[:meta_size])
    except DecodeError as exc:
        raise FrameError(f"RpcMeta does not parse: {exc}") from None
    attachment_size = meta.attachment_size
    if attachment_size < 0 or attachment_size > len(body) - meta_size:
        raise FrameError(f"attachment size {attachment_size} does not fit the body")
    end = len(body) - attachment_size
    return Frame(meta, body[meta_size:end], body[end:])


class FrameDecoder:
    """Incremental decoder: feed any chunks, get the complete frames (split or coalesced reads)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Append bytes; return every frame now complete."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            body_size, meta_size = parse_header(bytes(self._buffer[: HEADER.size]), self.max_body)
            end = HEADER.size + body_size
            if len(self._buffer) < end:
                break
            frames.append(parse_body(bytes(self._buffer[HEADER.size : end]), meta_size))
            del self._buffer[:end]
        return frames


async def read_frame(reader: asyncio.StreamReader, max_body: int, first: bytes = b"") -> Frame | None:
    """The next frame from a stream, or None at a clean end of stream; `first` = bytes already peeked."""
    try:
        header = first + await reader.readexactly(HEADER.size - len(first))
    except asyncio.IncompleteReadError as exc:
        if not exc.partial and not first:
            return None
        raise FrameError("connection closed inside a frame header") from None
    body_size, meta_size = parse_header(header, max_body)
    try:
        body = await reader.readexactly(body_size)
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed inside a frame body") from None
    return parse_body(body, meta_size)


def decompress(payload: bytes, compress_type: int, max_size: int) -> bytes:
    """Undo RpcMeta.compress_type without inflating past `max_size`."""
    if compress_type == CompressType.NONE:
        return payload
    if compress_type not in (CompressType.GZIP, CompressType.ZLIB):
        names = {kind.value: kind.name.lower() for kind in CompressType}
        name = names.get(compress_type, str(compress_type))
        raise PayloadError(f"compress_type {name} is not supported; use none, gzip or zlib")
    wbits = 16 + zlib.MAX_WBITS if compress_type == CompressType.GZIP else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(payload, max_size + 1)
    except zlib.error as exc:
        raise PayloadError(f"payload does not decompress: {exc}") from None
    if len(data) > max_size or inflater.unconsumed_tail:
        raise PayloadError(f"decompressed payload exceeds {max_size} bytes")
    return data


def compress(payload: bytes, compress_type: int) -> bytes:
    """Compress a response the way its request was (none, gzip or zlib)."""
    if compress_type == CompressType.GZIP:
        return gzip.compress(payload, compresslevel=1)
    if compress_type == CompressType.ZLIB:
        return zlib.compress(payload, 1)
    return payload
