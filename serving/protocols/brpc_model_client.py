"""Paddle Serving's brpc `Client` for GeneralModelService over baidu_std: pooled connections, many calls in flight.

Endpoints may be DNS names: every address of a name gets its own connections (a Kubernetes headless Service
answers one address per pod), and names are resolved again on a timer and after a connection fails.
Remote ops use it to call model servers; `clients/brpc_client.py` is its command line.
"""

import asyncio
import concurrent.futures
import math
import ssl
import threading
import weakref
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from serving.endpoints import RESOLVE_GAP_S, Endpoint, Resolver, parse_endpoints, system_resolver
from serving.errors import InputError
from serving.model_config import CLIENT_CONF, read_config
from serving.proto.general_model_service_pb2 import Request, Response
from serving.protocols.baidu_std import DEFAULT_MAX_BODY, CompressType
from serving.protocols.brpc_channel import BrpcError, ClientCode, Connection
from serving.tensors import DTYPE_OF, TensorValue, to_array, to_tensor

DEFAULT_ENDPOINT = "127.0.0.1:9292"
DEFAULT_REFRESH_S = 30.0  # how often names are resolved again, so new servers behind a name get calls
COMPRESSIONS = {"none": CompressType.NONE, "gzip": CompressType.GZIP, "zlib": CompressType.ZLIB}
# Transport failures after which the name may point elsewhere now.
_GONE = (ClientCode.EFAILEDSOCKET, ClientCode.EEOF)


class PredictError(Exception):
    """The server ran the call but answered err_no != 0 (Paddle Serving's model-level error)."""

    def __init__(self, err_no: int, err_msg: str) -> None:
        super().__init__(f"err_no {err_no}: {err_msg}")
        self.err_no = err_no
        self.err_msg = err_msg


class _Slot:
    """One pooled connection to an address, (re)opened on demand; `server_hostname` is the name TLS checks."""

    def __init__(self, host: str, port: int, server_hostname: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, token: bytes = b"") -> None:
        self.host = host
        self.port = port
        self.server_hostname = server_hostname
        self.ssl_context = ssl_context
        self.token = token
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()

    async def get(self, timeout_s: float, max_body: int) -> Connection:
        """The live connection, reopened if the server closed it."""
        async with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = await Connection.open(self.host, self.port, timeout_s, max_body, self.ssl_context,
                                                         self.token, self.server_hostname)
            return self._connection

    async def close_when_idle(self, grace_s: float) -> None:
        """Close once the calls in flight finished (at most `grace_s`): the address left its name."""
        if self._connection is not None:
            await self._connection.close_when_idle(grace_s)

    async def close(self) -> None:
        """Close the connection, if one is open."""
        if self._connection is not None:
            await self._connection.close()


class _Pool:
    """The connections of one connect(): `pool_size` per address of every endpoint, taken round-robin.

    Names are resolved in the background at connect, every `refresh_s`, and soon after a connection to one of
    their addresses fails; connections to addresses still answered are kept, the others finish their calls and
    close. A failed or empty answer keeps the last one. Only the client's loop touches the pool.
    """

    def __init__(self, endpoints: list[Endpoint], pool_size: int, resolver: Resolver, refresh_s: float,
                 grace_s: float, max_body: int, ssl_context: ssl.SSLContext | None, token: bytes) -> None:
        self.endpoints = endpoints
        self.pool_size = pool_size
        self.resolver = resolver
        self.refresh_s = refresh_s
        self.grace_s = grace_s
        self.max_body = max_body
        self.ssl_context = ssl_context
        self.token = token
        self.names = [endpoint for endpoint in endpoints if endpoint.is_name]
        self._addresses = {endpoint: [] if endpoint.is_name else [endpoint.host] for endpoint in endpoints}
        self._errors: dict[Endpoint, str] = {}
        self._slots: dict[tuple[Endpoint, str], list[_Slot]] = {}
        self._retiring: set[_Slot] = set()
        self._order: list[_Slot] = []
        self._next = 0
        self._resolved_at = -math.inf
        self._resolving = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._first: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None

    async def snapshot(self) -> dict[str, list[str]]:
        """Each endpoint's addresses in use now, read on the pool's loop: {"name:port": ["ip", ...]}."""
        return {str(endpoint): list(addresses) for endpoint, addresses in self._addresses.items()}

    async def start(self) -> None:
        """Use the IP literals at once; resolve names in the background and start the refresh timer."""
        self._apply()
        if self.names:
            self._first = self._refreshing = self._spawn(self.refresh())
            if self.refresh_s > 0:
                self._spawn(self._refresh_every())

    async def refresh(self) -> None:
        """Resolve every name again (getaddrinfo runs off the loop) and rebuild the round-robin order."""
        async with self._resolving:
            loop = asyncio.get_running_loop()
            self._resolved_at = loop.time()
            answers = await asyncio.gather(*(loop.run_in_executor(None, self.resolver, name.host, name.port)
                                             for name in self.names), return_exceptions=True)
            for name, answer in zip(self.names, answers, strict=True):
                if isinstance(answer, Exception):  # a resolver's bug must not stop the timer either
                    self._errors[name] = f"cannot resolve {name}: {answer}"
                elif not answer:
                    self._errors[name] = f"{name} resolved to no address"
                else:
                    self._addresses[name] = list(dict.fromkeys(answer))
                    self._errors.pop(name, None)
            self._apply()

    def refresh_soon(self) -> None:
        """After a failure: resolve names again unless that ran within RESOLVE_GAP_S or is running."""
        if not self.names or (self._refreshing is not None and not self._refreshing.done()):
            return
        if asyncio.get_running_loop().time() - self._resolved_at >= RESOLVE_GAP_S:
            self._refreshing = self._spawn(self.refresh())

    async def call(self, payload: bytes, log_id: int, timeout_s: float, compress_type: int) -> bytes:
        """One inference call on the next connection; EFAILEDSOCKET/EEOF also ask for names to be resolved again."""
        if self._first is not None:
            await asyncio.shield(self._first)
        connection = await self._connection(timeout_s)
        try:
            return await connection.call("inference", payload, timeout_s, log_id, compress_type)
        except BrpcError as exc:
            if exc.code in _GONE:
                self.refresh_soon()
            raise

    async def close(self) -> None:
        """Stop resolving and close every connection, also those still finishing after their address left."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in [*self._retiring, *(slot for group in self._slots.values() for slot in group)]:
            await slot.close()

    async def _connection(self, timeout_s: float) -> Connection:
        """A connection from the next slots in turn, one try per address: one that refuses is skipped."""
        order = self._order
        failure = BrpcError(ClientCode.EFAILEDSOCKET, "no address to call: " + ("; ".join(self._errors.values())
                                                                                or "no endpoint resolved yet"))
        for _ in range(len(order) // self.pool_size):
            slot = order[self._next % len(order)]
            self._next += 1
            try:
                return await slot.get(timeout_s, self.max_body)
            except BrpcError as exc:
                failure = exc
                self.refresh_soon()
        self.refresh_soon()
        raise failure

    def _apply(self) -> None:
        """Slots for every current address (kept where the address stays), in order; dropped ones retire."""
        slots = {}
        for endpoint in self.endpoints:
            hostname = endpoint.host if endpoint.is_name else None
            for address in self._addresses.get(endpoint, []):
                key = (endpoint, address)
                slots[key] = self._slots.get(key) or [_Slot(address, endpoint.port, hostname, self.ssl_context,
                                                            self.token) for _ in range(self.pool_size)]
        for key, group in self._slots.items():
            if key not in slots:
                for slot in group:
                    self._retiring.add(slot)
                    self._spawn(self._retire(slot))
        self._slots = slots
        self._order = [group[index] for index in range(self.pool_size) for group in slots.values()]

    async def _retire(self, slot: _Slot) -> None:
        """Let a dropped address finish its calls, then close its connection."""
        await slot.close_when_idle(self.grace_s)
        self._retiring.discard(slot)

    async def _refresh_every(self) -> None:
        """The refresh timer: new servers behind a name get calls without waiting for a failure."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        """A background task the pool keeps until it ends, so close() can cancel it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _LoopThread:
    """A private event loop in a daemon thread, so the sync API works from scripts and from many threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="brpc-client", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run a coroutine on the private loop, from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def finish(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` (the cleanup), then stop the loop; waits unless called on the loop's own thread (by the GC)."""
        if threading.current_thread() is self._thread:
            self.loop.create_task(coro).add_done_callback(lambda _: self.loop.stop())
            return
        self.submit(coro).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    def _run(self) -> None:
        """The thread: serve the loop until stopped, then close it."""
        self.loop.run_forever()
        self.loop.close()


def _shut_down(loop: _LoopThread, pool: _Pool) -> None:
    """Close the pool and stop its loop: on close(), garbage collection, or interpreter exit (weakref.finalize)."""
    loop.finish(pool.close())


def _feed_array(array: np.ndarray, var: Any, batch: bool) -> np.ndarray:
    """Cast to the config's numeric feed_type, as Paddle Serving does; batch=False adds the batch dimension."""
    dtype = DTYPE_OF.get(var.feed_type) if var is not None and array.dtype.kind not in "US" else None
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array if batch else array[np.newaxis]


class Client:
    """Paddle Serving's brpc Client: prints nothing, keeps the caller's log_id, raises typed errors.

    `resolver(host, port)` returns a name's addresses (default: getaddrinfo, every A and AAAA); names are
    resolved again every `refresh_s` seconds (0: only after failures).
    """

    def __init__(self, timeout_ms: int = 20000, pool_size: int = 2, compress: str = "none",
                 max_body: int = DEFAULT_MAX_BODY, resolver: Resolver = system_resolver,
                 refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.timeout_ms = timeout_ms
        self.pool_size = pool_size
        if compress not in COMPRESSIONS:
            raise ValueError(f"compress {compress!r}: use one of {sorted(COMPRESSIONS)}")
        self.compress_type = COMPRESSIONS[compress]
        self.max_body = max_body
        self.resolver = resolver
        self.refresh_s = refresh_s
        self._feeds: dict[str, Any] = {}
        self._fetches: dict[str, Any] = {}
        self._loop: _LoopThread | None = None
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None

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
        """Round-robin over `["host:port", "[v6]:port", ...]` and every address of each name, `pool_size` lazy
        connections per address; TLS trusting `ca_file` (checked against the name); `token`."""
        parsed = parse_endpoints(endpoints)
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.close()
        loop = _LoopThread()
        pool = _Pool(parsed, self.pool_size, self.resolver, self.refresh_s, self.timeout_ms / 1000, self.max_body,
                     context, (token or "").encode())
        loop.submit(pool.start()).result()
        self._loop, self._pool = loop, pool
        self._finalizer = weakref.finalize(self, _shut_down, loop, pool)

    @property
    def addresses(self) -> dict[str, list[str]]:
        """Each endpoint's addresses in use now: {"name:port": ["ip", ...]}; empty before connect()."""
        if self._loop is None or self._pool is None:
            return {}
        return self._loop.submit(self._pool.snapshot()).result()

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
        """Close every connection and stop the loop thread; also done on garbage collection and interpreter exit."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = self._loop = self._pool = None

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
        if self._loop is None or self._pool is None:
            raise RuntimeError("call connect() before predict()")
        timeout_s = (timeout_ms or self.timeout_ms) / 1000
        return self._loop.submit(self._pool.call(payload, log_id, timeout_s, self.compress_type))
