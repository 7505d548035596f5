"""Remote ops: the same `predict()` as LocalPredictor, answered by model servers over brpc or gRPC."""

import http.client
import ssl
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.context import RequestContext
from serving.endpoints import Endpoint, parse_endpoints
from serving.errors import DeadlineExceededError, ErrorCode, ServingError
from serving.model_config import read_config
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto.general_model_config_pb2 import FeedVar
from serving.protocols.baidu_std import BrpcCode
from serving.protocols.brpc_channel import BrpcError
from serving.protocols.brpc_model_client import Client, PredictError
from serving.protocols.grpc_channels import BalancedChannels
from serving.security import SecurityConfig
from serving.tensors import to_array, to_tensor

PROBE_TIMEOUT_S = 1.0  # a model server slower than this to say it is ready counts as not ready
# gRPC waits up to 120 s between reconnects by default: a model server that comes up would stay unused that long
MAX_RECONNECT_BACKOFF_MS = 1000
MODEL_SERVICE = gm.DESCRIPTOR.services_by_name["GeneralModelService"].full_name  # the name its gRPC health knows


def http_unready(endpoint: Endpoint, context: ssl.SSLContext | None, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """GET /ready on a model server's baidu_std port, which answers HTTP too: None when 200, else why not."""
    address = endpoint.host, endpoint.port
    connection = (http.client.HTTPSConnection(*address, timeout=timeout_s, context=context) if context is not None
                  else http.client.HTTPConnection(*address, timeout=timeout_s))
    try:
        connection.request("GET", "/ready")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"{endpoint}: {exc or type(exc).__name__}"
    finally:
        connection.close()
    return None if status == 200 else f"{endpoint}: GET /ready answered {status}"


class GrpcModelClient:
    """GeneralModelService over gRPC, balanced round-robin over the endpoints and every address of their names."""

    def __init__(self, endpoints: list[str], max_message_bytes: int, security: SecurityConfig) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        credentials = (grpc.ssl_channel_credentials(Path(security.remote_ca_file).read_bytes())
                       if security.remote_ca_file else None)
        self.endpoints = endpoints
        self.channels = BalancedChannels(endpoints, gm_grpc.GeneralModelServiceStub, options, credentials)
        # health over the inference channels: SERVING means the channel that inference takes is connected
        self.health = [health_pb2_grpc.HealthStub(channel) for channel in self.channels.channels]
        token = security.remote_token
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def unready(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """None when some channel's model server says SERVING to gRPC health, else what each one said."""
        reasons = []
        for stub in self.health:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=MODEL_SERVICE), timeout=timeout_s).status
            except grpc.RpcError as exc:
                reasons.append(f"{exc.code().name}: {exc.details()}")
                continue
            if status == health_pb2.HealthCheckResponse.SERVING:
                return None
            reasons.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        return f"{', '.join(self.endpoints)}: {'; '.join(reasons)}"

    def call(self, request: gm.Request, timeout_s: float) -> gm.Response:
        """One inference call; transport failures become err_no 8000, a passed deadline 6000."""
        try:
            return self.channels.call(lambda stub, left_s: stub.inference(request, timeout=left_s,
                                                                          metadata=self.metadata), timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError(f"model service did not answer within {timeout_s * 1000:.0f} ms") from None
            raise ServingError(f"model service unreachable over gRPC: {exc.code().name}: {exc.details()}",
                               code=ErrorCode.RPC) from None

    def close(self) -> None:
        """Close the channels."""
        self.channels.close()


class RemotePredictor:
    """Feeds go out as tensors to `server_endpoints`; outputs come back keyed by fetch alias."""

    def __init__(self, protocol: str, endpoints: list[str], client_config: str, timeout_s: float,
                 max_message_bytes: int, security: SecurityConfig | None = None) -> None:
        security = security or SecurityConfig()
        self.model_config = read_config(Path(client_config))
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.endpoints = endpoints
        self._ssl = ssl.create_default_context(cafile=security.remote_ca_file) if security.remote_ca_file else None
        if protocol == "grpc":
            self.grpc = GrpcModelClient(endpoints, max_message_bytes, security)
        else:
            self.brpc = Client(timeout_ms=int(timeout_s * 1000))
            self.brpc.load_client_config(client_config)
            self.brpc.connect(endpoints, security.remote_ca_file or None, security.remote_token)

    def close(self) -> None:
        """Close the model-server connections (the op stops)."""
        if self.protocol == "grpc":
            self.grpc.close()
        else:
            self.brpc.close()

    def unready(self) -> str | None:
        """None when at least one model server answers ready over the op's protocol, else why none does; readiness
        probes ask it, so a pipeline is not sent traffic that could only fail with err_no 8000."""
        if self.protocol == "grpc":
            return self.grpc.unready()
        reasons = []
        for endpoint in parse_endpoints(self.endpoints):
            reason = http_unready(endpoint, self._ssl)
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(reasons)

    @property
    def feed_vars(self) -> list[FeedVar]:
        """The client config's feed variables (names, aliases, types, shapes)."""
        return list(self.model_config.feed_var)

    @property
    def feed_names(self) -> list[str]:
        """Feed aliases of the client config."""
        return [var.alias_name for var in self.model_config.feed_var]

    @property
    def fetch_aliases(self) -> list[str]:
        """Fetch aliases of the client config."""
        return [var.alias_name for var in self.model_config.fetch_var]

    def predict(self, feed: dict[str, np.ndarray], fetch: list[str] | None = None,
                ctx: RequestContext | None = None) -> dict[str, np.ndarray]:
        """LocalPredictor.predict's contract, within what is left of the request's time.

        The server's err_no comes back as the same error code; the caller's log id travels with the call.
        """
        ctx = ctx or RequestContext()
        timeout_s = min(self.timeout_s, ctx.remaining_s())
        log_id = ctx.log_id
        if timeout_s <= 0:
            raise DeadlineExceededError("the request's deadline passed before the model service was called")
        if self.protocol == "grpc":
            return self._predict_grpc(feed, fetch, timeout_s, log_id)
        try:
            return self.brpc.predict(feed=feed, fetch=fetch, batch=True, log_id=log_id,
                                     timeout_ms=max(int(timeout_s * 1000), 1))
        except PredictError as exc:
            raise ServingError(exc.err_msg, code=exc.err_no) from None
        except BrpcError as exc:
            if exc.code == BrpcCode.ERPCTIMEDOUT:
                raise DeadlineExceededError(f"model service did not answer in time over brpc: {exc}") from None
            raise ServingError(f"model service failed over brpc: {exc}", code=ErrorCode.RPC) from None

    def _predict_grpc(self, feed: dict[str, np.ndarray], fetch: list[str] | None, timeout_s: float,
                      log_id: int) -> dict[str, np.ndarray]:
        names = {var.alias_name: var.name for var in self.model_config.feed_var}
        tensors = [to_tensor(names.get(alias, alias), alias, value) for alias, value in feed.items()]
        response = self.grpc.call(gm.Request(tensor=tensors, fetch_var_names=fetch or [], log_id=log_id), timeout_s)
        if response.err_no != 0:
            raise ServingError(response.err_msg, code=response.err_no)
        return {tensor.alias_name: to_array(tensor) for output in response.outputs for tensor in output.tensor}
