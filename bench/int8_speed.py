"""`python -m bench.int8_speed`: FP32 vs INT8 ONNX Runtime latency, to show whether `--int8` is worth serving."""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from bench.calibration import calibration_folder
from bench.models import add_standalone_options, ensure_model, input_size
from bench.report import write_outputs
from export.int8 import INT8_FILE, METHOD, quantize
from export.onnx_export import ONNX_FILE

COMMAND = "python -m bench.int8_speed"


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session on `threads` intra-op threads, one inter-op thread, as the serving engine builds it."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_pair(server_dir: Path, threads: int, batch: int, runs: int, warmup: int) -> dict:
    """Median ms of FP32 and INT8, their runs interleaved so background load hits both alike."""
    sessions = {"fp32": session(server_dir / ONNX_FILE, threads), "int8": session(server_dir / INT8_FILE, threads)}
    side = input_size(server_dir)
    feed = {sessions["fp32"].get_inputs()[0].name: np.random.default_rng(0).random((batch, 3, side, side), np.float32)}
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(warmup + runs):
        for name, current in sessions.items():
            start = time.perf_counter()
            current.run(None, feed)
            if index >= warmup:
                samples[name].append((time.perf_counter() - start) * 1000)
    fp32, int8 = (float(np.median(samples[name])) for name in ("fp32", "int8"))
    return {"threads": threads, "batch": batch, "fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8}


def markdown(report: dict) -> str:
    """The table committed under bench/results, with the command and settings that produced it."""
    settings = report["settings"]
    lines = [f"FP32 vs INT8 ONNX Runtime latency (`{settings['command']}`): median ms of {settings['runs']} "
             f"interleaved runs after {settings['warmup']} warm-up runs, random float32 input, "
             "`InferenceSession.run` alone. INT8: " + METHOD + ".", "",
             "| Model | threads | bs | FP32 ms | INT8 ms | speed-up |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['threads']} | {row['batch']} | {row['fp32_ms']:.2f} | {row['int8_ms']:.2f} "
              f"| {row['speedup']:.2f}× |" for row in report["results"]]
    lines += ["", "| Model | FP32 file | INT8 file |", "|---|---|---|"]
    lines += [f"| {model} | {sizes['fp32_mb']:.1f} MB | {sizes['int8_mb']:.1f} MB |"
              for model, sizes in report["files"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Export (cached) and quantize each model afresh, so the table measures the current exporter."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    add_standalone_options(parser, ["SqueezeNet1_1", "AlexNet"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch 1 and max_batch_size")
    args = parser.parse_args(argv)
    results, files = [], {}
    with tempfile.TemporaryDirectory(prefix="int8-calib-") as scratch:
        calib = calibration_folder(Path(scratch))
        for model in args.models:
            server_dir = ensure_model(model, args.models_dir)
            print(f"quantizing {model} ...", file=sys.stderr)
            quantize(server_dir, calib, min_agreement=0, force=True)
            files[model] = {f"{name}_mb": (server_dir / file).stat().st_size / 1e6
                            for name, file in (("fp32", ONNX_FILE), ("int8", INT8_FILE))}
            for threads in args.threads:
                for batch in args.batches:
                    results.append({"model": model, **time_pair(server_dir, threads, batch, args.runs, args.warmup)})
                    print(f"{model} threads {threads} bs {batch}: {results[-1]}", file=sys.stderr)
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    report = {"settings": {"command": command, "runs": args.runs, "warmup": args.warmup}, "files": files,
              "results": results}
    for path in write_outputs(args.out, "int8_speed", report, markdown(report)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
