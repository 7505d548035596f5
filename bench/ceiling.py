"""`ceiling`: the most a server could do with its thread budget — decode, preprocess and predict in one process."""

import argparse
from dataclasses import replace
from pathlib import Path

from bench.models import SAMPLE_IMAGE, SAMPLE_IMAGE_NAME, ensure_model, run_worker
from bench.report import ceiling_markdown, write_outputs
from bench.servers import Budget
from bench.stats import rate, summarize
from serving.config import LocalServiceConf
from serving.predictor.settings import engine_of

WARMUP_S = 1.0


def resolved_budget(engine: str, workers: int, threads: int, server_dir: Path, precision: str = "fp32") -> Budget:
    """Resolve `auto` the way the servers will (ONNX Runtime when the export has an ONNX file, always for INT8), so
    tables name it."""
    conf = LocalServiceConf(model_config=str(server_dir), engine=engine, precision=precision)
    return Budget(engine_of(conf, "cpu", "--engine"), workers, threads, precision)


def served_model(model: str, args: argparse.Namespace) -> tuple[Path, Budget]:
    """Export if needed (with the INT8 twin for --precision int8) and resolve the engine: (serving_server, budget)."""
    server_dir = ensure_model(model, args.models_dir, int8=args.precision == "int8")
    return server_dir, resolved_budget(args.engine, args.workers, args.threads, server_dir, args.precision)


def run_ceiling(model: str, server_dir: Path, budget: Budget, seconds: float) -> dict:
    """`budget.workers` threads over a predictor pool of the same size, in a fresh process; p50s and images/s."""
    spec = {"task": "ceiling", "server_dir": str(server_dir), "conf": budget.conf(), "workers": budget.workers,
            "image": str(SAMPLE_IMAGE), "seconds": seconds, "warmup_s": min(WARMUP_S, seconds)}
    raw = run_worker(spec)
    stages = {stage: summarize(raw[f"{stage}_ms"]) for stage in ("preprocess", "predict", "total")}
    return {"model": model, "engine": budget.engine, "precision": budget.precision, "workers": budget.workers,
            "threads": budget.threads, "image": SAMPLE_IMAGE_NAME, "seconds": seconds, "count": raw["count"],
            "wall_s": raw["wall_s"], "images_per_s": rate(raw["count"], raw["wall_s"]), **stages}


def run_ceilings(model: str, server_dir: Path, budget: Budget, seconds: float) -> list[dict]:
    """The servers' budget, then one worker with the same math threads: the baseline of a lone request (c=1)."""
    budgets = [budget] if budget.workers == 1 else [budget, replace(budget, workers=1)]
    return [run_ceiling(model, server_dir, each, seconds) for each in budgets]


def write_ceiling(report: dict, out: Path) -> list[Path]:
    """ceiling.json + ceiling.md in `out`."""
    return write_outputs(out, "ceiling", report, ceiling_markdown(report))
