"""`python -m serving.bench engines | ceiling | e2e | all`: the README's performance tables, measured here.

    python -m serving.bench engines [--models ...] [--batches 1 4 8] [--runs 20] [--warmup 5] [--threads 2]
    python -m serving.bench ceiling [--model SqueezeNet1_1] [--engine auto] [--workers 2] [--seconds 5]
    python -m serving.bench e2e [--protocols http grpc brpc] [--targets pipeline model_server]
                                [--concurrency 1 2 4 8 16] [--seconds 5] [--images 1]
    python -m serving.bench all [every option above]

Results go to --out (default bench/results) as JSON (raw numbers) and Markdown (tables); models are exported
once into --models-dir (default bench/models, git-ignored by a .gitignore the first export writes there).
"""

import argparse
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

from export.errors import ExportError
from serving.bench.ceiling import resolved_budget, run_ceiling, write_ceiling
from serving.bench.e2e import PROTOCOLS, run_e2e, write_e2e
from serving.bench.engines import run_engines, write_engines
from serving.bench.models import DEFAULT_MODELS_DIR, MODEL_NAMES, ROOT, WorkerError, ensure_model
from serving.bench.report import machine_info, readme
from serving.bench.servers import TARGETS, Budget, ServerError
from serving.errors import ServingError

DEFAULT_OUT = ROOT / "bench" / "results"


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
    """Option sets shared between subcommands (`all` takes every one)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    common.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help="exported-model cache, reused when complete")
    common.add_argument("--threads", type=positive, default=2, help="math threads per predictor (thread_num)")
    engines = argparse.ArgumentParser(add_help=False)
    engines.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    engines.add_argument("--batches", nargs="+", type=positive, default=[1, 4, 8])
    engines.add_argument("--runs", type=positive, default=20, help="timed runs per batch size")
    engines.add_argument("--warmup", type=non_negative, default=5, help="untimed runs per batch size")
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--model", choices=MODEL_NAMES, default="SqueezeNet1_1", help="model for ceiling and e2e")
    serving.add_argument("--engine", choices=("auto", "paddle", "onnxruntime"), default="auto",
                         help="engine of the ceiling and the servers (auto: as the servers resolve it)")
    serving.add_argument("--workers", type=positive, default=2,
                         help="concurrent predictions: ceiling threads, op concurrency, model server --thread")
    serving.add_argument("--seconds", type=positive_float, default=5.0, help="measured seconds per ceiling/e2e run")
    e2e = argparse.ArgumentParser(add_help=False)
    e2e.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    e2e.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    e2e.add_argument("--concurrency", nargs="+", type=positive, default=[1, 2, 4, 8, 16])
    e2e.add_argument("--images", type=positive, default=1, help="images per request")
    return {"common": common, "engines": engines, "serving": serving, "e2e": e2e}


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per table, plus `all`."""
    groups = _option_groups()
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    uses = {"engines": ("common", "engines"), "ceiling": ("common", "serving"), "e2e": ("common", "serving", "e2e"),
            "all": ("common", "engines", "serving", "e2e")}
    for name, parents in uses.items():
        commands.add_parser(name, parents=[groups[group] for group in parents],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return parser


def _stamp(report: dict, command: str) -> dict:
    """Every JSON starts with how and where it was measured."""
    return {"command": command, "machine": machine_info(), **report}


def _ceiling(args: argparse.Namespace) -> tuple[dict, Path, Budget]:
    """Export if needed, resolve the engine, measure the ceiling: (ceiling, serving_server folder, budget)."""
    server_dir = ensure_model(args.model, args.models_dir)
    budget = resolved_budget(args.engine, args.workers, args.threads, server_dir)
    print(f"ceiling: {args.model} on {budget.engine}, {budget.workers} workers × {budget.threads} threads, "
          f"{args.seconds} s ...", file=sys.stderr)
    ceiling = run_ceiling(args.model, server_dir, budget, args.seconds)
    print(f"ceiling: {ceiling['images_per_s']:.1f} images/s, p50 preprocess {ceiling['preprocess']['median_ms']:.2f} ms"
          f", predict {ceiling['predict']['median_ms']:.2f} ms, total {ceiling['total']['median_ms']:.2f} ms",
          file=sys.stderr)
    return ceiling, server_dir, budget


def cmd_engines(args: argparse.Namespace, command: str) -> list[Path]:
    """engines.json + engines.md."""
    return write_engines(_stamp(run_engines(args), command), args.out)


def cmd_ceiling(args: argparse.Namespace, command: str) -> list[Path]:
    """ceiling.json + ceiling.md."""
    ceiling, _, _ = _ceiling(args)
    return write_ceiling(_stamp(ceiling, command), args.out)


def cmd_e2e(args: argparse.Namespace, command: str) -> list[Path]:
    """e2e.json + e2e.md (+ plots); the ceiling is measured first, before any server runs."""
    ceiling, server_dir, budget = _ceiling(args)
    return write_e2e(_stamp(run_e2e(args, server_dir, budget, ceiling), command), args.out)


def cmd_all(args: argparse.Namespace, command: str) -> list[Path]:
    """Every table, then README.md with the command line, the machine and all tables."""
    paths = cmd_engines(args, command)
    ceiling, server_dir, budget = _ceiling(args)
    paths += write_ceiling(_stamp(ceiling, command), args.out)
    paths += write_e2e(_stamp(run_e2e(args, server_dir, budget, ceiling), command), args.out)
    sections = [(title, (args.out / f"{name}.md").read_text(encoding="utf-8"))
                for name, title in (("engines", "Engines"), ("ceiling", "In-process ceiling"), ("e2e", "End to end"))]
    readme_path = args.out / "README.md"
    readme_path.write_text(readme(command, machine_info(), sections), encoding="utf-8")
    return [*paths, readme_path]


COMMANDS = {"engines": cmd_engines, "ceiling": cmd_ceiling, "e2e": cmd_e2e, "all": cmd_all}


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the servers."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; failures are one `error:` line and exit code 1, Ctrl-C exits 130 with servers stopped."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "serving.bench", *argv])
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        paths = COMMANDS[args.command](args, command)
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
