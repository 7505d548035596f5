"""Dynamic batching with Paddle Serving's semantics: merge requests up to batch_size within a timeout.

A queue loop takes the first waiting request, fills the batch until `max_requests` requests or
`max_rows` rows or the timeout, drops requests whose deadline passed, runs one predictor call on
the rows concatenated along axis 0, and splits the outputs back by each request's row count.
"""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from serving.errors import ClosedError, DeadlineExceededError, OverloadedError

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class _Item:
    feed: dict[str, np.ndarray]
    deadline: float
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
        self._carry = threading.local()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def predict(self, feed: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        """Queue one request's feed and wait for its share of a merged batch."""
        if self._closing.is_set():
            raise ClosedError("service is stopping")
        item = _Item(feed, deadline)
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
        self._carry.item = None
        while (batch := self._collect()) is not None:
            if self._closing.is_set():
                for item in batch:
                    item.future.set_exception(ClosedError("service is stopping"))
            else:
                self._run(batch)

    def _next(self, timeout: float | None) -> _Item | None:
        carried, self._carry.item = self._carry.item, None
        return carried if carried is not None else self._queue.get(timeout=timeout)

    def _collect(self) -> list[_Item] | None:
        """The first live request, then whatever fits and arrives before the timeout."""
        first = self._next(None)
        if first is None:
            return None
        batch, rows, end = [first], first.rows, time.monotonic() + self.timeout_s
        while len(batch) < self.max_requests:
            try:
                item = self._next(max(end - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            if rows + item.rows > self.max_rows or item.signature() != first.signature():
                self._carry.item = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceededError("request deadline passed while waiting for a batch"))
            else:
                live.append(item)
        if not live:
            return
        try:
            merged = {key: np.concatenate([item.feed[key] for item in live]) for key in live[0].feed}
            outputs = self._predict(merged)
        except Exception as exc:
            for item in live:
                item.future.set_exception(exc)
            return
        start = 0
        for item in live:
            item.future.set_result({key: value[start : start + item.rows] for key, value in outputs.items()})
            start += item.rows
