"""Paddle Serving's `PipelineClient` over gRPC: connect(endpoints), predict(feed_dict, fetch, log_id)."""

from pathlib import Path

import grpc
import numpy as np

from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc

# numpy dtype -> (Tensor.elem_type, proto field) for tensors sent with pack_tensor_format.
_TENSOR_TYPES = {np.dtype(np.int64): (0, "int64_data"), np.dtype(np.float32): (1, "float_data"),
                 np.dtype(np.int32): (2, "int_data"), np.dtype(np.float64): (3, "float64_data"),
                 np.dtype(np.bool_): (9, "bool_data")}


def _tensor(name: str, array: np.ndarray) -> pb.Tensor:
    if array.dtype not in _TENSOR_TYPES:
        raise TypeError(f"feed {name!r}: dtype {array.dtype} is not supported; use one of "
                        f"{sorted(str(dtype) for dtype in _TENSOR_TYPES)}")
    elem_type, field = _TENSOR_TYPES[array.dtype]
    tensor = pb.Tensor(name=name, elem_type=elem_type, shape=list(array.shape))
    getattr(tensor, field).extend(array.ravel().tolist())
    return tensor


class PipelineClient:
    """Unlike Paddle Serving's, it keeps the caller's log id and prints nothing."""

    def __init__(self, timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.PipelineServiceStub | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()

    def connect(self, endpoints: list[str], ca_file: str | None = None, token: str | None = None) -> None:
        """One channel balancing round-robin over `["host:port", ...]`; TLS trusting `ca_file`, `token` as bearer."""
        if not endpoints:
            raise ValueError("connect() needs at least one 'host:port' endpoint")
        options = [("grpc.lb_policy_name", "round_robin"),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes)]
        target = "ipv4:" + ",".join(endpoints)
        if ca_file:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.PipelineServiceStub(self._channel)

    def predict(self, feed_dict: dict[str, object], fetch: list[str] | None = None, log_id: int = 0,
                name: str = "", method: str = "") -> pb.Response:
        """Send str values as key/value and ndarrays as tensors; return the Response, limited to `fetch`."""
        if self._stub is None:
            raise RuntimeError("call connect([...]) before predict()")
        request = pb.Request(logid=log_id, name=name, method=method)
        for key, value in feed_dict.items():
            if isinstance(value, np.ndarray):
                request.tensors.append(_tensor(key, value))
            else:
                request.key.append(key)
                request.value.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        response = self._stub.inference(request, timeout=self.timeout_s, metadata=self._metadata)
        if fetch is None or response.err_no != 0:
            return response
        kept = [(key, value) for key, value in zip(response.key, response.value, strict=True) if key in fetch]
        return pb.Response(err_no=response.err_no, err_msg=response.err_msg, key=[key for key, _ in kept],
                           value=[value for _, value in kept])

    def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
