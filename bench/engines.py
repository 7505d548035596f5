"""`engines`: per model and engine, predict latency at several batch sizes, each (model, engine) in its own process."""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench.models import INT8_MIN_AGREEMENT, WorkerError, ensure_model, gpu_available, input_size, run_worker
from bench.report import engines_markdown, write_outputs
from bench.stats import summarize
from serving.predictor import engine_table


@dataclass(frozen=True)
class Engine:
    """One column of the table: a label and the local_service_conf keys that select the engine."""

    key: str
    label: str
    conf: dict


# The engines `python -m export --measure` times and `engine: auto` chooses among, in the same order.
CPU_ENGINES = tuple(Engine(engine.key, engine.label, engine.conf) for engine in engine_table.CPU_ENGINES)
GPU_ENGINES = tuple(
    Engine(f"tensorrt_{precision}", f"TensorRT {precision.upper()}",
           {"engine": "paddle", "device_type": 2, "devices": "0", "precision": precision, "ir_optim": True})
    for precision in ("fp32", "fp16")
)
NO_GPU_NOTE = ("TensorRT: skipped, no GPU here (paddle.device.is_compiled_with_cuda() is False or no card is "
               "visible); install paddlepaddle-gpu on a CUDA machine to add TensorRT FP32/FP16 columns.")


def measure(model: str, server_dir: Path, engine: Engine, args: argparse.Namespace) -> list[dict]:
    """One worker process for (model, engine): a result row per batch size, or error rows if the worker failed."""
    base = {"model": model, "input": input_size(server_dir), "engine": engine.key}
    spec = {"task": "engine", "server_dir": str(server_dir), "batches": args.batches, "runs": args.runs,
            "warmup": args.warmup,
            "conf": {**engine.conf, "thread_num": args.threads, "max_batch_size": max(args.batches)}}
    try:
        result = run_worker(spec)
    except WorkerError as exc:
        print(f"warning: {model} / {engine.label}: {exc}", file=sys.stderr)
        return [{**base, "batch": batch, "error": str(exc)} for batch in args.batches]
    return [{**base, "batch": batch, **summarize(result["samples_ms"][str(batch)]), "setup_s": result["setup_s"],
             "samples_ms": result["samples_ms"][str(batch)]} for batch in args.batches]


def run_engines(args: argparse.Namespace) -> dict:
    """Export what is missing (INT8 twins too), then time every (model, engine) pair; returns engines.json's report."""
    server_dirs = {model: ensure_model(model, args.models_dir, int8=True) for model in args.models}
    gpu = gpu_available()
    engines = CPU_ENGINES + (GPU_ENGINES if gpu else ())
    pairs = [(model, engine) for model in args.models for engine in engines]
    results: list[dict] = []
    with tqdm(pairs, desc="engines", unit="run", file=sys.stderr) as bar:
        for model, engine in bar:
            bar.set_postfix_str(f"{model} / {engine.label}")
            results += measure(model, server_dirs[model], engine, args)
    return {
        "settings": {"batches": args.batches, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                     "timed": "LocalPredictor.predict (feed checks, copy-in, run, copy-out), random float32 input",
                     "weights": "random-init seed 0 (latency does not depend on the weights' values)",
                     "int8": f"export --int8, calibrated on bench.calibration's generated folder, --min-agreement "
                             f"{INT8_MIN_AGREEMENT:g} (random weights: agreement with FP32 means nothing)"},
        "engines": {engine.key: engine.label for engine in engines},
        "notes": [] if gpu else [NO_GPU_NOTE],
        "results": results,
    }


def write_engines(report: dict, out: Path) -> list[Path]:
    """engines.json + engines.md in `out`."""
    return write_outputs(out, "engines", report, engines_markdown(report))
