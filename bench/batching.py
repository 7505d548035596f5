"""`batching`: each model's saturated pipeline throughput with dynamic batching on and off, one server at a time."""

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.ceiling import served_model
from bench.e2e import result_row
from bench.load import LoadResult, Payloads, build_payloads, drive
from bench.models import SAMPLE_IMAGE, SAMPLE_IMAGE_NAME
from bench.report import batching_markdown, write_outputs
from bench.scrape import mean_batch, scrape
from bench.servers import Server, running
from bench.stats import rate

WARMUP_S = 2.0
MIN_RATIO = 0.95  # issue 5: batching may not cost more than 5 % of throughput


def run_seconds(warm: LoadResult, seconds: float, min_requests: int) -> float:
    """At least `seconds`, and long enough for `min_requests` at the warm-up's rate (slow models need more time)."""
    warm_rate = rate(len(warm.latencies_s), warm.wall_s)
    return max(seconds, min_requests / warm_rate) if warm_rate > 0 else seconds


def measure(server: Server, payloads: Payloads, args: argparse.Namespace) -> tuple[LoadResult, float | None]:
    """Untimed warm-up at full concurrency, then the timed window: (load result, mean rows per predictor call)."""
    endpoint = server.endpoints[args.protocol]
    warm = drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, WARMUP_S)
    seconds = run_seconds(warm, args.seconds, args.min_requests)
    before = scrape(server.endpoints["http"])
    result = drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, seconds)
    return result, mean_batch(before, scrape(server.endpoints["http"]))


def op_keys(args: argparse.Namespace, batching: bool) -> dict:
    """config.yml op keys that turn Paddle Serving's dynamic batching on (both must be set), or nothing."""
    if not batching:
        return {}
    return {"batch_size": args.batch_size, "auto_batching_timeout": args.batching_timeout_ms}


def run_model(model: str, args: argparse.Namespace, workdir: Path, bar: tqdm) -> list[dict]:
    """Batching off, then on, each in a fresh pipeline: two rows for `model`."""
    server_dir, budget = served_model(model, args)
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), args.images, server_dir)
    rows = []
    for batching in (False, True):
        bar.set_description(f"{model} batching {'on' if batching else 'off'}")
        with running("pipeline", server_dir, budget, workdir, args.concurrency, op_keys(args, batching)) as server:
            result, mean_batch = measure(server, payloads, args)
        row = result_row(("pipeline", args.protocol, args.concurrency), result, args.images, 0.0)
        del row["ratio"]  # no ceiling here: the on/off ratio goes to the summary
        rows.append({"model": model, "engine": budget.engine, "precision": budget.precision, "batching": batching,
                     **row, "mean_batch": mean_batch, **op_keys(args, batching)})
        bar.update()
    return rows


def summarize_models(rows: list[dict]) -> list[dict]:
    """Per model: images/s on ÷ off, and whether it stays within the 5 % the issue allows."""
    by_key = {(row["model"], row["batching"]): row for row in rows}
    summary = []
    for model in dict.fromkeys(row["model"] for row in rows):
        off, on = by_key[(model, False)]["images_per_s"], by_key[(model, True)]["images_per_s"]
        ratio = on / off if off > 0 else None
        summary.append({"model": model, "off_images_per_s": off, "on_images_per_s": on, "ratio": ratio,
                        "met": ratio is not None and ratio >= MIN_RATIO})
    return summary


def run_batching(args: argparse.Namespace) -> dict:
    """Every model off and on, one server up at a time; returns the batching.json report."""
    rows: list[dict] = []
    with tqdm(total=2 * len(args.models), unit="run", file=sys.stderr) as bar, \
            tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for model in args.models:
            rows += run_model(model, args, Path(tmp), bar)
    return {
        "settings": {"protocol": args.protocol, "concurrency": args.concurrency, "images_per_request": args.images,
                     "seconds": args.seconds, "min_requests": args.min_requests, "warmup_s": WARMUP_S,
                     "workers": args.workers, "threads": args.threads, "batch_size": args.batch_size,
                     "auto_batching_timeout_ms": args.batching_timeout_ms, "min_ratio": MIN_RATIO,
                     "image": SAMPLE_IMAGE_NAME},
        "results": rows,
        "summary": summarize_models(rows),
    }


def write_batching(report: dict, out: Path) -> list[Path]:
    """batching.json + batching.md in `out`."""
    return write_outputs(out, "batching", report, batching_markdown(report))
