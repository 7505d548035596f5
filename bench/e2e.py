"""`e2e`: the servers under closed-loop load per protocol and concurrency, against the in-process ceiling."""

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from bench.load import LoadResult, Payloads, build_payloads, drive
from bench.models import SAMPLE_IMAGE, SAMPLE_IMAGE_NAME
from bench.plots import write_plots
from bench.report import e2e_markdown, overhead_markdown, write_outputs
from bench.scrape import scrape, server_means
from bench.servers import Budget, running
from bench.stats import rate, summarize

# The Open Inference Protocol's rows (model server, tensor input): REST with JSON data, REST with binary data, gRPC.
OIP_PROTOCOLS = ("oip_json", "oip_binary", "oip_grpc")
# What each server answers: HTTP and gRPC go to the pipeline; brpc, HTTP and OIP to the model server.
TARGET_PROTOCOLS = {"pipeline": ("http", "grpc"), "pipeline_procs": ("http", "grpc"),
                    "model_server": ("brpc", "http", *OIP_PROTOCOLS)}
PROTOCOLS = ("http", "grpc", "brpc")  # the default rows; OIP_PROTOCOLS need --input tensor
INPUTS = ("jpeg", "tensor")
# The data plane's protocol label (serving_request_seconds) of each row's requests.
METRIC_PROTOCOL = {"oip_json": "oip_http", "oip_binary": "oip_http", "oip_grpc": "oip_grpc"}
WARMUP_S = 1.0
# Issue 10's target for p50 at concurrency 1 minus (preprocess + predict), in ms, on every protocol.
OVERHEAD_LIMITS_MS = {"http": 1.0, "grpc": 1.0, "brpc": 1.0}
# Issue 14's target: OIP with binary tensors at least this share of brpc's throughput, tensor input, per concurrency.
OIP_BINARY_MIN_RATIO = 0.9
PLOTS_SKIPPED = "Plots skipped: matplotlib is not installed (it comes with the optional `bench` extra)."


def plan(targets: list[str], protocols: list[str]) -> list[tuple[str, list[str]]]:
    """(target, its protocols that were asked for), in target order; targets with none are left out."""
    pairs = [(target, [p for p in TARGET_PROTOCOLS[target] if p in protocols]) for target in targets]
    return [(target, chosen) for target, chosen in pairs if chosen]


def result_row(where: tuple[str, str, int], result: LoadResult, images: int, ceiling_ips: float) -> dict:
    """One table row: throughput, latency percentiles, errors and the share of the ceiling."""
    target, protocol, concurrency = where
    stats = summarize([latency * 1000 for latency in result.latencies_s])
    requests_per_s = rate(len(result.latencies_s), result.wall_s)
    return {"target": target, "protocol": protocol, "concurrency": concurrency,
            "requests": len(result.latencies_s), "errors": len(result.errors),
            "first_error": result.errors[0] if result.errors else "", "wall_s": result.wall_s,
            "requests_per_s": requests_per_s, "images_per_s": requests_per_s * images,
            "p50_ms": stats["median_ms"], "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
            "mean_ms": stats["mean_ms"],
            "ratio": requests_per_s * images / ceiling_ips if ceiling_ips > 0 else None}


def _measure_protocol(where: tuple[str, str, str, str], payloads: Payloads, args: argparse.Namespace,
                      ceiling_ips: float, bar: tqdm) -> list[dict]:
    """Warm the server over this protocol (untimed), then one row per concurrency level.

    At concurrency 1 the server's /metrics are read before and after, so the row also says where the time went.
    """
    target, protocol, endpoint, metrics_endpoint = where
    bar.set_description(f"{target}/{protocol} warm-up")
    drive(target, protocol, endpoint, payloads, max(args.workers, 2), min(WARMUP_S, args.seconds))
    rows = []
    for concurrency in args.concurrency:
        bar.set_description(f"{target}/{protocol} c={concurrency}")
        before = scrape(metrics_endpoint) if concurrency == 1 else None  # worker processes report their sum
        result = drive(target, protocol, endpoint, payloads, concurrency, args.seconds)
        rows.append(result_row((target, protocol, concurrency), result, args.images, ceiling_ips))
        if before is not None:
            rows[-1]["server_ms"] = server_means(before, scrape(metrics_endpoint),
                                                 METRIC_PROTOCOL.get(protocol, protocol))
        bar.set_postfix_str(f"{rows[-1]['requests_per_s']:.1f} req/s, {rows[-1]['errors']} errors")
        bar.update()
    return rows


def run_e2e(args: argparse.Namespace, server_dir: Path, budget: Budget,
            measure_ceilings: Callable[[], list[dict]]) -> dict:
    """Each target in turn (one server up at a time, so idle servers take no CPU); returns the e2e.json report.

    The ceilings (the budget's, then 1 worker's) are measured again right before each target's server starts:
    this VM's speed drifts over minutes, so each ratio compares with a baseline taken moments before it.
    """
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), args.images, server_dir, tensor=args.input == "tensor")
    steps = plan(args.targets, args.protocols)
    rows: list[dict] = []
    ceilings: dict[str, list[dict]] = {}
    total = sum(len(protocols) for _, protocols in steps) * len(args.concurrency)
    with tqdm(total=total, unit="run", file=sys.stderr) as bar, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for target, protocols in steps:
            bar.set_description(f"ceiling before {target}")
            ceilings[target] = measure_ceilings()
            bar.set_description(f"starting {target}")
            with running(target, server_dir, budget, Path(tmp), max(args.concurrency)) as server:
                for protocol in protocols:
                    where = (target, protocol, server.endpoints[protocol], server.endpoints["http"])
                    rows += _measure_protocol(where, payloads, args, ceilings[target][0]["images_per_s"], bar)
    return {
        "settings": {"model": args.model, "engine": budget.engine, "precision": budget.precision,
                     "workers": budget.workers,
                     "threads": budget.threads, "seconds": args.seconds, "concurrency": args.concurrency,
                     "images_per_request": args.images, "image": SAMPLE_IMAGE_NAME, "input": args.input,
                     "load": "closed loop from one process; HTTP keep-alive and one gRPC channel per worker thread, "
                             "brpc via predict_async on one event loop",
                     "pipeline": f"op concurrency {budget.workers}, thread_num {budget.threads}, precision "
                                 f"{budget.precision}, gRPC worker_num {max(args.concurrency)}",
                     "pipeline_procs": f"build_dag_each_worker: {budget.workers} worker processes sharing the ports, "
                                       f"op concurrency 1, thread_num {budget.threads}, precision {budget.precision}",
                     "model_server": f"--thread {budget.workers} --cpu_threads {budget.threads} --precision "
                                     f"{budget.precision} --use_mkldnn --ir_optim"},
        "ceilings": ceilings,
        "results": rows,
        "oip_binary_vs_brpc": oip_binary_vs_brpc(rows),
    }


def oip_binary_vs_brpc(rows: list[dict]) -> list[dict]:
    """Per concurrency with both rows: OIP binary's throughput over brpc's, against issue 14's target."""
    by_key = {(row["protocol"], row["concurrency"]): row for row in rows if row["target"] == "model_server"}
    pairs = [(by_key[("brpc", level)], row) for (protocol, level), row in by_key.items()
             if protocol == "oip_binary" and ("brpc", level) in by_key]
    return [{"concurrency": oip["concurrency"], "brpc_requests_per_s": brpc["requests_per_s"],
             "oip_binary_requests_per_s": oip["requests_per_s"],
             "ratio": oip["requests_per_s"] / brpc["requests_per_s"] if brpc["requests_per_s"] > 0 else None,
             "min_ratio": OIP_BINARY_MIN_RATIO}
            for brpc, oip in pairs]


def write_e2e(report: dict, out: Path) -> list[Path]:
    """e2e.json + e2e.md, plus the two plots when matplotlib is installed (the md says when they were skipped)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    if plots is None:
        print(f"note: {PLOTS_SKIPPED}", file=sys.stderr)
    extra = f"\n{PLOTS_SKIPPED}\n" if plots is None else "".join(f"\n![{path.stem}]({path.name})\n" for path in plots)
    return write_outputs(out, "e2e", report, e2e_markdown(report) + extra) + (plots or [])


def overhead_row(row: dict, single: dict) -> dict:
    """One concurrency-1 row against the 1-worker ceiling: what serving adds to a lone request's work."""
    preprocess, predict = single["preprocess"]["median_ms"], single["predict"]["median_ms"]
    overhead = None if row["p50_ms"] is None else row["p50_ms"] - preprocess - predict
    limit = OVERHEAD_LIMITS_MS[row["protocol"]]
    return {"target": row["target"], "protocol": row["protocol"], "e2e_p50_ms": row["p50_ms"],
            "preprocess_p50_ms": preprocess, "predict_p50_ms": predict, "overhead_ms": overhead, "limit_ms": limit,
            "met": overhead is not None and overhead <= limit, "e2e_mean_ms": row["mean_ms"],
            "server_ms": row.get("server_ms", {})}


def overhead_report(e2e: dict) -> dict | None:
    """The overhead table from one run's concurrency-1 rows, each against the 1-worker ceiling measured before its
    target; None without such rows, with multi-image requests or tensor input (the server does no preprocess)."""
    rows = [row for row in e2e["results"] if row["concurrency"] == 1]
    if not rows or e2e["settings"]["images_per_request"] != 1 or e2e["settings"].get("input") == "tensor":
        return None
    singles = {target: measured[-1] for target, measured in e2e["ceilings"].items()}
    return {"ceilings": singles, "results": [overhead_row(row, singles[row["target"]]) for row in rows]}


def write_overhead(report: dict, out: Path) -> list[Path]:
    """overhead.json + overhead.md in `out`."""
    return write_outputs(out, "overhead", report, overhead_markdown(report))
