"""The soak test's requests: a good one and every bad input of the pipeline and brpc issues, per protocol.

Each case sends real bytes and returns an outcome: "ok", "expected" (the clear error the kit promises for
that input) or "unexpected: ..." (anything else: a wrong code, a hang, a crash of the connection).
"""

import base64
import http.client
import json
import pickle
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols.baidu_std import MAGIC, FrameDecoder, encode_frame
from serving.tensors import to_tensor

MODEL_SERVICE = "baidu.paddle_serving.predictor.general_model.GeneralModelService"
TIMEOUT_S = 30.0
UNPICKLED = "SOAK: the server unpickled client data"  # printed into a server log only if it ever unpickles


# A complete lossless WebP of 9000 x 9000 = 81 MP in 34 bytes (Pillow, lossless=True, method=0, mode L).
WEBP_BOMB = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0e\x00\x00\x00/'\xe3\xc9\x08\x07\x10\x11\xfd\x0fDD\xff\x03"


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A few hundred bytes whose header claims width × height pixels (the decompression-bomb input)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


class Evil:
    """Unpickling this runs code: the server must never do it."""

    def __reduce__(self) -> tuple:
        return (print, (UNPICKLED,))


@dataclass
class Case:
    """One kind of request: its name and how to send it once."""

    name: str
    send: Callable[[], str]


def expect(condition: bool, detail: object) -> str:
    """The outcome of a bad input: the promised error, or what came instead."""
    return "expected" if condition else f"unexpected: {detail}"


class PipelineHttp:
    """RESTful pipeline calls over one keep-alive connection (reopened after the server closes it)."""

    def __init__(self, port: int, image: bytes) -> None:
        self.port, self.image = port, base64.b64encode(image).decode()
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, path: str = "/imagenet/prediction", headers: dict | None = None) -> tuple[int, dict]:
        """(status, JSON answer); the connection is dropped after any failure or a server-side close."""
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            self.connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
            answer = self.connection.getresponse()
            data = answer.read()
            if answer.will_close:
                self.close()
            return answer.status, json.loads(data)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Forget the connection."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def pairs(self, keys: list[str], values: list[str], **headers: str) -> tuple[int, dict]:
        """A key/value request."""
        return self.post(json.dumps({"key": keys, "value": values}).encode(), headers=headers)

    def good(self) -> str:
        """One image; the answer must carry a label."""
        status, answer = self.pairs(["image"], [self.image])
        return "ok" if status == 200 and answer["err_no"] == 0 and "label" in answer["key"] else f"unexpected: {answer}"

    def cases(self) -> list[Case]:
        """Issue 3's bad inputs, plus the limits of issue 6."""
        def err(code: int, call: Callable[[], tuple[int, dict]], status: int = 200) -> Callable[[], str]:
            def run() -> str:
                got_status, answer = call()
                return expect(got_status == status and answer["err_no"] == code, (got_status, answer))
            return run

        bomb = base64.b64encode(png_bomb()).decode()
        webp = base64.b64encode(WEBP_BOMB).decode()
        truncated = base64.b64encode(base64.b64decode(self.image)[:3000]).decode()
        return [
            Case("http: body not JSON", err(5000, lambda: self.post(b"{not json"), 400)),
            Case("http: key/value lengths differ", err(5000, lambda: self.pairs(["image", "x"], [self.image]))),
            Case("http: no image key", err(5000, lambda: self.pairs(["picture"], [self.image]))),
            Case("http: value not base64", err(5000, lambda: self.pairs(["image"], ["%%%not base64%%%"]))),
            Case("http: base64 of non-image bytes", err(5000, lambda: self.pairs(["image"], ["aGVsbG8gd29ybGQ="]))),
            Case("http: truncated JPEG", err(5000, lambda: self.pairs(["image"], [truncated]))),
            Case("http: empty value", err(5000, lambda: self.pairs(["image"], [""]))),
            Case("http: 20000x20000 PNG bomb", err(5000, lambda: self.pairs(["image"], [bomb]))),
            Case("http: 34-byte 81 MP WebP bomb", err(5000, lambda: self.pairs(["image"], [webp]))),
            Case("http: 65 images (limit 64)", err(5000, lambda: self.pairs([f"image_{i}" for i in range(65)],
                                                                              ["AAAA"] * 65))),
            Case("http: unknown service", err(3002, lambda: self.post(b'{"key": [], "value": []}',
                                                                      "/resnet/prediction"))),
            Case("http: bad X-Request-Timeout-Ms", err(5000, lambda: self.pairs(["image"], [self.image],
                                                                                **{"X-Request-Timeout-Ms": "soon"}))),
            Case("http: Content-Length claims 1 TB", self.huge_content_length),
        ]

    def huge_content_length(self) -> str:
        """A body that claims a terabyte: answered at once from the header, nothing read or allocated."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"POST /imagenet/prediction HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{")
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return expect(body["err_no"] == 5000 and "max_body_bytes" in body["err_msg"], body)


class PipelineGrpc:
    """gRPC PipelineService calls on one channel."""

    def __init__(self, port: int, image: bytes) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.PipelineServiceStub(self.channel)
        self.image = base64.b64encode(image).decode()

    def call(self, request: pb.Request, timeout: float = TIMEOUT_S) -> pb.Response:
        """One unary call."""
        return self.stub.inference(request, timeout=timeout)

    def good(self) -> str:
        """One image; the answer must carry a label."""
        reply = self.call(pb.Request(key=["image"], value=[self.image], name="imagenet"))
        return "ok" if reply.err_no == 0 and "label" in reply.key else f"unexpected: {reply.err_no} {reply.err_msg}"

    def cases(self) -> list[Case]:
        """Bad inputs over gRPC, the pickled byte_data among them."""
        def err(code: int, request: pb.Request) -> Callable[[], str]:
            def run() -> str:
                reply = self.call(request)
                return expect(reply.err_no == code, f"{reply.err_no} {reply.err_msg}")
            return run

        evil = pb.Tensor(name="image", elem_type=13, byte_data=pickle.dumps(Evil()))
        return [
            Case("grpc: key/value lengths differ", err(5000, pb.Request(key=["image", "x"], value=[self.image]))),
            Case("grpc: value not base64", err(5000, pb.Request(key=["image"], value=["@@"]))),
            Case("grpc: unknown service", err(3002, pb.Request(key=["image"], value=[self.image], name="resnet"))),
            Case("grpc: pickled byte_data tensor", err(5000, pb.Request(tensors=[evil]))),
            Case("grpc: 1 ms deadline", self.tiny_deadline),
        ]

    def tiny_deadline(self) -> str:
        """A deadline too short to meet: 6000 from the server or DEADLINE_EXCEEDED, never a late answer."""
        try:
            reply = self.call(pb.Request(key=["image"], value=[self.image]), timeout=0.001)
        except grpc.RpcError as exc:
            return expect(exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc.code())
        return expect(reply.err_no == 6000, f"{reply.err_no} {reply.err_msg}")


class ModelServerBrpc:
    """baidu_std GeneralModelService calls, each on its own raw connection so broken frames stay contained."""

    def __init__(self, port: int, image: bytes) -> None:
        self.port, self.image = port, image

    def exchange(self, frame: bytes) -> tuple[RpcMeta, gm.Response] | None:
        """Send one frame; the answer, or None when the server closed the connection."""
        decoder = FrameDecoder()
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(frame)
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    return None
                frames = decoder.feed(data)
                if frames:
                    return frames[0].meta, gm.Response.FromString(frames[0].payload)

    def closes(self, data: bytes) -> bool:
        """Send broken bytes: the server must close the connection (an HTTP 400 first is fine: not PRPC may be HTTP)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                if chunk.startswith(MAGIC):
                    return False
            return True

    def frame(self, request: gm.Request | bytes, service: str = MODEL_SERVICE, method: str = "inference") -> bytes:
        """A baidu_std request frame."""
        meta = RpcMeta(correlation_id=1)
        meta.request.service_name, meta.request.method_name = service, method
        return encode_frame(meta, request if isinstance(request, bytes) else request.SerializeToString())

    def images(self, fetch: str = "prediction") -> gm.Request:
        """One image file as the image feed."""
        return gm.Request(tensor=[to_tensor("x", "image", [self.image])], fetch_var_names=[fetch])

    def good(self) -> str:
        """One image; the answer must carry the prediction."""
        answer = self.exchange(self.frame(self.images()))
        ok = answer is not None and answer[0].response.error_code == 0 and answer[1].err_no == 0
        return "ok" if ok else f"unexpected: {answer}"

    def cases(self) -> list[Case]:
        """Issue 4's bad inputs on the brpc port."""
        def code(expected: int, frame: bytes) -> Callable[[], str]:
            def run() -> str:
                answer = self.exchange(frame)
                return expect(answer is not None and answer[0].response.error_code == expected, answer)
            return run

        def err_no(request: gm.Request) -> Callable[[], str]:
            def run() -> str:
                answer = self.exchange(self.frame(request))
                return expect(answer is not None and answer[1].err_no == 5000, answer)
            return run

        def closed(frame: bytes) -> Callable[[], str]:
            return lambda: expect(self.closes(frame), "the connection stayed open after a broken frame")

        wrong_shape = gm.Request(tensor=[to_tensor("x", "x", np.zeros((1, 3, 7, 7), np.float32))])
        return [
            Case("brpc: wrong magic", closed(b"XRPC" + b"\0" * 8 + b"\r\n\r\n")),
            Case("brpc: body size above the maximum", closed(MAGIC + struct.pack(">II", 2**31, 10))),
            Case("brpc: meta size above body size", closed(MAGIC + struct.pack(">II", 4, 100) + b"\0" * 4)),
            Case("brpc: meta does not parse", closed(MAGIC + struct.pack(">II", 4, 4) + b"\xff\xff\xff\xff")),
            Case("brpc: unknown service", code(1001, self.frame(self.images(), service="EchoService"))),
            Case("brpc: unknown method", code(1002, self.frame(self.images(), method="train"))),
            Case("brpc: payload does not parse", code(1003, self.frame(b"\xff\xff\xff"))),
            Case("brpc: feed of the wrong shape", err_no(wrong_shape)),
            Case("brpc: unknown fetch name", err_no(self.images(fetch="embedding"))),
            Case("brpc: tensor naming no feed", err_no(gm.Request(tensor=[to_tensor(
                "nosuch_feed", "nosuch_feed", np.zeros((1, 3, 224, 224), np.float32))]))),
            Case("brpc: 34-byte 81 MP WebP bomb", err_no(gm.Request(tensor=[to_tensor("x", "image", [WEBP_BOMB])]))),
        ]


class ModelServerGrpc:
    """gRPC GeneralModelService on the model server's gRPC port."""

    def __init__(self, port: int, image: bytes) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = gm_grpc.GeneralModelServiceStub(self.channel)
        self.image = image

    def good(self) -> str:
        """One image file; the answer must carry the prediction."""
        request = gm.Request(tensor=[to_tensor("x", "image", [self.image])], fetch_var_names=["prediction"])
        reply = self.stub.inference(request, timeout=TIMEOUT_S)
        return "ok" if reply.err_no == 0 and reply.outputs else f"unexpected: {reply.err_no} {reply.err_msg}"

    def cases(self) -> list[Case]:
        """A feed name the model lacks."""
        def unknown_feed() -> str:
            request = gm.Request(tensor=[to_tensor("nope", "nope", np.array([1.0, 2.0], np.float32))])
            reply = self.stub.inference(request, timeout=TIMEOUT_S)
            return expect(reply.err_no == 5000, f"{reply.err_no} {reply.err_msg}")

        return [Case("model grpc: unknown feed", unknown_feed)]
