"""The ONNX twin of an exported program (paddle2onnx), for the ONNX Runtime engine."""

import os
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.inference_io import find_program

ONNX_FILE = "inference.onnx"
OPSET = 11


def convert(server_dir: Path) -> Path:
    """Write `inference.onnx` beside the program; paddle2onnx's optimiser must not pip-install anything."""
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    import paddle2onnx

    program, params = find_program(server_dir)
    target = Path(server_dir) / ONNX_FILE
    try:
        paddle2onnx.export(str(program), str(params), str(target), opset_version=OPSET, enable_onnx_checker=True)
    except Exception as exc:
        raise ExportError(f"paddle2onnx could not convert {program}: {exc}") from exc
    return target


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    """The ONNX model's first output for one batch, on ONNX Runtime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
