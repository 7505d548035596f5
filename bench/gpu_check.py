"""Every GPU engine on the five networks, checked against the CPU export, timed beside the seed's TensorRT latencies.

    python -m bench.gpu_check [--models AlexNet ...] [--batches 1 4 8] [--repeat 50] [--out bench/results/gpu]

Engines: Paddle GPU, PIR-TensorRT FP32 and FP16 (Paddle's GPU build with TensorRT), ONNX Runtime CUDA and
TensorRT FP32/FP16 (onnxruntime-gpu). Probabilities must match the CPU export (FP32: within 1e-4; FP16:
the same top-1 and within 1e-2). On a machine without what an engine needs, it says exactly what is
missing: without a CUDA build of Paddle and a visible card nothing runs (exit 2); without onnxruntime-gpu
the ONNX Runtime rows are skipped with that reason.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.models import DEFAULT_MODELS_DIR, DEFAULT_RESULTS_DIR, ensure_model
from bench.report import fmt, markdown_table
from export import SAMPLE_IMAGES

MODELS = ("AlexNet", "SqueezeNet1_0", "SqueezeNet1_1", "DarkNet53", "SENet154_vd")
FP32_ATOL, FP16_ATOL = 1e-4, 1e-2
# The seed's published TensorRT latencies (ms; shared/reference/seed.md): V100 FP32, T4 FP16 and FP32, by batch.
SEED_MS = {
    "AlexNet": {"v100_fp32": (0.81, 1.50, 2.33), "t4_fp16": (1.06, 1.70, 2.38), "t4_fp32": (1.45, 2.47, 3.72)},
    "SqueezeNet1_0": {"v100_fp32": (0.68, 1.64, 2.62), "t4_fp16": (0.97, 2.07, 3.67), "t4_fp32": (0.97, 2.53, 4.54)},
    "SqueezeNet1_1": {"v100_fp32": (0.62, 1.30, 2.09), "t4_fp16": (0.81, 1.63, 2.68), "t4_fp32": (0.76, 1.88, 3.15)},
    "DarkNet53": {"v100_fp32": (2.79, 6.42, 10.89), "t4_fp16": (3.18, 5.88, 10.15), "t4_fp32": (4.11, 12.17, 22.15)},
    "SENet154_vd": {"v100_fp32": (34.83, 51.22, 69.74), "t4_fp16": (49.86, 54.37, 74.70),
                    "t4_fp32": (53.80, 66.32, 121.60)},
}
SEED_BATCHES = (1, 4, 8)


@dataclass(frozen=True)
class Engine:
    """One GPU engine as local_service_conf keys, and whether it needs ONNX Runtime's GPU build."""

    name: str
    conf: dict
    precision: str
    needs_ort_gpu: bool = False


ENGINES = (
    Engine("paddle-gpu", {"device_type": 1, "engine": "paddle"}, "fp32"),
    Engine("paddle-trt-fp32", {"device_type": 2, "engine": "paddle", "precision": "fp32"}, "fp32"),
    Engine("paddle-trt-fp16", {"device_type": 2, "engine": "paddle", "precision": "fp16"}, "fp16"),
    Engine("ort-cuda", {"device_type": 1, "engine": "onnxruntime"}, "fp32", True),
    Engine("ort-trt-fp32", {"device_type": 2, "engine": "onnxruntime", "precision": "fp32"}, "fp32", True),
    Engine("ort-trt-fp16", {"device_type": 2, "engine": "onnxruntime", "precision": "fp16"}, "fp16", True),
)


def missing_for_paddle() -> list[str]:
    """What keeps the Paddle engines from running here, one line each (empty: they can run)."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return [f"Paddle {paddle.__version__} is the CPU build: install paddlepaddle-gpu for your CUDA version "
                "(Paddle's CUDA wheel index)"]
    problems = []
    if paddle.device.cuda.device_count() == 0:
        problems.append("no CUDA device is visible (nvidia-smi, CUDA_VISIBLE_DEVICES)")
    if importlib.util.find_spec("paddle.tensorrt") is None:
        problems.append("paddle.tensorrt is missing: this Paddle GPU build has no TensorRT support")
    return problems


def missing_for_onnxruntime() -> list[str]:
    """What keeps the ONNX Runtime GPU engines from running here (empty: they can run)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [f"onnxruntime has no {provider} (providers: {available}): pip uninstall -y onnxruntime && "
            "pip install '.[gpu]'" for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
            if provider not in available]


def agreement(reference: np.ndarray, probs: np.ndarray, precision: str) -> dict:
    """Max |Δprobability| and top-1 agreement against the CPU export, with the verdict for the precision."""
    diff = float(np.abs(reference - probs).max())
    top1 = bool((reference.argmax(axis=1) == probs.argmax(axis=1)).all())
    ok = diff <= FP32_ATOL if precision == "fp32" else top1 and diff <= FP16_ATOL
    return {"max_diff": diff, "top1_equal": top1, "ok": ok}


def seed_ms(model: str, engine: Engine, batch: int) -> float | None:
    """The seed's T4 latency of the same precision and batch (V100 has FP32 only), if published."""
    if batch not in SEED_BATCHES or model not in SEED_MS:
        return None
    return SEED_MS[model][f"t4_{engine.precision}"][SEED_BATCHES.index(batch)]


def batch_of(server_dir: Path, size: int) -> np.ndarray:
    """`size` rows of the bundled photos, preprocessed by the model card."""
    from serving.model_card import load_card

    card = load_card(server_dir)
    photos = [card.transforms(path.read_bytes()) for path in sorted(SAMPLE_IMAGES.glob("*"))]
    return np.stack([photos[i % len(photos)] for i in range(size)]).astype(np.float32)


def predictor_for(server_dir: Path, conf: dict, cache: Path) -> object:
    """A LocalPredictor of the kit on the engine's settings (conversion and engine build happen here)."""
    from serving.config import LocalServiceConf
    from serving.model_config import SERVER_CONF, read_config
    from serving.predictor import LocalPredictor, settings_from_conf

    local = LocalServiceConf(model_config=str(server_dir), devices="0" if conf.get("device_type") else "",
                             max_batch_size=8, trt_cache_dir=str(cache), **conf)
    local.validate("gpu_check")
    model_config = read_config(server_dir / SERVER_CONF)
    return LocalPredictor(settings_from_conf(local, model_config, path="gpu_check"), model_config)


def timed(predictor: object, batch: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    """Probabilities and the median latency in ms over `repeat` runs after a warm-up."""
    for _ in range(5):
        probs = predictor.predict({"x": batch})["prediction"]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        predictor.predict({"x": batch})
        samples.append((time.perf_counter() - started) * 1000)
    return probs, statistics.median(samples)


def run(args: argparse.Namespace, engines: list[Engine]) -> list[dict]:
    """A row per model, engine and batch size."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for model in args.models:
            server_dir = ensure_model(model, DEFAULT_MODELS_DIR)
            reference = predictor_for(server_dir, {"engine": "paddle"}, Path(cache))
            for engine in engines:
                predictor = predictor_for(server_dir, engine.conf, Path(cache) / model / engine.name)
                for size in args.batches:
                    batch = batch_of(server_dir, size)
                    probs, median_ms = timed(predictor, batch, args.repeat)
                    rows.append({"model": model, "engine": engine.name, "batch": size, "median_ms": median_ms,
                                 "seed_t4_ms": seed_ms(model, engine, size), "runtime": predictor.engine_info,
                                 **agreement(reference.predict({"x": batch})["prediction"], probs, engine.precision)})
    return rows


def markdown(rows: list[dict], skipped: list[str]) -> str:
    """The table, and what was skipped and why."""
    header = ["model", "engine", "batch", "median ms", "seed T4 ms", "max |Δp| vs CPU", "top-1 equal", "agrees"]
    cells = [[row["model"], row["engine"], str(row["batch"]), fmt(row["median_ms"], 2), fmt(row["seed_t4_ms"], 2),
              f"{row['max_diff']:.1e}", str(row["top1_equal"]), "yes" if row["ok"] else "**no**"] for row in rows]
    notes = "".join(f"- skipped: {reason}\n" for reason in skipped)
    return ("Command: `python -m bench.gpu_check`. Random-weight exports; FP32 must agree within 1e-4, FP16 on "
            "top-1 and within 1e-2.\n\n" + markdown_table(header, cells) + ("\n" + notes if notes else ""))


def main(argv: list[str] | None = None) -> int:
    """Check, run and write gpu_check.md / .json; exit 2 with what is missing when nothing can run."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(SEED_BATCHES))
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR / "gpu")
    args = parser.parse_args(argv)
    problems = missing_for_paddle()
    if problems:
        print("gpu_check cannot run here:\n" + "\n".join(f"- {problem}" for problem in problems), file=sys.stderr)
        return 2
    skipped = missing_for_onnxruntime()
    engines = [engine for engine in ENGINES if not (engine.needs_ort_gpu and skipped)]
    rows = run(args, engines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(rows, skipped), encoding="utf-8")
    print(markdown(rows, skipped))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
