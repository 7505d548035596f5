"""Dynamic batching with Paddle Serving's semantics: merge requests up to batch_size within a timeout.

A queue loop takes the first waiting request, fills the batch until `max_requests` requests or
`max_rows` rows or the timeout, drops requests whose deadline passed, runs one predictor call on
the rows concatenated along axis 0, and splits the outputs back by each request's row count.
The merged call carries the earliest member's deadline and the first member's log id; each member's
own context stays with its caller.
"""

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from serving.context import RequestContext
from serving.errors import ClosedError, DeadlineExceededError, OverloadedError

Predict = Callable[[dict[str, np.ndarray], RequestContext], dict[str, np.ndarray]]


@dataclass
class _Item:
    feed: dict[str, np.ndarray]
    ctx: RequestContext
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(next(iter(self.feed.values())))

    def signature(self) -> tuple:
        """Requests merge only when their feeds have the same names, dtypes and non-batch shapes."""
        return tuple((key, value.dtype.str, value.shape[1:]) for key, value in sorted(self.feed.items()))


class Batcher:
    """`workers` queue loops feeding one predictor; `predict()` blocks the caller until its rows are done."""

    def __init__(self, predict: Predict, max_requests: int, max_rows: int, timeout_s: float, workers: int = 1,
                 max_queue: int = 1024) -> None:
        self._predict = predict
        self.max_requests, self.max_rows, self.timeout_s = max_requests, max_rows, timeout_s
        self._queue: queue.Queue[_Item | None] = queue.Queue(max_queue)
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def predict(self, feed: dict[str, np.ndarray], ctx: RequestContext) -> dict[str, np.ndarray]:
        """Queue one request's feed and wait for its share of a merged batch."""
        if self._closing.is_set():
            raise ClosedError("service is stopping")
        item = _Item(feed, ctx)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise OverloadedError(f"batching queue is full ({self._queue.maxsize} requests waiting; "
                                  "limits.max_queue)") from None
        return item.future.result()

    def close(self) -> None:
        """Finish the batches now running; requests still queued get ClosedError."""
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        carried: _Item | None = None  # a request that did not fit the last batch starts the next one
        while True:
            batch, carried = self._collect(carried)
            if batch is None:
                return
            if self._closing.is_set():
                for item in batch:
                    item.future.set_exception(ClosedError("service is stopping"))
            else:
                self._run(batch)

    def _collect(self, carried: _Item | None) -> tuple[list[_Item] | None, _Item | None]:
        """The first live request, then whatever fits and arrives before the timeout; and what did not fit."""
        first = carried if carried is not None else self._queue.get()
        if first is None:
            return None, None
        batch, rows, end = [first], first.rows, time.monotonic() + self.timeout_s
        while len(batch) < self.max_requests:
            try:
                item = self._queue.get(timeout=max(end - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            if rows + item.rows > self.max_rows or item.signature() != first.signature():
                return batch, item
            batch.append(item)
            rows += item.rows
        return batch, None

    def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.ctx.deadline <= now:
                item.future.set_exception(DeadlineExceededError("request deadline passed while waiting for a batch"))
            else:
                live.append(item)
        if not live:
            return
        try:
            merged = {key: np.concatenate([item.feed[key] for item in live]) for key in live[0].feed}
            deadline = min(item.ctx.deadline for item in live)
            outputs = self._predict(merged, dataclasses.replace(live[0].ctx, deadline=deadline))
        except Exception as exc:
            for item in live:
                item.future.set_exception(exc)
            return
        start = 0
        for item in live:
            item.future.set_result({key: value[start : start + item.rows] for key, value in outputs.items()})
            start += item.rows
