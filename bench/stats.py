"""Latency statistics from raw samples, computed one way for every table so the columns stay comparable."""

from collections.abc import Sequence

import numpy as np


def percentile(samples: Sequence[float], q: float) -> float | None:
    """numpy's linear-interpolation percentile (q 0..100): a handful of runs still gives a value; None if empty."""
    if len(samples) == 0:
        return None
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """The figures the tables show (median, p90, p99) plus min and mean for the JSON; values in ms."""
    return {
        "count": len(samples_ms),
        "median_ms": percentile(samples_ms, 50),
        "p90_ms": percentile(samples_ms, 90),
        "p99_ms": percentile(samples_ms, 99),
        "min_ms": float(min(samples_ms)) if len(samples_ms) else None,
        "mean_ms": float(np.mean(samples_ms)) if len(samples_ms) else None,
    }


def rate(count: int, seconds: float) -> float:
    """Completions per second over the measured window; 0 for an empty window."""
    return count / seconds if seconds > 0 else 0.0
