"""The exported models the benchmarks run (cached, exported once) and the fresh worker processes that time them."""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.calibration import calibration_folder
from export import SAMPLE_IMAGES
from export.measure import WorkerProcessError, run_in_fresh_process
from serving.model_config import SERVER_CONF, read_config
from serving.predictor.settings import INT8_ONNX_FILE

MODEL_NAMES = ("AlexNet", "SqueezeNet1_0", "SqueezeNet1_1", "DarkNet53", "SENet154_vd")
# Caches and results are relative to the working directory: in a checkout's root they are bench/models and
# bench/results as before; an installed kit never writes into its own package.
DEFAULT_MODELS_DIR = Path("bench/models")
DEFAULT_RESULTS_DIR = Path("bench/results")
SAMPLE_IMAGE = SAMPLE_IMAGES / "daisy.jpg"
# How results name the request image: its path inside the distribution, the same installed or checked out.
SAMPLE_IMAGE_NAME = SAMPLE_IMAGE.relative_to(SAMPLE_IMAGES.parents[2]).as_posix()
EXPORT_SEED = 0
WORKER_TIMEOUT_S = 3600
# Files an export writes last or only with --onnx: their presence means a complete, usable cache entry.
COMPLETE_MARKERS = ("serving_server/inference.onnx", "serving_server/" + SERVER_CONF, "model_card.yaml")
# What an INT8 benchmark needs on top: the quantized twin (`--int8`); a cache without it is exported again.
INT8_MARKER = "serving_server/" + INT8_ONNX_FILE
# Random weights give arbitrary near-one-hot outputs, so INT8's agreement with FP32 says nothing about the
# quantizer and must not fail the export; latency does not depend on the weights' values.
INT8_MIN_AGREEMENT = 0.0


def add_standalone_options(parser: argparse.ArgumentParser, models: list[str]) -> None:
    """The options of the stand-alone timing tools (bench.int8_speed, bench.paddle_int8): models, runs, folders."""
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)


class WorkerError(RuntimeError):
    """A measurement process failed; the message carries the end of its stderr."""


def quiet_env() -> dict[str, str]:
    """Paddle's C++ INFO lines off; cwd and PYTHONPATH are inherited, so children import the kit as this process did."""
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    return env


def ensure_model(name: str, models_dir: Path, int8: bool = False) -> Path:
    """Absolute `models_dir/name/serving_server` (server configs live elsewhere), exported once (random, with ONNX);
    `int8`: with the INT8 twin too, re-exporting a cache made without it (same seed, so the FP32 files are alike)."""
    root = Path(models_dir).resolve() / name
    markers = COMPLETE_MARKERS + ((INT8_MARKER,) if int8 else ())
    if not all((root / marker).is_file() for marker in markers):
        _export(name, root, int8)
    return root / "serving_server"


def _export(name: str, root: Path, int8: bool) -> None:
    """Export in-process; the cache folder gets a `*` .gitignore so nothing in it is ever added to git."""
    from export.exporter import ExportRequest, export

    root.parent.mkdir(parents=True, exist_ok=True)
    ignore = root.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark model cache (python -m bench): never commit\n*\n", encoding="utf-8")
    extra = f", INT8 (min agreement {INT8_MIN_AGREEMENT:g}: random weights)" if int8 else ""
    print(f"exporting {name} into {root} (random weights, seed {EXPORT_SEED}, with ONNX{extra}) ...", file=sys.stderr)
    with _stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="bench-calib-") as scratch:
        calib = calibration_folder(Path(scratch)) if int8 else None
        export(ExportRequest(model=name, out=root, random_init=EXPORT_SEED, onnx=True, force=root.exists(),
                             calib_images=calib, min_agreement=INT8_MIN_AGREEMENT))


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """paddle2onnx and Polygraphy print to file descriptor 1: keep stdout for the result paths alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def input_size(server_dir: Path) -> int:
    """The model's square input side (224, or 256 for DarkNet53), from its feed shape [3, S, S]."""
    return int(read_config(Path(server_dir) / SERVER_CONF).feed_var[0].shape[-1])


def gpu_available() -> bool:
    """TensorRT needs a CUDA build of Paddle and a visible card; the CPU wheel says no to the first."""
    import paddle

    return bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0


def run_worker(spec: dict, timeout_s: float = WORKER_TIMEOUT_S) -> dict:
    """Run one measurement in a fresh interpreter (`bench.worker`) and return the JSON it wrote."""
    try:
        return run_in_fresh_process(["bench.worker", json.dumps(spec)], timeout_s, quiet_env())
    except WorkerProcessError as exc:
        tail = ": " + "\n".join(exc.stderr_lines[-5:]) if exc.returncode is not None else ""
        raise WorkerError(f"{spec['task']} worker {exc}{tail}") from None
