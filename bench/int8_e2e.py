"""`int8-e2e`: each model's saturated pipeline throughput in FP32 and INT8, fresh servers alternating, the ratio."""

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from bench.ceiling import resolved_budget, run_ceiling
from bench.e2e import result_row
from bench.load import Payloads, build_payloads, drive
from bench.models import INT8_MIN_AGREEMENT, SAMPLE_IMAGE, SAMPLE_IMAGE_NAME, ensure_model
from bench.report import int8_e2e_markdown, write_outputs
from bench.servers import Budget, Server, running
from bench.stats import rate
from export.int8 import METHOD

PRECISIONS = ("fp32", "int8")
MIN_RATIO = 1.8  # issue 15: INT8 end-to-end throughput at least 1.8x FP32's at saturation
WARMUP_S = 2.0


def round_order(round_number: int) -> tuple[str, ...]:
    """FP32 first in odd rounds, INT8 first in even ones (ABBA): a drift that is linear in time hits both alike."""
    return PRECISIONS if round_number % 2 else PRECISIONS[::-1]


def model_file(server: Server) -> str:
    """The file the op's engine loaded, from GET /metadata: each row shows which model really served it."""
    with urllib.request.urlopen(f"http://{server.endpoints['http']}/metadata", timeout=10) as response:
        return json.load(response)["ops"]["imagenet"]["model_file"]


def measure(budget: Budget, server_dir: Path, payloads: Payloads, args: argparse.Namespace, workdir: Path) -> dict:
    """A fresh pipeline at this precision: untimed warm-up at full concurrency, then one timed row."""
    with running("pipeline", server_dir, budget, workdir, args.concurrency) as server:
        endpoint = server.endpoints[args.protocol]
        drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, min(WARMUP_S, args.seconds))
        result = drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, args.seconds)
        served = model_file(server)
    row = result_row(("pipeline", args.protocol, args.concurrency), result, args.images, 0.0)
    del row["ratio"]  # no ceiling here: INT8 over FP32 goes to the summary
    return {"engine": budget.engine, "precision": budget.precision, "model_file": served, **row}


def run_model(model: str, args: argparse.Namespace, workdir: Path, bar: tqdm) -> tuple[list[dict], dict]:
    """`args.rounds` rounds of both precisions on the export with its INT8 twin: a row per (round, precision); and
    each precision's in-process ceiling with the same budget, the bound on what serving could reach."""
    server_dir = ensure_model(model, args.models_dir, int8=True)
    budgets = {precision: resolved_budget(args.engine, args.workers, args.threads, server_dir, precision)
               for precision in PRECISIONS}
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), args.images, server_dir)
    bar.set_description(f"{model} in-process ceilings")
    ceilings = {precision: run_ceiling(model, server_dir, budgets[precision], args.seconds) for precision in PRECISIONS}
    rows = []
    for number in range(1, args.rounds + 1):
        for precision in round_order(number):
            bar.set_description(f"{model} {precision} round {number}")
            rows.append({"model": model, "round": number,
                         **measure(budgets[precision], server_dir, payloads, args, workdir)})
            bar.set_postfix_str(f"{rows[-1]['requests_per_s']:.1f} req/s, {rows[-1]['errors']} errors")
            bar.update()
    return rows, ceilings


def int8_summary(rows: list[dict], ceilings: dict[str, dict]) -> list[dict]:
    """Per model: each precision's requests over its rounds' summed wall time, INT8 ÷ FP32, and the target; beside
    it the same ratio in process (decode + preprocess + predict, no serving), the most serving could show."""
    summary = []
    for model in dict.fromkeys(row["model"] for row in rows):
        pooled = {}
        for precision in PRECISIONS:
            mine = [row for row in rows if (row["model"], row["precision"]) == (model, precision)]
            pooled[precision] = rate(sum(row["requests"] for row in mine), sum(row["wall_s"] for row in mine))
        errors = sum(row["errors"] for row in rows if row["model"] == model)
        ratio = pooled["int8"] / pooled["fp32"] if pooled["fp32"] > 0 else None
        ceiling = {precision: ceilings[model][precision]["images_per_s"] for precision in PRECISIONS}
        summary.append({"model": model, "fp32_requests_per_s": pooled["fp32"], "int8_requests_per_s": pooled["int8"],
                        "ceiling_images_per_s": ceiling,
                        "ceiling_ratio": ceiling["int8"] / ceiling["fp32"] if ceiling["fp32"] > 0 else None,
                        "ratio": ratio, "min_ratio": MIN_RATIO, "errors": errors,
                        "met": ratio is not None and ratio >= MIN_RATIO and errors == 0})
    return summary


def run_int8_e2e(args: argparse.Namespace) -> dict:
    """Every model in turn, one server up at a time; returns the int8_e2e.json report."""
    rows: list[dict] = []
    ceilings: dict[str, dict] = {}
    with tqdm(total=len(args.models) * args.rounds * len(PRECISIONS), unit="run", file=sys.stderr) as bar, \
            tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for model in args.models:
            model_rows, ceilings[model] = run_model(model, args, Path(tmp), bar)
            rows += model_rows
    return {
        "settings": {"target": "pipeline", "protocol": args.protocol, "concurrency": args.concurrency,
                     "images_per_request": args.images, "image": SAMPLE_IMAGE_NAME, "seconds": args.seconds,
                     "warmup_s": min(WARMUP_S, args.seconds), "rounds": args.rounds,
                     "order": "FP32 then INT8 in odd rounds, INT8 then FP32 in even ones; a fresh server per row",
                     "workers": args.workers, "threads": args.threads, "min_ratio": MIN_RATIO,
                     "int8": f"export --int8 ({METHOD}), calibrated on bench.calibration's generated folder, "
                             f"--min-agreement {INT8_MIN_AGREEMENT:g} (random weights: agreement means nothing)"},
        "ceilings": ceilings,
        "results": rows,
        "summary": int8_summary(rows, ceilings),
    }


def write_int8_e2e(report: dict, out: Path) -> list[Path]:
    """int8_e2e.json + int8_e2e.md in `out`."""
    return write_outputs(out, "int8_e2e", report, int8_e2e_markdown(report))
