"""Dynamic batching: requests merge up to the limits within the timeout, split back exactly, expired ones drop."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import Batcher
from serving.context import RequestContext
from serving.errors import ClosedError, DeadlineExceededError


class Model:
    """A real computation whose calls are counted: output row i = 2 * input row i."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.contexts: list[RequestContext] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, feed: dict[str, np.ndarray], ctx: RequestContext) -> dict[str, np.ndarray]:
        with self.lock:
            self.batches.append(len(feed["x"]))
            self.contexts.append(ctx)
        time.sleep(self.delay_s)
        return {"y": feed["x"] * 2, "sum": feed["x"].sum(axis=1)}


def rows(value: float, count: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((count, 3), value, np.float32)}


def far(log_id: int = 0) -> RequestContext:
    return RequestContext(time.monotonic() + 60, log_id, "test")


def test_concurrent_requests_merge_and_split_back() -> None:
    model = Model(delay_s=0.05)
    batcher = Batcher(model, max_requests=4, max_rows=16, timeout_s=0.2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: batcher.predict(rows(i, count=1 + i % 2), far()), range(8)))
    batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1 + i % 2, 3), 2 * i, np.float32))
        np.testing.assert_array_equal(result["sum"], np.full(1 + i % 2, 3 * i, np.float32))
    assert sum(model.batches) == sum(1 + i % 2 for i in range(8))
    assert len(model.batches) < 8, f"expected merged batches, got {model.batches}"


def test_row_limit_and_shape_mismatch_start_a_new_batch() -> None:
    model = Model(delay_s=0.05)
    batcher = Batcher(model, max_requests=8, max_rows=4, timeout_s=0.3)
    feeds = [rows(1, 3), rows(2, 3), {"x": np.ones((1, 5), np.float32)}]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda feed: batcher.predict(feed, far()), feeds))
    batcher.close()
    assert [result["y"].shape for result in results] == [(3, 3), (3, 3), (1, 5)]
    assert max(model.batches) <= 4


def test_single_request_waits_at_most_the_timeout() -> None:
    batcher = Batcher(Model(), max_requests=4, max_rows=16, timeout_s=0.05)
    started = time.monotonic()
    batcher.predict(rows(1), far())
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_expired_requests_are_dropped_not_computed() -> None:
    model = Model()
    batcher = Batcher(model, max_requests=4, max_rows=16, timeout_s=0.01)
    with pytest.raises(DeadlineExceededError, match="deadline passed"):
        batcher.predict(rows(1), RequestContext(time.monotonic() - 1))
    assert model.batches == []
    batcher.close()


def test_merged_call_carries_the_earliest_deadline_and_the_first_log_id() -> None:
    model = Model(delay_s=0.05)
    batcher = Batcher(model, max_requests=3, max_rows=16, timeout_s=0.5)
    soon = RequestContext(time.monotonic() + 30, 7, "test")
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.predict, rows(1), far(log_id=5))
        time.sleep(0.05)
        others = [pool.submit(batcher.predict, rows(2), soon), pool.submit(batcher.predict, rows(3), far(log_id=9))]
        results = [first.result(), *(future.result() for future in others)]
    batcher.close()
    assert model.batches == [3]
    assert model.contexts[0].log_id == 5 and model.contexts[0].deadline == soon.deadline
    assert [float(result["y"][0, 0]) for result in results] == [2.0, 4.0, 6.0]


def test_errors_reach_every_request_of_the_batch() -> None:
    def broken(feed: dict[str, np.ndarray], ctx: RequestContext) -> dict[str, np.ndarray]:
        raise ValueError("engine failed")

    batcher = Batcher(broken, max_requests=4, max_rows=16, timeout_s=0.1)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.predict, rows(i), far()) for i in range(3)]
    for future in futures:
        with pytest.raises(ValueError, match="engine failed"):
            future.result()
    batcher.close()


def test_close_fails_what_is_still_queued() -> None:
    model = Model(delay_s=0.3)
    batcher = Batcher(model, max_requests=1, max_rows=16, timeout_s=0.01, max_queue=8)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.predict, rows(i), far()) for i in range(4)]
        time.sleep(0.1)
        batcher.close()
    outcomes = [future.exception() for future in futures]
    assert any(outcome is None for outcome in outcomes)
    assert any(isinstance(outcome, ClosedError) for outcome in outcomes)
