"""Paddle Serving's `PipelineClient` over gRPC: connect(endpoints), predict(feed_dict, fetch, log_id)."""

import weakref
from pathlib import Path

import grpc
import numpy as np

from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.protocols.grpc_channels import BalancedChannels

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
    """Unlike Paddle Serving's, it keeps the caller's log id, prints nothing, and takes DNS names and IPv6."""

    def __init__(self, timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._channels: BalancedChannels[pb_grpc.PipelineServiceStub] | None = None
        self._finalizer: weakref.finalize | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()

    def connect(self, endpoints: list[str], ca_file: str | None = None, token: str | None = None,
                dns_server: str | None = None) -> None:
        """Round-robin over `["host:port", "[v6]:port", ...]` and every address of each name (gRPC's dns: resolver).

        TLS trusting `ca_file`, `token` as bearer; `dns_server` ("host:port") answers names instead of the system's.
        """
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes()) if ca_file else None
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes)]
        channels = BalancedChannels(endpoints, pb_grpc.PipelineServiceStub, options, credentials, dns_server)
        self.close()
        self._channels = channels
        self._finalizer = weakref.finalize(self, channels.close)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def predict(self, feed_dict: dict[str, object], fetch: list[str] | None = None, log_id: int = 0,
                name: str = "", method: str = "") -> pb.Response:
        """Send str values as key/value and ndarrays as tensors; return the Response, limited to `fetch`."""
        if self._channels is None:
            raise RuntimeError("call connect([...]) before predict()")
        request = pb.Request(logid=log_id, name=name, method=method)
        for key, value in feed_dict.items():
            if isinstance(value, np.ndarray):
                request.tensors.append(_tensor(key, value))
            else:
                request.key.append(key)
                request.value.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        response = self._channels.call(lambda stub, left_s: stub.inference(request, timeout=left_s,
                                                                           metadata=self._metadata), self.timeout_s)
        if fetch is None or response.err_no != 0:
            return response
        kept = [(key, value) for key, value in zip(response.key, response.value, strict=True) if key in fetch]
        return pb.Response(err_no=response.err_no, err_msg=response.err_msg, key=[key for key, _ in kept],
                           value=[value for _, value in kept])

    def close(self) -> None:
        """Close the channels; also done when the client is garbage-collected or the interpreter exits."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = self._channels = None

    def __enter__(self) -> "PipelineClient":
        """`with PipelineClient() as client:` closes the channels on leaving the block."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close on leaving the block."""
        self.close()
