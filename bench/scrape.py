"""A server's own view of a load run, from its /metrics: mean request time, per-op stages and batch sizes."""

import urllib.request

Samples = dict[str, float]  # 'name{labels}' -> value


def scrape(endpoint: str) -> Samples:
    """Every sample of GET http://{endpoint}/metrics."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _histogram_mean(before: Samples, after: Samples, metric: str, labels: str) -> float | None:
    """Mean of one histogram over the run, from its sum and count deltas; None when it saw nothing."""
    def delta(part: str) -> float:
        key = f"{metric}_{part}{{{labels}}}"
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta("count")
    return delta("sum") / count if count > 0 else None


def server_means(before: Samples, after: Samples, protocol: str, op: str = "imagenet") -> dict[str, float | None]:
    """Mean ms inside the server: the whole request (as the data plane times it) and each stage of `op`."""
    histograms = {"server": ("serving_request_seconds", f'protocol="{protocol}"')}
    histograms |= {stage: ("serving_stage_seconds", f'op="{op}",stage="{stage}"')
                   for stage in ("queue", "preprocess", "process", "postprocess")}
    means = {name: _histogram_mean(before, after, *histogram) for name, histogram in histograms.items()}
    return {name: None if mean is None else mean * 1000 for name, mean in means.items()}


def mean_batch(before: Samples, after: Samples, op: str = "imagenet") -> float | None:
    """Rows per predictor call over the run: the batches the op really merged."""
    return _histogram_mean(before, after, "serving_batch_size", f'op="{op}"')
