"""The Paddle Inference engine: `apply_settings` (the one place that configures a Config) and its predictors."""

from pathlib import Path

import numpy as np
from paddle import inference

from serving.errors import InitError
from serving.model_files import find_program
from serving.predictor.settings import PredictorSettings, summary
from serving.predictor.tensorrt import TrtProgram, needs_conversion, prepare
from serving.proto.general_model_config_pb2 import FeedVar, FetchVar

TRT_PRECISIONS = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}


def apply_settings(config: inference.Config, settings: PredictorSettings, gpu_id: int | None,
                   legacy_tensorrt: bool = True) -> None:
    """Turn the settings into Config calls; the one place that configures Paddle Inference.

    `legacy_tensorrt` False: the program was converted by PIR-TensorRT (its engines are in the program), or
    TensorRT is off by trt_fallback; either way the GPU runs it without enable_tensorrt_engine.
    """
    if settings.device == "cpu":
        _apply_cpu(config, settings)
    else:
        native_half = settings.device == "gpu" and settings.precision == "fp16"
        precision = inference.PrecisionType.Half if native_half else inference.PrecisionType.Float32
        config.enable_use_gpu(settings.gpu_memory_mb, settings.gpu_ids[0] if gpu_id is None else gpu_id, precision)
    if settings.device == "tensorrt" and legacy_tensorrt:
        _apply_tensorrt(config, settings)
    else:
        # PIR programs need the new executor for enable_memory_optim (Paddle 3.3.1 fails at creation without it).
        config.enable_new_executor()
    config.switch_ir_optim(settings.ir_optim)
    if settings.mem_optim:
        config.enable_memory_optim()
    config.disable_glog_info()
    if hasattr(config, "switch_use_feed_fetch_ops"):
        config.switch_use_feed_fetch_ops(False)


def _apply_cpu(config: inference.Config, settings: PredictorSettings) -> None:
    """Threads and oneDNN; oneDNN is switched off explicitly because a fresh Paddle 3 Config has it on."""
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(settings.thread_num)
    if not settings.use_mkldnn:
        config.disable_mkldnn()
        return
    config.enable_mkldnn()
    if settings.mkldnn_cache_capacity > 0:
        config.set_mkldnn_cache_capacity(settings.mkldnn_cache_capacity)
    if settings.mkldnn_op_list:
        config.set_mkldnn_op(set(settings.mkldnn_op_list))
    if settings.bf16:
        config.enable_mkldnn_bfloat16()
        if settings.mkldnn_bf16_op_list:
            config.set_bfloat16_op(set(settings.mkldnn_bf16_op_list))


def _apply_tensorrt(config: inference.Config, settings: PredictorSettings) -> None:
    """TensorRT subgraphs with dynamic shapes; engines are serialized to the cache folder for the next start."""
    config.enable_tensorrt_engine(
        workspace_size=settings.trt_workspace_bytes,
        max_batch_size=settings.max_batch_size,
        min_subgraph_size=settings.min_subgraph_size,
        precision_mode=getattr(inference.PrecisionType, TRT_PRECISIONS[settings.precision]),
        use_static=True,
        use_calib_mode=settings.use_calib,
    )
    low, opt, high = ({name: list(ranges[i]) for name, ranges in settings.dynamic_shapes.items()} for i in range(3))
    config.set_trt_dynamic_shape_info(low, high, opt)
    settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    config.set_optim_cache_dir(str(settings.trt_cache_dir))


class PaddleEngine:
    """Paddle Inference predictors: per device one created predictor plus clones sharing its weights."""

    def __init__(self, settings: PredictorSettings, feeds: list[FeedVar], fetches: list[FetchVar]) -> None:
        self._settings, self._feeds, self._fetches = settings, feeds, fetches
        self.tensorrt: TrtProgram | None = None  # set when a PIR program runs on TensorRT (or fell back)

    def build_pool(self, pool_size: int) -> list[inference.Predictor]:
        """Per device: one created predictor plus clones sharing its weights; interleaved for round-robin use."""
        _check_gpu_build(self._settings)
        program, params = find_program(self._settings.model_dir)
        if needs_conversion(self._settings, program):  # before the server reports ready
            self.tensorrt = prepare(self._settings, program, params, _gpu_name(self._settings.gpu_ids[0]),
                                    _versions())
            program, params = self.tensorrt.program, self.tensorrt.params
        devices = list(self._settings.gpu_ids) if self._settings.device != "cpu" else [None]
        per_device = []
        for gpu_id in devices:
            first = self._create(gpu_id, program, params)
            try:
                per_device.append([first] + [first.clone() for _ in range(pool_size - 1)])
            except Exception as exc:
                raise InitError(f"cannot clone the predictor for {self._settings.model_dir}: {summary(exc)}") from exc
        return [group[i] for i in range(pool_size) for group in per_device]

    def describe(self) -> dict:
        """For /metadata and the start-up log: with TensorRT, the converted program and its engine ops."""
        return self.tensorrt.describe() if self.tensorrt is not None else {}

    def _create(self, gpu_id: int | None, program: Path, params: Path) -> inference.Predictor:
        """One predictor from the program (the model folder's, or its TensorRT conversion), names checked."""
        where = "CPU" if gpu_id is None else f"GPU {gpu_id}"
        try:
            config = inference.Config(str(program), str(params))
            apply_settings(config, self._settings, gpu_id, legacy_tensorrt=self.tensorrt is None)
            predictor = inference.create_predictor(config)
        except InitError:
            raise
        except Exception as exc:
            raise InitError(f"cannot create the Paddle Inference predictor for {self._settings.model_dir} on "
                            f"{where}: {summary(exc)}") from exc
        self._check_names(predictor)
        return predictor

    def _check_names(self, predictor: inference.Predictor) -> None:
        """The model config must name the program's real inputs and outputs."""
        inputs, outputs = predictor.get_input_names(), predictor.get_output_names()
        missing = [var.name for var in self._feeds if var.name not in inputs]
        missing += [var.name for var in self._fetches if var.name not in outputs]
        if missing:
            raise InitError(f"model config in {self._settings.model_dir} names {missing}, which the program lacks "
                            f"(its inputs: {inputs}, outputs: {outputs})")

    def run(self, predictor: inference.Predictor, arrays: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        """Copy the inputs in, run, copy the named outputs out."""
        for name, array in arrays.items():
            handle = predictor.get_input_handle(name)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(np.ascontiguousarray(array))
        predictor.run()
        return [predictor.get_output_handle(name).copy_to_cpu() for name in fetch]


def _check_gpu_build(settings: PredictorSettings) -> None:
    """A GPU request on Paddle's CPU build would log an error and quietly run on the CPU: refuse it instead."""
    import paddle

    if settings.device != "cpu" and not paddle.is_compiled_with_cuda():
        cards = ",".join(map(str, settings.gpu_ids))
        raise InitError(f"{settings.device} requested (devices \"{cards}\") but Paddle {paddle.__version__} is the "
                        "CPU build: set device_type: 0 and devices: \"\" to run on the CPU, or install "
                        "paddlepaddle-gpu")


def _gpu_name(gpu_id: int) -> str:
    """The card's name, part of the TensorRT cache key (an engine built for one GPU model fails on another)."""
    import paddle

    try:
        return str(paddle.device.cuda.get_device_name(gpu_id))
    except Exception as exc:  # a CPU build or no visible card: conversion will say what is missing
        return f"unknown ({type(exc).__name__})"


def _versions() -> tuple[str, str]:
    """Paddle's version and TensorRT's runtime version, part of the TensorRT cache key."""
    import paddle

    try:
        tensorrt = ".".join(map(str, inference.get_trt_runtime_version()))
    except Exception:  # the CPU build has no TensorRT runtime: conversion will say so
        tensorrt = "none"
    return paddle.__version__, tensorrt
