"""The op graph: built from the last op back to the request, run level by level with per-op pools."""

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from serving import metrics
from serving.config import OpConfig, ServiceConfig
from serving.context import RequestContext
from serving.dataplane import PipelineRequest
from serving.errors import (
    ConfigError,
    DeadlineExceededError,
    InputError,
    OverloadedError,
    ProductError,
    ServingError,
    TypeCheckError,
    user_code_error,
)
from serving.pipeline.op import Op, RequestOp, ResponseOp

log = logging.getLogger("serving.pipeline")

# Errors that another attempt cannot fix: the request itself is wrong.
_NOT_RETRIED = (InputError, ProductError, TypeCheckError, OverloadedError)


def _collect(last_ops: list[Op]) -> tuple[RequestOp, list[list[Op]]]:
    """Find every op behind `last_ops` and group them into levels (an op runs after all its inputs)."""
    depth: dict[int, int] = {}
    ops: dict[int, Op] = {}

    def visit(op: Op, path: tuple[int, ...]) -> int:
        if id(op) in path:
            raise ConfigError(f"the op graph has a cycle through op {op.name!r}")
        if id(op) not in depth:
            inputs = [visit(parent, (*path, id(op))) for parent in op.input_ops]
            if not inputs and not isinstance(op, RequestOp):
                raise ConfigError(f"op {op.name!r} has no input_ops; give it input_ops=[read_op]")
            depth[id(op)], ops[id(op)] = (max(inputs) + 1 if inputs else 0), op
        return depth[id(op)]

    for op in last_ops:
        visit(op, ())
    roots = [op for op in ops.values() if isinstance(op, RequestOp)]
    names = [op.name for op in ops.values()]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"two ops are named {duplicate!r}; op names must be unique (they key config.yml op.*)")
    levels = [[op for op in ops.values() if depth[id(op)] == level and not isinstance(op, RequestOp)]
              for level in range(1, max(depth.values()) + 1)]
    return roots[0], levels


class Dag:
    """Runs one request through the ops; each op has its own thread pool, timeout and retry."""

    def __init__(self, last_op: Op | list[Op], config: ServiceConfig) -> None:
        last_ops = last_op if isinstance(last_op, list) else [last_op]
        self.request_op, self.levels = _collect(last_ops)
        self.response_op = ResponseOp(last_ops)
        self.config = config
        self._ids = itertools.count()
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._queued: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def ops(self) -> list[Op]:
        """The user's ops, in execution order."""
        return [op for level in self.levels for op in level]

    def start(self, build_predictor: Callable[[Op], Any]) -> None:
        """Configure each op from config.yml, create predictors, run init_op, start the pools."""
        for op in self.ops:
            op.configure(self.config.op.get(op.name, OpConfig()), self.config.limits)
            op.start(build_predictor)
            self._pools[op.name] = ThreadPoolExecutor(op.threads, thread_name_prefix=f"op-{op.name}")
            self._queued[op.name] = 0

    def waiting_for(self) -> list[str]:
        """Remote ops none of whose model servers answers ready, with why: readiness waits for them."""
        reasons = {op.name: op.predictor.unready() for op in self.ops if op.remote}
        return [f"op {name}: no model server is ready: {reason}" for name, reason in reasons.items() if reason]

    def metadata(self) -> dict[str, dict]:
        """Per op: its model's feeds, fetches and model card facts (GET /metadata)."""
        return {op.name: op.metadata() for op in self.ops}

    def stop(self) -> None:
        """Let running ops finish; accept no more."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for op in self.ops:
            op.stop()

    def run(self, request: PipelineRequest, ctx: RequestContext) -> dict[str, str]:
        """The last op's result for `request`, by the context's deadline (the data plane applied the budget)."""
        data_id = next(self._ids)
        outputs: dict[str, dict] = {self.request_op.name: _request_dict(request)}
        for level in self.levels:
            started = {op: self._submit(op, outputs, data_id, ctx) for op in level}
            for op, future in started.items():
                outputs[op.name] = self._result(op, future, outputs, data_id, ctx)
        final = {op.name: outputs[op.name] for op in self.response_op.input_ops}
        return self.response_op.postprocess(final, {})[0]

    def _submit(self, op: Op, outputs: dict[str, dict], data_id: int, ctx: RequestContext) -> Future:
        """Queue the op for this request, or refuse at once when limits.max_queue requests already wait for it."""
        inputs = {parent.name: outputs[parent.name] for parent in op.input_ops}
        limit = self.config.limits.max_queue
        with self._lock:
            if self._queued[op.name] >= limit:
                raise OverloadedError(f"op {op.name}: {limit} requests already wait for it (limits.max_queue); "
                                      "retry later or on another instance")
            self._queued[op.name] += 1
            metrics.QUEUE.labels(op=op.name).inc()
        return self._pools[op.name].submit(self._started, op, inputs, data_id, ctx, time.perf_counter())

    def _started(self, op: Op, inputs: dict, data_id: int, ctx: RequestContext, queued: float) -> dict:
        """A thread took the request off the op's queue: count it out, time the wait, run the op."""
        with self._lock:
            self._queued[op.name] -= 1
            metrics.QUEUE.labels(op=op.name).dec()
        metrics.STAGE.labels(op=op.name, stage="queue").observe(time.perf_counter() - queued)
        return op.run(inputs, data_id, ctx)

    def _result(self, op: Op, future: Future, outputs: dict, data_id: int, ctx: RequestContext) -> dict:
        """Wait within the op's timeout and the request deadline; retry what another attempt may fix."""
        for attempt in range(1, op.config.retry + 1):
            budget = ctx.remaining_s()
            if op.config.timeout > 0:
                budget = min(budget, op.config.timeout / 1000)
            try:
                return future.result(timeout=max(budget, 0.0))
            except FutureTimeout:
                error: ServingError = DeadlineExceededError(
                    f"op {op.name} timed out after {max(budget, 0.0) * 1000:.0f} ms (attempt {attempt})")
            except _NOT_RETRIED:
                raise
            except Exception as exc:
                error = exc if isinstance(exc, ServingError) else user_code_error(op.name, exc)
                log.warning("logid %s: op %s attempt %d failed: %s", ctx.log_id, op.name, attempt, exc)
            if attempt < op.config.retry and not ctx.expired:
                future = self._submit(op, outputs, data_id, ctx)
        raise error


def _request_dict(request: PipelineRequest) -> dict:
    """Paddle Serving's RequestOp: key -> value, plus decoded tensors by name."""
    if len(request.keys) != len(request.values):
        raise InputError(f"request has {len(request.keys)} keys but {len(request.values)} values; "
                         "key and value must be lists of the same length")
    return {**dict(zip(request.keys, request.values, strict=True)), **request.tensors}
