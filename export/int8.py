"""Static INT8 quantization of the ONNX twin (ONNX Runtime, QDQ), calibrated and judged on the user's own images."""

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.onnx_export import ONNX_FILE
from serving.model_card import load_card
from serving.predictor.settings import INT8_ONNX_FILE as INT8_FILE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOLD_OUT_EVERY = 4  # every 4th image (by sorted name) is held out: never calibrated on, only measured
QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear take an axis from opset 13
DEFAULT_MIN_AGREEMENT = 0.99
FLOAT_OPS = ("Softmax",)  # probabilities stay float: uint8 would round them to 1/255 steps and tie the top-5
METHOD = (f"opset {QDQ_OPSET}, onnxruntime.quantization quant_pre_process (folds Paddle2ONNX's Conv + bias Add), "
          "quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration; "
          f"{', '.join(FLOAT_OPS)} kept float")


class QuantizationError(ExportError):
    """Too few calibration images, or an INT8 model that disagrees with FP32 beyond the threshold."""


def calibration_images(directory: Path) -> tuple[list[Path], list[Path]]:
    """The images of `directory` split into (calibration, held out); refuses a folder too small to hold any out."""
    if not Path(directory).is_dir():
        raise QuantizationError(f"--calib-images {directory} is not a folder")
    images = sorted(path for path in Path(directory).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) < HOLD_OUT_EVERY:
        raise QuantizationError(f"--calib-images {directory} has {len(images)} images; at least {HOLD_OUT_EVERY} "
                                f"are needed (every {HOLD_OUT_EVERY}th is held out to measure INT8 against FP32)")
    held_out = images[HOLD_OUT_EVERY - 1::HOLD_OUT_EVERY]
    return [path for path in images if path not in held_out], held_out


def file_list_sha256(paths: list[Path]) -> str:
    """Identifies a calibration set: sha256 of its sorted file names and their contents' sha256s."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: one preprocessed image per call, then None."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict] = iter({input_name: batch} for batch in batches)

    def get_next(self) -> dict | None:
        """The next feed, None when done."""
        return next(self._feeds, None)


def agreement(fp32: np.ndarray, int8: np.ndarray) -> dict:
    """Top-1 agreement, top-5 overlap and |delta prob| of INT8 against FP32 probabilities."""
    top5 = [set(np.argsort(-row)[:5]) for row in fp32], [set(np.argsort(-row)[:5]) for row in int8]
    diff = np.abs(fp32.astype(np.float64) - int8.astype(np.float64))
    return {"count": len(fp32),
            "top1_agreement": float(np.mean(fp32.argmax(axis=-1) == int8.argmax(axis=-1))),
            "top5_overlap": float(np.mean([len(a & b) / 5 for a, b in zip(*top5, strict=True)])),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def quantize(server_dir: Path, calib_dir: Path, min_agreement: float, force: bool) -> dict:
    """Write `inference.int8.onnx` beside the FP32 twin; returns the model card's `int8` section."""
    import onnx
    import onnxruntime
    from onnx import version_converter
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration, held_out = calibration_images(calib_dir)
    transforms = load_card(server_dir).transforms
    fp32_path, int8_path = Path(server_dir) / ONNX_FILE, Path(server_dir) / INT8_FILE
    try:
        batches = [transforms(path.read_bytes())[None] for path in calibration + held_out]
    except Exception as exc:
        raise QuantizationError(f"cannot preprocess the calibration images in {calib_dir}: {exc}") from exc
    session = onnxruntime.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    with tempfile.TemporaryDirectory() as scratch:
        upgraded = Path(scratch) / "opset13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(str(fp32_path)), QDQ_OPSET), str(upgraded))
        folded = Path(scratch) / "folded.onnx"
        quant_pre_process(str(upgraded), str(folded))
        quantization.quantize_static(
            str(folded), str(int8_path), _Reader(input_name, batches[:len(calibration)]),
            nodes_to_exclude=[node.name for node in onnx.load(str(folded)).graph.node if node.op_type in FLOAT_OPS],
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            weight_type=quantization.QuantType.QInt8, activation_type=quantization.QuantType.QUInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
    quantized = onnxruntime.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    tests = np.concatenate(batches[len(calibration):])
    figures = agreement(session.run(None, {input_name: tests})[0], quantized.run(None, {input_name: tests})[0])
    below = figures["top1_agreement"] < min_agreement
    if below and not force:
        raise QuantizationError(f"INT8 top-1 agreement with FP32 is {figures['top1_agreement']:.3f} on "
                                f"{len(held_out)} held-out images, below --min-agreement {min_agreement}; "
                                "calibrate on more representative images, or pass --force to keep it")
    return {"file": f"serving_server/{INT8_FILE}", "method": METHOD,
            "calibration": {"count": len(calibration), "sha256": file_list_sha256(calibration),
                            "hold_out": f"every {HOLD_OUT_EVERY}th image by sorted name"},
            "held_out": figures, "min_agreement": min_agreement, "forced_below_min_agreement": below}
