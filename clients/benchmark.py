"""Paddle Serving's `paddle_serving_client.utils` for client benchmark scripts: the runner, the flags, the report.

The examples' benchmark.py files call `MultiThreadRunner().run(func, n, resource)` and expect Paddle Serving's
result shape: each worker's `func(i, resource)` returns a list of lists, concatenated position by position.
Like Paddle Serving's, the workers are processes (forked, so functions defined in a script's `__main__` need no
import in the child), so Python's lock does not cap the load a benchmark can offer.
"""

import argparse
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["MultiThreadRunner", "benchmark_args", "show_latency"]


def benchmark_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Paddle Serving's benchmark flags: --thread, --model, --endpoint, --request, --batch_size."""
    parser = argparse.ArgumentParser("benchmark")
    parser.add_argument("--thread", type=int, default=10, help="concurrency (worker processes)")
    parser.add_argument("--model", type=str, default="", help="model for evaluation")
    parser.add_argument("--endpoint", type=str, default="127.0.0.1:9292", help="endpoint of the server")
    parser.add_argument("--request", type=str, default="rpc", help="mode of service (rpc or http)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch size")
    return parser.parse_args(argv)


def latency_report(latencies_ms: Sequence[float]) -> str:
    """Mean, median and the 80th/90th/99th percentiles, one per line, as Paddle Serving prints them."""
    array = np.asarray(latencies_ms, dtype=np.float64)
    if array.size == 0:
        return "latency:\nno requests completed\n"
    lines = [f"mean: {array.mean()}ms", f"median: {np.median(array)}ms"]
    lines += [f"{q} percent: {np.percentile(array, q)}ms" for q in (80, 90, 99)]
    return "latency:\n" + "\n".join(lines) + "\n"


def show_latency(latency_list: Sequence[float]) -> None:
    """Write the latency report to stderr (where Paddle Serving writes it)."""
    sys.stderr.write(latency_report(latency_list))


class MultiThreadRunner:
    """Runs `thread_func(i, global_resource)` in `thread_num` processes and merges their lists of lists."""

    def run(self, thread_func: Callable[[int, Any], list[list]], thread_num: int, global_resource: Any) -> list[list]:
        """Each worker's result[k] is appended to the first worker's result[k]; proxies are cleared as Paddle's."""
        if thread_num < 1:
            raise ValueError(f"thread_num is {thread_num}; run at least one worker")
        os.environ["http_proxy"] = os.environ["https_proxy"] = ""  # benchmarks talk to local servers directly
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with multiprocessing.get_context(method).Pool(thread_num) as pool:
            pending = [pool.apply_async(thread_func, (index + 1, global_resource)) for index in range(thread_num)]
            results = [item.get() for item in pending]
        merged = [list(column) for column in results[0]]
        for result in results[1:]:
            for column, values in zip(merged, result, strict=True):
                column.extend(values)
        return merged
