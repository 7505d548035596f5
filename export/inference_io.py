"""Inference programs on disk: save one from a network, find one in a folder, run it, read its weights."""

from pathlib import Path

import numpy as np
import paddle
from paddle import inference, nn

from export.errors import WeightsError
from serving import model_files
from serving.model_files import PROGRAM_PREFIX

FEED_NAME = "x"


def save_program(network: nn.Layer, directory: Path, input_size: int) -> None:
    """Trace `network` with a dynamic batch and write `inference.json`/`.pdmodel` + `inference.pdiparams`."""
    spec = paddle.static.InputSpec([None, 3, input_size, input_size], "float32", FEED_NAME)
    static = paddle.jit.to_static(network, input_spec=[spec], full_graph=True)
    paddle.jit.save(static, str(Path(directory) / PROGRAM_PREFIX))


def find_program(directory: Path) -> tuple[Path, Path]:
    """serving's program lookup, its failure as the exporter's WeightsError."""
    try:
        return model_files.find_program(directory)
    except model_files.ProgramNotFoundError as exc:
        raise WeightsError(str(exc)) from None


def cpu_config(directory: Path, threads: int = 2) -> inference.Config:
    """A CPU Paddle Inference config with oneDNN and IR optimisation, logging kept quiet."""
    program, params = find_program(directory)
    config = inference.Config(str(program), str(params))
    config.disable_gpu()
    config.switch_ir_optim(True)
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return config


def create_predictor(directory: Path) -> inference.Predictor:
    """A CPU predictor for the inference model in `directory`."""
    return inference.create_predictor(cpu_config(directory))


def run(predictor: inference.Predictor, batch: np.ndarray) -> list[np.ndarray]:
    """Feed one NCHW float32 batch and return every output."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


def read_program_params(directory: Path) -> dict[str, np.ndarray]:
    """Parameter name -> value of an inference model, for either program format."""
    program, _ = find_program(directory)
    prefix = str(program.with_suffix(""))
    paddle.enable_static()
    try:
        if program.suffix == ".pdmodel":
            with paddle.pir_utils.OldIrGuard():
                return _load_params(prefix, legacy=True)
        return _load_params(prefix, legacy=False)
    except (RuntimeError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load inference model {program}: {first_line}") from None
    finally:
        paddle.disable_static()


def _load_params(prefix: str, legacy: bool) -> dict[str, np.ndarray]:
    scope = paddle.static.Scope()
    executor = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        program, _, _ = paddle.static.load_inference_model(prefix, executor)
        if legacy:
            names = [var.name for var in program.list_vars() if var.persistable and var.name not in ("feed", "fetch")]
        else:
            names = [param.name for param in program.global_block().all_parameters()]
        return {name: np.array(scope.find_var(name).get_tensor()) for name in names}

