"""clients.benchmark: Paddle Serving's `paddle_serving_client.utils` with its result shape and report."""

import pytest

from clients.benchmark import MultiThreadRunner, benchmark_args, latency_report


def worker(index: int, resource: str) -> list[list]:
    """A benchmark worker's shape: per-position lists the runner concatenates."""
    return [[index], [f"{resource}{index}", f"{resource}{index}b"]]


def test_the_runner_merges_each_worker_s_lists_position_by_position() -> None:
    assert MultiThreadRunner().run(worker, 3, "w") == [[1, 2, 3], ["w1", "w1b", "w2", "w2b", "w3", "w3b"]]


def test_the_runner_refuses_no_workers() -> None:
    with pytest.raises(ValueError, match="thread_num is 0"):
        MultiThreadRunner().run(worker, 0, "w")


def test_the_latency_report_has_paddle_serving_s_lines() -> None:
    assert latency_report([1.0, 2.0, 3.0, 4.0]).splitlines() == [
        "latency:", "mean: 2.5ms", "median: 2.5ms", "80 percent: 3.4000000000000004ms",
        "90 percent: 3.7ms", "99 percent: 3.9699999999999998ms"]
    assert latency_report([]) == "latency:\nno requests completed\n"


def test_benchmark_flags_and_defaults() -> None:
    args = benchmark_args(["--thread", "4", "--request", "http"])
    assert (args.thread, args.request, args.endpoint, args.batch_size, args.model) == (
        4, "http", "127.0.0.1:9292", 1, "")
