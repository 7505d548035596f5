"""A small Prometheus registry: counters, gauges and histograms with labels, rendered as text format 0.0.4."""

import os
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, object]) -> Labels:
    return tuple(sorted((key, str(value)) for key, value in labels.items()))


def _render_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    return "{" + ",".join(f'{key}="{value}"' for key, value in items) + "}" if items else ""


class Counter:
    """Monotonic totals by label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help, self._values, self._lock = name, help_text, {}, threading.Lock()

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add to one label set's total."""
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def samples(self) -> list[str]:
        """Text-format lines."""
        with self._lock:
            return [f"{self.name}{_render_labels(key)} {value:g}" for key, value in sorted(self._values.items())]


class Gauge(Counter):
    """A value that goes up and down, or is read from a callback at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text)
        self._read = read

    def samples(self) -> list[str]:
        """Text-format lines; a callback gauge is read now."""
        if self._read is not None:
            return [f"{self.name} {self._read():g}"]
        return super().samples()


class Histogram:
    """Cumulative buckets, sum and count by label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self._series: dict[Labels, list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: object) -> None:
        """Count one observation."""
        key = _labels(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    series[index] += 1
            series[-2] += value
            series[-1] += 1

    def samples(self) -> list[str]:
        """Text-format lines: _bucket (with +Inf), _sum, _count."""
        lines = []
        with self._lock:
            for key, series in sorted(self._series.items()):
                for bound, count in zip(self.buckets, series, strict=False):
                    lines.append(f"{self.name}_bucket{_render_labels(key, (('le', f'{bound:g}'),))} {count:g}")
                lines.append(f"{self.name}_bucket{_render_labels(key, (('le', '+Inf'),))} {series[-1]:g}")
                lines.append(f"{self.name}_sum{_render_labels(key)} {series[-2]:g}")
                lines.append(f"{self.name}_count{_render_labels(key)} {series[-1]:g}")
        return lines


def resident_bytes() -> float:
    """This process's RSS from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as handle:
            return float(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0.0


REQUESTS = Counter("serving_requests_total", "Requests answered, by protocol and err_no.")
LATENCY = Histogram("serving_request_seconds", "End-to-end request latency in the server, by protocol.",
                    LATENCY_BUCKETS)
STAGE = Histogram("serving_stage_seconds", "Time per op stage (preprocess, process, postprocess), by op.",
                  LATENCY_BUCKETS)
BATCH = Histogram("serving_batch_size", "Rows per predictor call, by op.", BATCH_BUCKETS)
INFLIGHT = Gauge("serving_inflight_requests", "Requests being answered now, by protocol.")
QUEUE = Gauge("serving_op_queue_depth", "Requests waiting for a thread of the op, by op.")
RSS = Gauge("process_resident_memory_bytes", "Resident memory of this process.", resident_bytes)
ALL = (REQUESTS, LATENCY, STAGE, BATCH, INFLIGHT, QUEUE, RSS)


def render() -> str:
    """The whole registry in Prometheus text format."""
    lines = []
    for metric in ALL:
        lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}", *metric.samples()]
    return "\n".join(lines) + "\n"
