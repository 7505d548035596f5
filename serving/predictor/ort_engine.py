"""The ONNX Runtime engine: one CPU session shared by the pool (its Run is thread-safe), threads as configured."""

import os
from pathlib import Path

import numpy as np

from serving.errors import InitError
from serving.predictor.settings import ONNX_FILE, PredictorSettings, summary
from serving.proto.general_model_config_pb2 import FeedVar, FetchVar


class OrtEngine:
    """`inference.onnx` (written by `python -m export --onnx`) on ONNX Runtime's CPU provider."""

    def __init__(self, settings: PredictorSettings, feeds: list[FeedVar], fetches: list[FetchVar]) -> None:
        self._settings, self._feeds, self._fetches = settings, feeds, fetches

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
        path = Path(self._settings.model_dir) / ONNX_FILE
        try:
            session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InitError(f"cannot create the ONNX Runtime session for {path}: {summary(exc)}") from exc
        inputs = [item.name for item in session.get_inputs()]
        outputs = [item.name for item in session.get_outputs()]
        missing = [var.name for var in self._feeds if var.name not in inputs]
        missing += [var.name for var in self._fetches if var.name not in outputs]
        if missing:
            raise InitError(f"{path} lacks {missing} named by the model config (inputs {inputs}, outputs {outputs})")
        return [session] * pool_size

    def run(self, session: object, arrays: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        """One Run; ORT reads the numpy buffers in place."""
        return session.run(fetch, arrays)
