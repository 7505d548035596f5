"""`python -m bench engines | ceiling | e2e | all | int8-e2e | batching | memory`: docs/performance.md's tables.

    python -m bench engines [--models ...] [--batches 1 4 8] [--runs 20] [--warmup 5] [--threads 2]
    python -m bench ceiling [--model SqueezeNet1_1] [--engine auto] [--workers 2] [--seconds 5]
    python -m bench e2e [--protocols http grpc brpc] [--targets pipeline model_server]
                        [--concurrency 1 2 4 8 16] [--seconds 5] [--images 1]
    python -m bench e2e --targets model_server --input tensor --protocols brpc http oip_json oip_binary oip_grpc
    python -m bench e2e --precision int8   (also ceiling, all, batching, memory: the export's INT8 twin)
    python -m bench int8-e2e [--models SqueezeNet1_1 AlexNet] [--protocol grpc] [--concurrency 8] [--rounds 2]
                             [--seconds 5]
    python -m bench all [every option above]
    python -m bench batching [--models ...] [--protocol http] [--concurrency 8] [--seconds 5]
                             [--min-requests 200] [--batch-size 4] [--batching-timeout-ms 2]
    python -m bench memory [--model SqueezeNet1_1] [--requests 10000] [--warmup-requests 200]
                           [--concurrency 4] [--protocols http grpc] [--checkpoints 10]

Results go to --out (default bench/results) as JSON (raw numbers) and Markdown (tables), and README.md there is
rebuilt from every table in --out after each run; `ceiling` measures the servers' budget and 1 worker, `e2e`
(and `all`) also writes the ceiling and the overhead at concurrency 1 of that same run. Models are exported once
into --models-dir (default bench/models, git-ignored by a .gitignore the first export writes there).
"""

import argparse
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

from bench.batching import run_batching, write_batching
from bench.ceiling import run_ceilings, served_model, write_ceiling
from bench.e2e import (
    INPUTS,
    OIP_PROTOCOLS,
    PROTOCOLS,
    TARGET_PROTOCOLS,
    overhead_report,
    run_e2e,
    write_e2e,
    write_overhead,
)
from bench.engines import run_engines, write_engines
from bench.int8_e2e import run_int8_e2e, write_int8_e2e
from bench.memory import run_memory, write_memory
from bench.models import DEFAULT_MODELS_DIR, DEFAULT_RESULTS_DIR, MODEL_NAMES, WorkerError
from bench.report import machine_info, write_readme
from bench.servers import TARGETS, Budget, ServerError
from export.errors import ExportError
from serving.errors import ServingError


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a duration > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def _option_groups() -> dict[str, argparse.ArgumentParser]:
    """Option sets shared between subcommands (`all` takes those of engines, ceiling and e2e)."""
    groups = {name: argparse.ArgumentParser(add_help=False)
              for name in ("common", "models", "engines", "model", "budget", "precision", "seconds", "images", "e2e",
                           "int8_e2e", "batching", "memory")}
    groups["common"].add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="results folder")
    groups["common"].add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                                  help="exported-model cache, reused when complete")
    groups["common"].add_argument("--threads", type=positive, default=2, help="math threads per predictor (thread_num)")
    groups["models"].add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    groups["engines"].add_argument("--batches", nargs="+", type=positive, default=[1, 4, 8])
    groups["engines"].add_argument("--runs", type=positive, default=20, help="timed runs per batch size")
    groups["engines"].add_argument("--warmup", type=non_negative, default=5, help="untimed runs per batch size")
    groups["model"].add_argument("--model", choices=MODEL_NAMES, default="SqueezeNet1_1",
                                 help="model for ceiling, e2e and memory")
    groups["budget"].add_argument("--engine", choices=("auto", "paddle", "onnxruntime"), default="auto",
                                  help="engine of the ceiling and the servers (auto: as the servers resolve it)")
    groups["budget"].add_argument("--workers", type=positive, default=2,
                                  help="concurrent predictions: ceiling threads, op concurrency, model server --thread")
    groups["precision"].add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                                     help="int8: the servers and the ceiling run the export's INT8 twin on ONNX "
                                          "Runtime (exported with --int8 into the cache when missing)")
    groups["seconds"].add_argument("--seconds", type=positive_float, default=5.0,
                                   help="measured seconds per ceiling/e2e/int8-e2e row (batching: the least per row)")
    groups["images"].add_argument("--images", type=positive, default=1, help="images per request")
    _e2e_options(groups["e2e"])
    _int8_e2e_options(groups["int8_e2e"])
    _batching_options(groups["batching"])
    _memory_options(groups["memory"])
    return groups


def _e2e_options(group: argparse.ArgumentParser) -> None:
    """Which servers, protocols and load levels the e2e table covers."""
    group.add_argument("--protocols", nargs="+", choices=(*PROTOCOLS, *OIP_PROTOCOLS), default=list(PROTOCOLS),
                       help=f"{', '.join(OIP_PROTOCOLS)}: the model server over the Open Inference Protocol "
                            "(needs --input tensor)")
    group.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    group.add_argument("--concurrency", nargs="+", type=positive, default=[1, 2, 4, 8, 16])
    group.add_argument("--input", choices=INPUTS, default="jpeg",
                       help="jpeg: the image file, preprocessed by the server; tensor: the model server's FP32 input, "
                            "preprocessed once by the load generator (model_server only)")


def _int8_e2e_options(group: argparse.ArgumentParser) -> None:
    """The models and the saturating gRPC load of issue 15's INT8-over-FP32 comparison."""
    group.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=["SqueezeNet1_1", "AlexNet"])
    group.add_argument("--protocol", choices=TARGET_PROTOCOLS["pipeline"], default="grpc")
    group.add_argument("--concurrency", type=positive, default=8, help="concurrent clients (saturating)")
    group.add_argument("--rounds", type=positive, default=2,
                       help="rounds of both precisions, alternating which goes first, to cancel drift")


def _batching_options(group: argparse.ArgumentParser) -> None:
    """The saturating load and the op keys of the batching comparison."""
    group.add_argument("--protocol", choices=TARGET_PROTOCOLS["pipeline"], default="http")
    group.add_argument("--concurrency", type=positive, default=8, help="concurrent clients (saturating)")
    group.add_argument("--min-requests", type=positive, default=200,
                       help="each row also runs long enough for this many requests at the warm-up's rate")
    group.add_argument("--batch-size", type=positive, default=4, help="op batch_size when batching is on")
    group.add_argument("--batching-timeout-ms", type=positive, default=2,
                       help="op auto_batching_timeout (ms) when batching is on")


def _memory_options(group: argparse.ArgumentParser) -> None:
    """How many requests, how they are sent, and how often RSS is read."""
    group.add_argument("--requests", type=positive, default=10000, help="requests after warm-up")
    group.add_argument("--warmup-requests", type=positive, default=200, help="requests before the first reading")
    group.add_argument("--concurrency", type=positive, default=4, help="concurrent clients")
    group.add_argument("--protocols", nargs="+", choices=TARGET_PROTOCOLS["pipeline"],
                       default=list(TARGET_PROTOCOLS["pipeline"]), help="requests are split evenly over these")
    group.add_argument("--checkpoints", type=positive, default=10, help="RSS readings after warm-up")


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per table, plus `all`."""
    groups = _option_groups()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = ("common", "model", "budget", "precision", "seconds")
    uses = {"engines": ("common", "models", "engines"), "ceiling": serving, "e2e": (*serving, "images", "e2e"),
            "all": (*serving, "models", "engines", "images", "e2e"),
            "int8-e2e": ("common", "budget", "seconds", "images", "int8_e2e"),
            "batching": ("common", "models", "budget", "precision", "seconds", "images", "batching"),
            "memory": ("common", "model", "budget", "precision", "memory")}
    for name, parents in uses.items():
        commands.add_parser(name, parents=[groups[group] for group in parents],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return parser


def _check_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """OIP rows send the model's tensor, which only the model server takes: say so before anything runs."""
    oip = [protocol for protocol in args.protocols if protocol in OIP_PROTOCOLS]
    if oip and args.input != "tensor":
        parser.error(f"{', '.join(oip)} send the model's FP32 tensor: add --input tensor")
    if args.input == "tensor" and args.targets != ["model_server"]:
        parser.error("--input tensor needs --targets model_server (the pipeline takes image files)")


def _stamp(report: dict, command: str) -> dict:
    """Every JSON starts with how and where it was measured."""
    return {"command": command, "machine": machine_info(), **report}


def _ceilings(args: argparse.Namespace, server_dir: Path, budget: Budget) -> list[dict]:
    """Measure the ceilings (budget, then 1 worker) and say what they were."""
    ceilings = run_ceilings(args.model, server_dir, budget, args.seconds)
    for ceiling in ceilings:
        print(f"ceiling, {ceiling['workers']} worker(s) × {budget.threads} threads on {budget.engine}: "
              f"{ceiling['images_per_s']:.1f} images/s, p50 preprocess {ceiling['preprocess']['median_ms']:.2f} ms, "
              f"predict {ceiling['predict']['median_ms']:.2f} ms, total {ceiling['total']['median_ms']:.2f} ms",
              file=sys.stderr)
    return ceilings


def cmd_engines(args: argparse.Namespace, command: str) -> list[Path]:
    """engines.json + engines.md."""
    return write_engines(_stamp(run_engines(args), command), args.out)


def cmd_ceiling(args: argparse.Namespace, command: str) -> list[Path]:
    """ceiling.json + ceiling.md."""
    return write_ceiling(_stamp({"results": _ceilings(args, *served_model(args.model, args))}, command), args.out)


def cmd_e2e(args: argparse.Namespace, command: str) -> list[Path]:
    """ceiling, e2e (+ plots) and overhead files of one run; the ceilings are measured before each target."""
    server_dir, budget = served_model(args.model, args)
    e2e = _stamp(run_e2e(args, server_dir, budget, lambda: _ceilings(args, server_dir, budget)), command)
    measured = [{**ceiling, "before": target} for target, ceilings in e2e["ceilings"].items() for ceiling in ceilings]
    paths = write_ceiling(_stamp({"results": measured}, command), args.out)
    paths += write_e2e(e2e, args.out)
    overhead = overhead_report(e2e)
    if overhead is None:
        print("note: no overhead table: it needs concurrency 1, 1 image per request and JPEG input", file=sys.stderr)
        return paths
    return paths + write_overhead(_stamp(overhead, command), args.out)


def cmd_all(args: argparse.Namespace, command: str) -> list[Path]:
    """engines, then ceiling, e2e and overhead, all stamped with this one command line."""
    return cmd_engines(args, command) + cmd_e2e(args, command)


def cmd_int8_e2e(args: argparse.Namespace, command: str) -> list[Path]:
    """int8_e2e.json + int8_e2e.md."""
    return write_int8_e2e(_stamp(run_int8_e2e(args), command), args.out)


def cmd_batching(args: argparse.Namespace, command: str) -> list[Path]:
    """batching.json + batching.md."""
    return write_batching(_stamp(run_batching(args), command), args.out)


def cmd_memory(args: argparse.Namespace, command: str) -> list[Path]:
    """memory.json + memory.md."""
    return write_memory(_stamp(run_memory(args), command), args.out)


COMMANDS = {"engines": cmd_engines, "ceiling": cmd_ceiling, "e2e": cmd_e2e, "all": cmd_all, "int8-e2e": cmd_int8_e2e,
            "batching": cmd_batching, "memory": cmd_memory}


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the servers."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; failures are one `error:` line and exit code 1, Ctrl-C exits 130 with servers stopped."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("e2e", "all"):
        _check_input(parser, args)
    command = shlex.join(["python", "-m", "bench", *argv])
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        paths = COMMANDS[args.command](args, command)
        paths.append(write_readme(args.out))
    except (WorkerError, ServerError, ServingError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
