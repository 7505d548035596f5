"""PIR-TensorRT for Paddle 3 `.json` programs: convert once with `paddle.tensorrt`, cache by what shapes the engine.

`Config.enable_tensorrt_engine` applies to legacy `.pdmodel` programs only; on a PIR program it builds no
engine and the model silently runs as plain GPU (Paddle issue 79449). Here a `.json` program is rewritten
by `paddle.tensorrt.convert` into one with `pd_op.tensorrt_engine` ops, saved under `trt_cache_dir` keyed by
everything that changes the engine, and start-up refuses a conversion that placed no op in TensorRT unless
the operator chose `trt_fallback: gpu`.
"""

import hashlib
import importlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serving.errors import InitError
from serving.predictor.settings import PredictorSettings, summary

log = logging.getLogger("serving.tensorrt")

ENGINE_OP = "pd_op.tensorrt_engine"
QUANT_OPS = ("quantize_linear", "dequantize_linear")
PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
RECORD = "engine.json"  # beside the converted program: the plan and how many ops run in TensorRT
INSTALL_HINT = ("install Paddle's GPU build with TensorRT (paddlepaddle-gpu from Paddle's CUDA wheel index, with "
                "TensorRT's libraries on the library path), or set trt_fallback: gpu to run without TensorRT")


class TensorRTUnavailableError(InitError):
    """TensorRT cannot engage: no paddle.tensorrt, a failed conversion, or no op placed in TensorRT."""


@dataclass(frozen=True)
class TrtPlan:
    """Everything that changes a converted program; its hash names the cache folder."""

    program_sha256: str
    precision: str
    shapes: dict[str, tuple[list[int], list[int], list[int]]]
    min_subgraph_size: int
    workspace_bytes: int
    gpu_name: str
    paddle_version: str
    tensorrt_version: str

    @property
    def key(self) -> str:
        """A short stable hash of the plan."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrtProgram:
    """The program Paddle Inference loads, and whether (and how much of) it runs in TensorRT."""

    program: Path
    params: Path
    engine_ops: int
    fallback: bool = False

    def describe(self) -> dict:
        """For /metadata and the start-up log."""
        return {"engine": "paddle-tensorrt" if not self.fallback else "paddle-gpu (TensorRT off: trt_fallback)",
                "tensorrt_engine_ops": self.engine_ops, "program": str(self.program)}


def needs_conversion(settings: PredictorSettings, program: Path) -> bool:
    """TensorRT on a PIR (`.json`) program goes through paddle.tensorrt; a `.pdmodel` keeps enable_tensorrt_engine."""
    return settings.device == "tensorrt" and program.suffix == ".json"


def file_sha256(path: Path) -> str:
    """Hash of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tensorrt_module() -> Any:
    """`paddle.tensorrt`, or the one clear error this Paddle build cannot do better than."""
    try:
        return importlib.import_module("paddle.tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(f"TensorRT cannot engage: this Paddle build has no paddle.tensorrt ({exc}); "
                                       f"{INSTALL_HINT}") from None


def make_plan(settings: PredictorSettings, program: Path, gpu_name: str, versions: tuple[str, str]) -> TrtPlan:
    """The plan for this program and these settings on this GPU and these library versions."""
    shapes = {name: (list(low), list(opt), list(high)) for name, (low, opt, high) in settings.dynamic_shapes.items()}
    return TrtPlan(file_sha256(program), settings.precision, shapes, settings.min_subgraph_size,
                   settings.trt_workspace_bytes, gpu_name, *versions)


def prepare(settings: PredictorSettings, program: Path, params: Path, gpu_name: str,
            versions: tuple[str, str]) -> TrtProgram:
    """The converted program for `settings` (converted now, or reused from the cache), or the fallback."""
    try:
        converted = _converted(settings, program, gpu_name, versions)
    except TensorRTUnavailableError as exc:
        if settings.trt_fallback != "gpu":
            raise
        log.warning("TENSORRT IS OFF for %s: %s; running plain GPU because trt_fallback is gpu", program, exc)
        return TrtProgram(program, params, 0, fallback=True)
    log.info("TensorRT: %d ops of %s run in TensorRT engines (%s, cache %s)", converted.engine_ops, program,
             settings.precision, converted.program.parent)
    return converted


def _converted(settings: PredictorSettings, program: Path, gpu_name: str, versions: tuple[str, str]) -> TrtProgram:
    """Reuse the cache entry of this plan, or convert into a fresh folder and move it into place whole."""
    tensorrt = load_tensorrt_module()
    if settings.precision == "int8" and not any(op in program.read_text(encoding="utf-8") for op in QUANT_OPS):
        raise TensorRTUnavailableError(f"TensorRT INT8 on a PIR program needs a quantized model (quantize_linear "
                                       f"ops); {program} has none: use precision fp16 or fp32, or export a "
                                       "quantized model")
    plan = make_plan(settings, program, gpu_name, versions)
    folder = settings.trt_cache_dir / f"pir-{plan.key}"
    if (folder / RECORD).is_file():
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return _checked(TrtProgram(folder / "inference.json", folder / "inference.pdiparams", record["engine_ops"]))
    settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=settings.trt_cache_dir))
    try:
        converted = tensorrt.convert(str(program), _trt_config(tensorrt, settings, staging / "inference"))
        engine_ops = sum(op.name() == ENGINE_OP for op in converted.global_block().ops)
        (staging / RECORD).write_text(json.dumps({"engine_ops": engine_ops, "plan": asdict(plan)}, indent=1),
                                      encoding="utf-8")
        _move_into_place(staging, folder)
    except TensorRTUnavailableError:
        raise
    except Exception as exc:
        raise TensorRTUnavailableError(f"TensorRT conversion of {program} failed: {summary(exc)}; "
                                       f"{INSTALL_HINT}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _checked(TrtProgram(folder / "inference.json", folder / "inference.pdiparams", engine_ops))


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished conversion into the cache; a worker process that got there first wins."""
    try:
        staging.replace(folder)
    except OSError:
        if not (folder / RECORD).is_file():
            raise


def _trt_config(tensorrt: Any, settings: PredictorSettings, save_prefix: Path) -> Any:
    """paddle.tensorrt's TensorRTConfig: one Input per feed with min/opt/max shapes, precision, workspace."""
    inputs = [tensorrt.Input(min_input_shape=tuple(low), optim_input_shape=tuple(opt), max_input_shape=tuple(high),
                             name=name)
              for name, (low, opt, high) in settings.dynamic_shapes.items()]
    return tensorrt.TensorRTConfig(inputs=inputs, min_subgraph_size=settings.min_subgraph_size,
                                   save_model_dir=str(save_prefix),
                                   precision_mode=getattr(tensorrt.PrecisionMode, PRECISION_MODES[settings.precision]),
                                   workspace_size=settings.trt_workspace_bytes)


def _checked(converted: TrtProgram) -> TrtProgram:
    """A conversion that placed no op in TensorRT would serve as plain GPU: refuse it."""
    if converted.engine_ops == 0:
        raise TensorRTUnavailableError(f"TensorRT did not engage: the converted program {converted.program} holds "
                                       f"no {ENGINE_OP} op (every op stayed outside TensorRT)")
    return converted
