"""Paddle Serving's brpc `Client` for GeneralModelService over baidu_std: pooled connections, many calls in flight.

Remote ops use it to call model servers; `clients/brpc_client.py` is its command line.
"""

import asyncio
import concurrent.futures
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from serving.errors import InputError
from serving.model_config import CLIENT_CONF, read_config
from serving.proto.general_model_service_pb2 import Request, Response
from serving.protocols.baidu_std import DEFAULT_MAX_BODY, CompressType
from serving.protocols.brpc_channel import BrpcError, ClientCode, Connection
from serving.tensors import DTYPE_OF, TensorValue, to_array, to_tensor

DEFAULT_ENDPOINT = "127.0.0.1:9292"
COMPRESSIONS = {"none": CompressType.NONE, "gzip": CompressType.GZIP, "zlib": CompressType.ZLIB}


class PredictError(Exception):
    """The server ran the call but answered err_no != 0 (Paddle Serving's model-level error)."""

    def __init__(self, err_no: int, err_msg: str) -> None:
        super().__init__(f"err_no {err_no}: {err_msg}")
        self.err_no = err_no
        self.err_msg = err_msg


class _Slot:
    """One pooled connection to an endpoint, (re)opened on demand."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None, token: bytes = b"") -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.token = token
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()

    async def get(self, timeout_s: float, max_body: int) -> Connection:
        """The live connection, reopened if the server closed it."""
        async with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = await Connection.open(self.host, self.port, timeout_s, max_body, self.ssl_context,
                                                         self.token)
            return self._connection

    async def close(self) -> None:
        """Close the connection, if one is open."""
        if self._connection is not None:
            await self._connection.close()


class _LoopThread:
    """A private event loop in a daemon thread, so the sync API works from scripts and from many threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="brpc-client", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run a coroutine on the private loop, from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not 'host:port'")
    return host.strip("[]"), int(port)


def _feed_array(array: np.ndarray, var: Any, batch: bool) -> np.ndarray:
    """Cast to the config's numeric feed_type, as Paddle Serving does; batch=False adds the batch dimension."""
    dtype = DTYPE_OF.get(var.feed_type) if var is not None and array.dtype.kind not in "US" else None
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array if batch else array[np.newaxis]


class Client:
    """Paddle Serving's brpc Client: prints nothing, keeps the caller's log_id, raises typed errors."""

    def __init__(self, timeout_ms: int = 20000, pool_size: int = 2, compress: str = "none",
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.timeout_ms = timeout_ms
        self.pool_size = pool_size
        if compress not in COMPRESSIONS:
            raise ValueError(f"compress {compress!r}: use one of {sorted(COMPRESSIONS)}")
        self.compress_type = COMPRESSIONS[compress]
        self.max_body = max_body
        self._feeds: dict[str, Any] = {}
        self._fetches: dict[str, Any] = {}
        self._slots: list[_Slot] = []
        self._endpoint_count = 0
        self._next = 0
        self._loop: _LoopThread | None = None

    def load_client_config(self, path: str | Path) -> None:
        """Read serving_client_conf.prototxt (or the folder holding it): feed/fetch aliases, types, shapes."""
        path = Path(path)
        config = read_config(path / CLIENT_CONF if path.is_dir() else path)
        self._feeds = {var.alias_name or var.name: var for var in config.feed_var}
        self._fetches = {var.alias_name or var.name: var for var in config.fetch_var}

    def get_feed_names(self) -> list[str]:
        """Feed aliases from the client config, in order."""
        return list(self._feeds)

    def get_fetch_names(self) -> list[str]:
        """Fetch aliases from the client config, in order."""
        return list(self._fetches)

    def set_rpc_timeout_ms(self, timeout_ms: int) -> None:
        """Per-request timeout, also sent to the server as RpcRequestMeta.timeout_ms."""
        self.timeout_ms = timeout_ms

    def connect(self, endpoints: list[str], ca_file: str | None = None, token: str | None = None) -> None:
        """Round-robin over `["host:port", ...]`, `pool_size` lazy connections each; TLS trusting `ca_file`; `token`."""
        if not endpoints:
            raise ValueError("connect() needs at least one 'host:port' endpoint")
        addresses = [parse_endpoint(endpoint) for endpoint in endpoints]
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.close()
        self._slots = [_Slot(host, port, context, (token or "").encode()) for _ in range(self.pool_size)
                       for host, port in addresses]
        self._endpoint_count = len(addresses)
        self._loop = _LoopThread()

    def predict(self, feed: dict[str, TensorValue], fetch: list[str] | None = None, batch: bool = False,
                log_id: int = 0, timeout_ms: int | None = None) -> dict[str, np.ndarray]:
        """Blocking call from any thread: {fetch alias: array}; `timeout_ms` overrides the client's for this call."""
        payload = self._request(feed, fetch, batch, log_id)
        return self._outputs(self._submit(payload, log_id, timeout_ms).result(), fetch)

    async def predict_async(self, feed: dict[str, TensorValue], fetch: list[str] | None = None, batch: bool = False,
                            log_id: int = 0) -> dict[str, np.ndarray]:
        """predict() for any event loop: the I/O runs on the client's own loop, many calls in flight."""
        payload = self._request(feed, fetch, batch, log_id)
        return self._outputs(await asyncio.wrap_future(self._submit(payload, log_id)), fetch)

    def close(self) -> None:
        """Close every connection and stop the client's loop thread."""
        if self._loop is None:
            return
        self._loop.submit(self._close_slots()).result()
        self._loop.stop()
        self._loop = None
        self._slots = []
        self._endpoint_count = 0

    def __enter__(self) -> "Client":
        """`with Client() as client:` closes the connections and the loop thread on exit."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close on leaving the block."""
        self.close()

    def _request(self, feed: dict[str, TensorValue], fetch: list[str] | None, batch: bool, log_id: int) -> bytes:
        """The serialized Request; feeds are cast to the config's type and get a batch dim unless batch=True."""
        unknown = [alias for alias in (fetch or []) if self._fetches and alias not in self._fetches]
        if unknown:
            raise InputError(f"fetch {unknown} not in the client config; it has {self.get_fetch_names()}")
        request = Request(log_id=log_id, fetch_var_names=fetch or self.get_fetch_names())
        for alias, value in feed.items():
            var = self._feeds.get(alias)
            if self._feeds and var is None:
                raise InputError(f"feed {alias!r} not in the client config; it has {self.get_feed_names()}")
            if isinstance(value, np.ndarray):
                value = _feed_array(value, var, batch)
            request.tensor.append(to_tensor(var.name if var is not None else alias, alias, value))
        return request.SerializeToString()

    def _outputs(self, payload: bytes, fetch: list[str] | None) -> dict[str, np.ndarray]:
        """Response -> {alias: array}, only the fetched ones; err_no != 0 raises PredictError."""
        try:
            response = Response.FromString(payload)
        except DecodeError as exc:
            raise BrpcError(ClientCode.ERESPONSE, f"response does not parse: {exc}") from None
        if response.err_no:
            raise PredictError(response.err_no, response.err_msg)
        aliases = {var.name: alias for alias, var in self._fetches.items()}
        try:
            result = {tensor.alias_name or aliases.get(tensor.name, tensor.name): to_array(tensor)
                      for output in response.outputs for tensor in output.tensor}
        except InputError as exc:
            raise BrpcError(ClientCode.ERESPONSE, f"bad output tensor: {exc}") from None
        return {alias: value for alias, value in result.items() if not fetch or alias in fetch}

    def _submit(self, payload: bytes, log_id: int, timeout_ms: int | None = None) -> concurrent.futures.Future:
        """Start the call on the client's loop."""
        if self._loop is None:
            raise RuntimeError("call connect() before predict()")
        return self._loop.submit(self._call(payload, log_id, timeout_ms or self.timeout_ms))

    async def _call(self, payload: bytes, log_id: int, timeout_ms: int) -> bytes:
        """Next connection round-robin; an endpoint that refuses to connect is skipped (nothing was sent)."""
        timeout_s = timeout_ms / 1000
        for attempt in range(self._endpoint_count):
            slot = self._slots[self._next % len(self._slots)]
            self._next += 1
            try:
                connection = await slot.get(timeout_s, self.max_body)
            except BrpcError:
                if attempt == self._endpoint_count - 1:
                    raise
                continue
            return await connection.call("inference", payload, timeout_s, log_id, self.compress_type)
        raise RuntimeError("the client was closed")

    async def _close_slots(self) -> None:
        """Close all pooled connections on the client's loop."""
        for slot in self._slots:
            await slot.close()
