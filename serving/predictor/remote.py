"""Remote ops: the same `predict()` as LocalPredictor, answered by model servers over brpc or gRPC."""

from pathlib import Path

import grpc
import numpy as np

from clients.brpc_client import BrpcError, Client, PredictError
from serving.errors import ErrorCode, ServingError
from serving.model_config import read_config
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.tensors import to_array, to_tensor


class GrpcModelClient:
    """GeneralModelService over gRPC, balanced round-robin over the endpoints."""

    def __init__(self, endpoints: list[str], timeout_s: float, max_message_bytes: int) -> None:
        options = [("grpc.lb_policy_name", "round_robin"), ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel("ipv4:" + ",".join(endpoints), options=options)
        self.stub = gm_grpc.GeneralModelServiceStub(self.channel)
        self.timeout_s = timeout_s

    def call(self, request: gm.Request) -> gm.Response:
        """One inference call; transport failures become err_no 8000."""
        try:
            return self.stub.inference(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ServingError(f"model service unreachable over gRPC: {exc.code().name}: {exc.details()}",
                               code=ErrorCode.RPC) from None


class RemotePredictor:
    """Feeds go out as tensors to `server_endpoints`; outputs come back keyed by fetch alias."""

    def __init__(self, protocol: str, endpoints: list[str], client_config: str, timeout_s: float,
                 max_message_bytes: int) -> None:
        self.model_config = read_config(Path(client_config))
        self.protocol = protocol
        if protocol == "grpc":
            self.grpc = GrpcModelClient(endpoints, timeout_s, max_message_bytes)
        else:
            self.brpc = Client(timeout_ms=int(timeout_s * 1000))
            self.brpc.load_client_config(client_config)
            self.brpc.connect(endpoints)

    @property
    def feed_names(self) -> list[str]:
        """Feed aliases of the client config."""
        return [var.alias_name for var in self.model_config.feed_var]

    @property
    def fetch_aliases(self) -> list[str]:
        """Fetch aliases of the client config."""
        return [var.alias_name for var in self.model_config.fetch_var]

    def predict(self, feed: dict[str, np.ndarray], fetch: list[str] | None = None) -> dict[str, np.ndarray]:
        """Same contract as LocalPredictor.predict; the server's err_no comes back as the same error code."""
        if self.protocol == "grpc":
            return self._predict_grpc(feed, fetch)
        try:
            return self.brpc.predict(feed=feed, fetch=fetch, batch=True)
        except PredictError as exc:
            raise ServingError(exc.err_msg, code=exc.err_no) from None
        except BrpcError as exc:
            raise ServingError(f"model service failed over brpc: {exc}", code=ErrorCode.RPC) from None

    def _predict_grpc(self, feed: dict[str, np.ndarray], fetch: list[str] | None) -> dict[str, np.ndarray]:
        names = {var.alias_name: var.name for var in self.model_config.feed_var}
        tensors = [to_tensor(names.get(alias, alias), alias, value) for alias, value in feed.items()]
        response = self.grpc.call(gm.Request(tensor=tensors, fetch_var_names=fetch or []))
        if response.err_no != 0:
            raise ServingError(response.err_msg, code=response.err_no)
        return {tensor.alias_name: to_array(tensor) for output in response.outputs for tensor in output.tensor}
