"""The in-process predictor: a pool of Paddle Inference predictors behind checked feeds and fetches."""

import queue
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from paddle import inference

from export.errors import WeightsError
from export.inference_io import find_program
from serving.errors import InferenceError, InitError, InputError
from serving.predictor.settings import PredictorSettings
from serving.proto.general_model_config_pb2 import FeedVar, FetchVar, GeneralModelConfig

# Paddle Serving's feed_type codes that Paddle Inference tensors accept from numpy.
FEED_DTYPES = {0: np.int64, 1: np.float32, 2: np.int32, 3: np.float64, 5: np.float16, 7: np.uint8, 8: np.int8,
               9: np.bool_}
TRT_PRECISIONS = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}
MAX_MESSAGE = 300


def apply_settings(config: inference.Config, settings: PredictorSettings, gpu_id: int | None) -> None:
    """Turn the settings into Config calls; the one place that configures Paddle Inference."""
    if settings.device == "cpu":
        _apply_cpu(config, settings)
    else:
        native_half = settings.device == "gpu" and settings.precision == "fp16"
        precision = inference.PrecisionType.Half if native_half else inference.PrecisionType.Float32
        config.enable_use_gpu(settings.gpu_memory_mb, settings.gpu_ids[0] if gpu_id is None else gpu_id, precision)
    if settings.device == "tensorrt":
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


def _summary(exc: BaseException) -> str:
    """Paddle's errors span many lines (and may start with 'In user code:'): keep the first telling one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "In user code:"]
    return (lines[0] if lines else type(exc).__name__)[:MAX_MESSAGE]


def _shape_text(var: FeedVar) -> str:
    """The shape a client must send, e.g. [batch, 3, 224, 224] (? for a variable dim)."""
    return "[" + ", ".join(["batch", *(str(dim) if dim > 0 else "?" for dim in var.shape)]) + "]"


class LocalPredictor:
    """`pool_size` predictors per device (one CPU pool, or one pool per GPU card), lent out one call at a time."""

    def __init__(self, settings: PredictorSettings, model_config: GeneralModelConfig, pool_size: int = 1) -> None:
        self._settings = settings
        self._feeds: list[FeedVar] = list(model_config.feed_var)
        self._fetches: list[FetchVar] = list(model_config.fetch_var)
        if not self._feeds or not self._fetches:
            raise InitError(f"model config in {settings.model_dir} lists no feed or no fetch variables")
        self._dtypes = {var.name: self._feed_dtype(var) for var in self._feeds}
        self._idle: queue.Queue = queue.Queue()
        for predictor in self._build_pool(max(1, pool_size)):
            self._idle.put(predictor)

    @property
    def feed_names(self) -> list[str]:
        """Feed aliases in model-config order (what clients send)."""
        return [var.alias_name for var in self._feeds]

    @property
    def fetch_aliases(self) -> list[str]:
        """Fetch aliases in model-config order (the keys of predict's result)."""
        return [var.alias_name for var in self._fetches]

    def predict(self, feed: dict[str, np.ndarray], fetch: list[str] | None = None) -> dict[str, np.ndarray]:
        """Check the batch against the model config, run it on an idle predictor, return fetches by alias."""
        arrays = self._checked_feed(feed)
        wanted = self._selected_fetch(fetch)
        with self._lease() as predictor:
            try:
                for name, array in arrays.items():
                    handle = predictor.get_input_handle(name)
                    handle.reshape(list(array.shape))
                    handle.copy_from_cpu(np.ascontiguousarray(array))
                predictor.run()
                return {var.alias_name: predictor.get_output_handle(var.name).copy_to_cpu() for var in wanted}
            except Exception as exc:
                raise InferenceError(f"inference failed on model {self._settings.model_dir}: {_summary(exc)}") from exc

    @contextmanager
    def _lease(self) -> Iterator[inference.Predictor]:
        """Check out an idle predictor and always give it back, so errors never shrink the pool."""
        predictor = self._idle.get()
        try:
            yield predictor
        finally:
            self._idle.put(predictor)

    def _feed_dtype(self, var: FeedVar) -> type:
        """The numpy dtype a feed must arrive in; unsupported feed types fail at start, not per request."""
        if var.feed_type not in FEED_DTYPES:
            raise InitError(f"feed {var.alias_name!r} of {self._settings.model_dir} has feed_type {var.feed_type}, "
                            f"which the local predictor cannot feed (supported: {sorted(FEED_DTYPES)})")
        return FEED_DTYPES[var.feed_type]

    def _build_pool(self, pool_size: int) -> list[inference.Predictor]:
        """Per device: one created predictor plus clones sharing its weights; interleaved for round-robin use."""
        devices = list(self._settings.gpu_ids) if self._settings.device != "cpu" else [None]
        per_device = []
        for gpu_id in devices:
            first = self._create(gpu_id)
            try:
                per_device.append([first] + [first.clone() for _ in range(pool_size - 1)])
            except Exception as exc:
                raise InitError(f"cannot clone the predictor for {self._settings.model_dir}: {_summary(exc)}") from exc
        return [group[i] for i in range(pool_size) for group in per_device]

    def _create(self, gpu_id: int | None) -> inference.Predictor:
        """One predictor from the model folder's program, checked against the model config's names."""
        where = "CPU" if gpu_id is None else f"GPU {gpu_id}"
        try:
            program, params = find_program(self._settings.model_dir)
            config = inference.Config(str(program), str(params))
            apply_settings(config, self._settings, gpu_id)
            predictor = inference.create_predictor(config)
        except WeightsError as exc:
            raise InitError(str(exc)) from exc
        except Exception as exc:
            raise InitError(f"cannot create the Paddle Inference predictor for {self._settings.model_dir} on "
                            f"{where}: {_summary(exc)}") from exc
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

    def _checked_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Program input name -> array, after matching keys to feeds and checking each array."""
        if not isinstance(feed, dict):
            raise InputError(f"feed must be a dict of name -> array, got {type(feed).__name__}")
        if len(self._feeds) == 1 and len(feed) == 1:
            ((key, value),) = feed.items()
            return {self._feeds[0].name: self._checked_array(self._feeds[0], key, value)}
        valid = ", ".join(self.feed_names)
        by_key = {var.alias_name: var for var in self._feeds} | {var.name: var for var in self._feeds}
        unknown = [key for key in feed if key not in by_key]
        if unknown:
            raise InputError(f"unknown feed {unknown[0]!r}; the model takes: {valid}")
        arrays = {by_key[key].name: self._checked_array(by_key[key], key, value) for key, value in feed.items()}
        missing = [var.alias_name for var in self._feeds if var.name not in arrays]
        if missing:
            raise InputError(f"missing feed {missing[0]!r}; the model takes: {valid}")
        return arrays

    def _checked_array(self, var: FeedVar, key: str, value: object) -> np.ndarray:
        """dtype, rank, non-batch dims and batch size against the model config, named in any error."""
        expected = _shape_text(var)
        if not isinstance(value, np.ndarray):
            raise InputError(f"feed {key!r}: expected a numpy array {expected}, got {type(value).__name__}")
        dtype = np.dtype(self._dtypes[var.name])
        if value.dtype != dtype:
            raise InputError(f"feed {key!r}: got dtype {value.dtype}, expected {dtype}")
        if value.ndim != len(var.shape) + 1 or any(
            0 < want != got for got, want in zip(value.shape[1:], var.shape, strict=True)
        ):
            raise InputError(f"feed {key!r}: got shape {list(value.shape)}, expected {expected}")
        if not 1 <= value.shape[0] <= self._settings.max_batch_size:
            raise InputError(f"feed {key!r}: batch size {value.shape[0]} is outside 1..{self._settings.max_batch_size}"
                             " (max_batch_size)")
        return value

    def _selected_fetch(self, fetch: list[str] | None) -> list[FetchVar]:
        """Fetch variables by alias or name, in request order; None means all of them."""
        if fetch is None:
            return self._fetches
        fetch = [fetch] if isinstance(fetch, str) else list(fetch)
        by_key = {var.alias_name: var for var in self._fetches} | {var.name: var for var in self._fetches}
        unknown = [key for key in fetch if key not in by_key]
        if unknown or not fetch:
            valid = ", ".join(f"{var.alias_name} (name {var.name})" for var in self._fetches)
            what = f"unknown fetch {unknown[0]!r}" if unknown else "empty fetch list"
            raise InputError(f"{what}; the model's fetches are: {valid}")
        return list({by_key[key].name: by_key[key] for key in fetch}.values())
