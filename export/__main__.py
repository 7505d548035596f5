"""`python -m export`: the exporter's command line."""

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Keep Paddle's C++ INFO lines and its import-time ccache warning off the user's terminal.
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

from export import measure as timing  # noqa: E402
from export.errors import ExportError  # noqa: E402

if TYPE_CHECKING:
    from export.exporter import ExportResult

STEPS = 6  # one more with --onnx, another with --int8, another with --measure


class StepPrinter:
    """Numbered step lines on stderr, each closed with its duration: the slow steps show progress."""

    def __init__(self, steps: int) -> None:
        self.started = self.step_started = time.monotonic()
        self.step, self.steps = 0, steps

    def __call__(self, description: str) -> None:
        self.finish()
        self.step += 1
        print(f"[{self.step}/{self.steps}] {description} ...", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """Close the open step line with its duration."""
        now = time.monotonic()
        if self.step:
            print(f" {now - self.step_started:.1f} s", file=sys.stderr, flush=True)
        self.step_started = now

    def total(self) -> float:
        """Seconds since the first step."""
        return time.monotonic() - self.started


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """How the engines are timed: the op's math threads and the largest batch it runs."""
    parser.add_argument("--threads", type=int, default=timing.DEFAULT_THREADS,
                        help=f"math threads per predictor, as the op's thread_num (default: {timing.DEFAULT_THREADS})")
    parser.add_argument("--max-batch-size", type=int, default=timing.DEFAULT_MAX_BATCH,
                        help=f"the batch timed besides 1, as the op's batch_size (default: {timing.DEFAULT_MAX_BATCH})")
    parser.add_argument("--runs", type=int, default=timing.DEFAULT_RUNS, help=argparse.SUPPRESS)


def parse_measure_args(argv: list[str]) -> argparse.Namespace:
    """`--measure DIR` alone: time the engines of an existing export on this machine."""
    parser = argparse.ArgumentParser(
        prog="python -m export --measure",
        description="Time each engine and precision the export can run on this machine and record the table in its "
                    "model card; engine: auto then runs the fastest FP32 engine measured here.")
    parser.add_argument("--measure", required=True, type=Path, metavar="DIR",
                        help="an exported model folder (or its serving_server)")
    add_timing_args(parser)
    return parser.parse_args(argv)


def measure_and_record(server_dir: Path, args: argparse.Namespace,
                       step: Callable[[str], None] = lambda _: None) -> dict:
    """Time the engines, record the table in the card; returns the table."""
    table = timing.measure(server_dir, args.threads, args.max_batch_size, args.runs, step)
    timing.record(server_dir, table)
    return table


def measure_main(argv: list[str]) -> int:
    """`python -m export --measure DIR`: errors are one line on stderr and exit 2."""
    args = parse_measure_args(argv)
    server_dir = timing.resolve_server_dir(args.measure)
    try:
        table = measure_and_record(server_dir, args, lambda label: print(f"  timing {label} ...", file=sys.stderr,
                                                                          flush=True))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(timing.lines(server_dir, table)))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI: one weights source (checkpoint, inference model or random seed) per run."""
    from export.exporter import DEFAULT_LABELS
    from export.int8 import DEFAULT_MIN_AGREEMENT
    from export.models import MODELS

    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a PaddleClas classifier to Paddle Serving's serving_server/ + serving_client/ layout.",
    )
    parser.add_argument("--model", required=True, help=f"architecture: one of {', '.join(MODELS)}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="PaddleClas checkpoint (.pdparams written by paddle.save)")
    source.add_argument("--inference-model", type=Path,
                        help="PaddleClas inference model folder (inference.json or .pdmodel + inference.pdiparams)")
    source.add_argument("--random-init", type=int, metavar="SEED",
                        help="calibrated seeded random weights, for demos and tests: predictions are meaningless")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist unless --force)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: 1000)")
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS,
                        help="label file, one '<id> <name>' per class (default: ImageNet-1k)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output folder; with --int8, keep a model below --min-agreement")
    parser.add_argument("--onnx", action="store_true",
                        help="also write serving_server/inference.onnx (paddle2onnx) for the ONNX Runtime engine")
    parser.add_argument("--int8", action="store_true",
                        help="also write serving_server/inference.int8.onnx (ONNX Runtime static quantization; "
                             "implies --onnx, needs --calib-images)")
    parser.add_argument("--calib-images", type=Path, metavar="DIR",
                        help="images to calibrate INT8 on; every 4th is held out to measure INT8 against FP32")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        help=f"least top-1 agreement of INT8 with FP32 on the held-out images "
                             f"(default: {DEFAULT_MIN_AGREEMENT})")
    parser.add_argument("--measure", action="store_true",
                        help="time each engine on this machine after the export and record the table in the card "
                             "(on the serving machine, python -m export --measure DIR does it for an export)")
    add_timing_args(parser)
    args = parser.parse_args(argv)
    if args.int8 != (args.calib_images is not None):
        parser.error("--int8 and --calib-images DIR go together")
    args.onnx = args.onnx or args.int8
    return args


def report(result: "ExportResult", out: Path) -> None:
    """Print what was exported beside PaddleClas's published figures."""
    card = result.card
    published = card["published"]
    print(f"exported {card['model']} ({card['num_classes']} classes, input 3x{card['input']['shape'][1]}"
          f"x{card['input']['shape'][2]}) to {out}")
    print(f"  params: {result.params:,} ({result.params / 1e6:.2f} M; published {published['params_m']:.2f} M)")
    print(f"  FLOPs:  {result.flops / 1e9:.2f} G (2 x conv+fc MACs; published {published['flops_g']:.2f} G)")
    print(f"  parity: max |prob diff| exported vs network = {result.parity_max_abs_diff:.2e} "
          "(checked on log-probabilities, relative to the logits' scale)")
    print(f"  fetch:  {card['output']['name']} as 'prediction'; weights: {card['weights']['source']}")
    if "int8" in card:
        held = card["int8"]["held_out"]
        print(f"  int8:   {card['int8']['file']}: top-1 agreement {held['top1_agreement']:.3f}, top-5 overlap "
              f"{held['top5_overlap']:.3f}, max |prob diff| {held['max_abs_diff']:.2e} on {held['count']} held-out "
              f"images ({card['int8']['calibration']['count']} calibrated on)")


def main(argv: list[str] | None = None) -> int:
    """Export a model, or with `--measure DIR` alone time an existing export's engines on this machine."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--model" not in argv and any(arg == "--measure" or arg.startswith("--measure=") for arg in argv):
        return measure_main(argv)
    return export_main(argv)


def export_main(argv: list[str]) -> int:
    """Run one export; errors are one line on stderr and a non-zero exit."""
    from export.exporter import ExportRequest, export
    from export.models import UnknownModelError

    args = parse_args(argv)
    if args.random_init is not None:
        print(f"warning: --random-init {args.random_init}: random weights, predictions are meaningless",
              file=sys.stderr)
    request = ExportRequest(model=args.model, out=args.out, weights=args.weights,
                            inference_model=args.inference_model, random_init=args.random_init,
                            num_classes=args.num_classes, labels=args.labels, force=args.force,
                            onnx=args.onnx, calib_images=args.calib_images, min_agreement=args.min_agreement)
    progress = StepPrinter(STEPS + int(args.onnx) + int(args.int8) + int(args.measure))
    table = None
    try:
        result = export(request, progress)
        if args.measure:
            progress("timing each engine on this machine")
            table = measure_and_record(args.out / "serving_server", args)
    except (ExportError, UnknownModelError) as exc:
        progress.finish()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress.finish()
    report(result, args.out)
    if table is not None:
        print("\n".join(timing.lines(args.out / "serving_server", table)))
    print(f"  done in {progress.total():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
