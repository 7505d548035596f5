"""The ONNX Runtime engine: one session shared by the pool (its Run is thread-safe), on CPU, CUDA or TensorRT.

On a GPU, ONNX Runtime quietly falls back to its CPU provider when the CUDA or TensorRT provider fails
to load; the session's providers are checked after creation, and start-up fails (or, for TensorRT with
trt_fallback: gpu, warns) instead of serving on another device than configured.
"""

import logging
import os
from pathlib import Path

import numpy as np

from serving.errors import InitError
from serving.predictor.settings import INT8_ONNX_FILE, ONNX_FILE, PredictorSettings, summary
from serving.predictor.tensorrt import TensorRTUnavailableError
from serving.proto.general_model_config_pb2 import FeedVar, FetchVar

log = logging.getLogger("serving.ort")
CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_HINT = "install onnxruntime-gpu in place of onnxruntime (pip install '.[gpu]'), with CUDA and TensorRT libraries"


class OrtEngine:
    """`inference.onnx` (written by `python -m export --onnx`) on the settings' device; `inference.int8.onnx` (--int8)
    for precision int8 on CPU."""

    def __init__(self, settings: PredictorSettings, feeds: list[FeedVar], fetches: list[FetchVar]) -> None:
        self._settings, self._feeds, self._fetches = settings, feeds, fetches
        self.providers: list[str] = []
        self.model_file = ONNX_FILE

    def build_pool(self, pool_size: int) -> list[object]:
        """One session lent out `pool_size` times: concurrent runs share its intra-op thread pool."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._settings.thread_num
        options.inter_op_num_threads = 1
        # By default idle intra-op threads sleep instead of spinning: requests arrive with gaps, and spinning burned
        # ~4 ms of CPU per request on the cores that serve (SqueezeNet1_1 pipeline HTTP at 8 clients: 14.9 -> 10.6 ms
        # of server CPU per request, 126 -> 168 requests/s; `python -m bench.cpu_split`). cpu_spin_wait trades that
        # CPU for a lone small-model request's latency.
        spin = "1" if self._settings.cpu_spin_wait else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        int8 = self._settings.device == "cpu" and self._settings.precision == "int8"
        path = Path(self._settings.model_dir) / (INT8_ONNX_FILE if int8 else ONNX_FILE)
        self.model_file = path.name
        try:
            session = onnxruntime.InferenceSession(os.fspath(path), options, providers=providers(self._settings))
        except Exception as exc:
            raise InitError(f"cannot create the ONNX Runtime session for {path}: {summary(exc)}") from exc
        self.providers = checked_providers(self._settings, session.get_providers())
        inputs = [item.name for item in session.get_inputs()]
        outputs = [item.name for item in session.get_outputs()]
        missing = [var.name for var in self._feeds if var.name not in inputs]
        missing += [var.name for var in self._fetches if var.name not in outputs]
        if missing:
            raise InitError(f"{path} lacks {missing} named by the model config (inputs {inputs}, outputs {outputs})")
        return [session] * pool_size

    def describe(self) -> dict:
        """For /metadata and the start-up log: the providers the session really runs on."""
        return {"providers": list(self.providers), "model_file": self.model_file}

    def run(self, session: object, arrays: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        """One Run; ORT reads the numpy buffers in place."""
        return session.run(fetch, arrays)


def providers(settings: PredictorSettings) -> list:
    """The execution providers for the settings' device: CPU; CUDA on the first card; TensorRT then CUDA."""
    if settings.device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = (CUDA, {"device_id": settings.gpu_ids[0]})
    if settings.device == "gpu":
        return [cuda]
    shapes = {stage: ",".join(f"{name}:{'x'.join(map(str, ranges[index]))}"
                              for name, ranges in settings.dynamic_shapes.items())
              for index, stage in enumerate(("min", "opt", "max"))}
    return [(TENSORRT, {"device_id": settings.gpu_ids[0], "trt_fp16_enable": settings.precision == "fp16",
                        "trt_max_workspace_size": settings.trt_workspace_bytes,
                        "trt_min_subgraph_size": settings.min_subgraph_size,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": os.fspath(settings.trt_cache_dir / "onnxruntime"),
                        "trt_profile_min_shapes": shapes["min"], "trt_profile_opt_shapes": shapes["opt"],
                        "trt_profile_max_shapes": shapes["max"]}), cuda]


def checked_providers(settings: PredictorSettings, active: list[str]) -> list[str]:
    """The session's providers, if they are the configured device's; otherwise one clear error (or the fallback)."""
    if settings.device == "gpu" and CUDA not in active:
        raise InitError(f"ONNX Runtime did not load {CUDA} (session providers: {active}); {GPU_HINT}")
    if settings.device == "tensorrt" and TENSORRT not in active:
        message = f"ONNX Runtime did not load {TENSORRT} (session providers: {active}); {GPU_HINT}"
        if settings.trt_fallback != "gpu" or CUDA not in active:
            raise TensorRTUnavailableError(f"TensorRT cannot engage: {message}")
        log.warning("TENSORRT IS OFF: %s; running on %s because trt_fallback is gpu", message, CUDA)
    return active
