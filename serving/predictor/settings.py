"""local_service_conf + the model's feed/fetch config -> everything a Paddle Inference Config needs, checked at start.

Plain data, no paddle import: the settings can be built, validated and inspected without loading Paddle.
"""

from dataclasses import dataclass, field
from pathlib import Path

from serving.config import LocalServiceConf
from serving.errors import ConfigError
from serving.predictor.engine_table import fastest_fp32
from serving.proto.general_model_config_pb2 import GeneralModelConfig

DEVICES = ("cpu", "gpu", "tensorrt")
TRT_CACHE_FOLDER = "_trt_cache"
ONNX_FILE = "inference.onnx"
INT8_ONNX_FILE = "inference.int8.onnx"  # python -m export --int8: ONNX Runtime's static QDQ quantization
DEFAULT_GPU_MEMORY_MB = 1000

ShapeRange = tuple[list[int], list[int], list[int]]


@dataclass(frozen=True)
class PredictorSettings:
    """One op's predictor options in Paddle Inference's terms (shapes include the batch dimension)."""

    model_dir: Path
    device: str = "cpu"
    gpu_ids: tuple[int, ...] = ()
    thread_num: int = 2
    use_mkldnn: bool = False
    mkldnn_cache_capacity: int = 0
    mkldnn_op_list: tuple[str, ...] = ()
    mkldnn_bf16_op_list: tuple[str, ...] = ()
    bf16: bool = False
    ir_optim: bool = False
    mem_optim: bool = True
    precision: str = "fp32"
    use_calib: bool = False
    min_subgraph_size: int = 3
    trt_workspace_bytes: int = 1024 * 2**20
    max_batch_size: int = 32
    dynamic_shapes: dict[str, ShapeRange] = field(default_factory=dict)
    trt_cache_dir: Path = Path(TRT_CACHE_FOLDER)
    gpu_memory_mb: int = DEFAULT_GPU_MEMORY_MB
    engine: str = "paddle"
    cpu_spin_wait: bool = False
    trt_fallback: str = "none"
    engine_choice: str = ""  # why this engine, for engine: auto (the card's timing table, or the fallback rule)


@dataclass(frozen=True)
class EngineChoice:
    """The engine an op runs, the oneDNN keys a measured choice brings with it, and why."""

    engine: str
    use_mkldnn: bool
    ir_optim: bool
    reason: str = ""


def summary(exc: BaseException, limit: int = 300) -> str:
    """Engines' errors span many lines (Paddle's may start with 'In user code:'): keep the first telling one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "In user code:"]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def device_of(conf: LocalServiceConf) -> str:
    """Paddle Serving's device_type (-1 means: GPU when `devices` names cards, else CPU) as a device name."""
    if conf.device_type == -1:
        return "gpu" if conf.gpu_ids else "cpu"
    return DEVICES[conf.device_type]


def derived_shapes(model_config: GeneralModelConfig, max_batch_size: int) -> dict[str, ShapeRange]:
    """TensorRT ranges covering batch 1..max_batch_size for every feed whose other dims are fixed."""
    opt_batch = max(1, max_batch_size // 2)
    return {
        var.name: ([1, *var.shape], [opt_batch, *var.shape], [max_batch_size, *var.shape])
        for var in model_config.feed_var
        if all(dim > 0 for dim in var.shape)
    }


def given_shapes(info: dict, path: str) -> dict[str, ShapeRange]:
    """Paddle Serving's set_dynamic_shape_info dict as ranges; each name needs min, opt and max of one rank."""
    parts = [info.get(key) or {} for key in ("min_input_shape", "opt_input_shape", "max_input_shape")]
    ranges = {}
    for name in sorted(set().union(*parts)):
        shapes = [part.get(name) for part in parts]
        if any(shape is None for shape in shapes) or len({len(shape) for shape in shapes}) != 1:
            raise ConfigError.invalid(f"{path}.dynamic_shape_info.{name}", shapes,
                                      "give min_input_shape, opt_input_shape and "
                                      "max_input_shape for it, all of the same rank")
        low, opt, high = ([int(dim) for dim in shape] for shape in shapes)
        if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
            raise ConfigError.invalid(f"{path}.dynamic_shape_info.{name}", shapes,
                                      "need min <= opt <= max in every dimension")
        ranges[name] = (low, opt, high)
    return ranges


def dynamic_shapes(model_config: GeneralModelConfig, max_batch_size: int, info: dict | None,
                   path: str) -> dict[str, ShapeRange]:
    """Derived ranges, overridden per name by the op's dynamic shape info; every feed must end up covered."""
    shapes = {**derived_shapes(model_config, max_batch_size), **given_shapes(info or {}, path)}
    for var in model_config.feed_var:
        if var.name not in shapes:
            raise ConfigError.invalid(f"{path}.dynamic_shape_info", info,
                                      f"feed {var.name!r} has variable dims {list(var.shape)}; "
                                      "TensorRT needs its min/opt/max shapes from the op's set_dynamic_shape_info")
    return shapes


def choose_engine(conf: LocalServiceConf, device: str, path: str) -> EngineChoice:
    """`auto` on CPU runs the fastest FP32 engine the model card recorded for this machine; without such a table,
    ONNX Runtime when the export has an ONNX file (measured faster or equal on the kit's machines), else Paddle."""
    model_dir = Path(conf.model_config)
    has_onnx = (model_dir / ONNX_FILE).is_file()
    configured = EngineChoice(conf.engine, conf.use_mkldnn, conf.ir_optim)
    if device == "cpu" and conf.precision == "int8":
        if not (model_dir / INT8_ONNX_FILE).is_file():
            raise ConfigError.invalid(f"{path}.precision", conf.precision, f"no {INT8_ONNX_FILE} in "
                                      f"{conf.model_config}; export with --int8 --calib-images DIR")
        return EngineChoice("onnxruntime", conf.use_mkldnn, conf.ir_optim, "precision int8: the INT8 model on ONNX "
                                                                           "Runtime")
    if conf.engine == "auto":
        fastest = fastest_fp32(model_dir, conf.thread_num) if (device, conf.precision) == ("cpu", "fp32") else None
        if fastest is not None:
            chosen = fastest.engine.conf
            return EngineChoice(chosen["engine"], chosen.get("use_mkldnn", conf.use_mkldnn),
                                chosen.get("ir_optim", conf.ir_optim), fastest.reason)
        engine = "onnxruntime" if (device, conf.precision) == ("cpu", "fp32") and has_onnx else "paddle"
        reason = ("auto: no engine timing recorded for this machine (python -m export --measure DIR records one); "
                  f"{engine}, the default rule") if device == "cpu" else ""
        return EngineChoice(engine, conf.use_mkldnn, conf.ir_optim, reason)
    if conf.engine == "onnxruntime" and device == "tensorrt" and conf.precision == "int8":
        raise ConfigError.invalid(f"{path}.precision", conf.precision,
                                  "ONNX Runtime's TensorRT provider runs fp32 or fp16 here; int8 uses engine paddle")
    if conf.engine == "onnxruntime" and not has_onnx:
        raise ConfigError.invalid(f"{path}.engine", conf.engine,
                                  f"no {ONNX_FILE} in {conf.model_config}; export with --onnx")
    return configured


def engine_of(conf: LocalServiceConf, device: str, path: str) -> str:
    """The engine name `choose_engine` settles on."""
    return choose_engine(conf, device, path).engine


def check_against_model(conf: LocalServiceConf, model_config: GeneralModelConfig, path: str) -> None:
    """The checks that need the model config or combine keys config.py checks one by one."""
    known = {var.alias_name for var in model_config.fetch_var} | {var.name for var in model_config.fetch_var}
    for name in conf.fetch_list or []:
        if name not in known:
            raise ConfigError.invalid(f"{path}.fetch_list", conf.fetch_list,
                                      f"{name!r} is not a fetch of the model; it has "
                                      + ", ".join(f"{var.alias_name} (name {var.name})"
                                                  for var in model_config.fetch_var))
    if conf.use_calib and (conf.precision != "int8" or device_of(conf) != "tensorrt"):
        raise ConfigError.invalid(f"{path}.use_calib", conf.use_calib,
                                  "calibration needs precision int8 with device_type 2 (TensorRT)")
    cpu_int8 = device_of(conf) == "cpu" and conf.engine != "paddle"
    if conf.precision == "int8" and device_of(conf) != "tensorrt" and not cpu_int8:
        raise ConfigError.invalid(f"{path}.precision", conf.precision, "int8 runs on TensorRT only on GPU: set "
                                  "device_type 2 (on CPU it runs with engine onnxruntime, from an export with --int8)")
    if conf.precision == "bf16" and not conf.use_mkldnn:
        raise ConfigError.invalid(f"{path}.precision", conf.precision, "bf16 runs on oneDNN: set use_mkldnn: true")


def settings_from_conf(conf: LocalServiceConf, model_config: GeneralModelConfig, dynamic_shape_info: dict | None = None,
                       path: str = "local_service_conf") -> PredictorSettings:
    """Validate `conf` against the model and translate it; `path` prefixes key names in error messages."""
    check_against_model(conf, model_config, path)
    device = device_of(conf)
    model_dir = Path(conf.model_config)
    shapes = dynamic_shapes(model_config, conf.max_batch_size, dynamic_shape_info, path) if device == "tensorrt" else {}
    choice = choose_engine(conf, device, path)
    return PredictorSettings(
        model_dir=model_dir,
        device=device,
        gpu_ids=tuple(conf.gpu_ids) if device != "cpu" else (),
        thread_num=conf.thread_num,
        use_mkldnn=choice.use_mkldnn,
        mkldnn_cache_capacity=conf.mkldnn_cache_capacity,
        mkldnn_op_list=tuple(conf.mkldnn_op_list or ()),
        mkldnn_bf16_op_list=tuple(conf.mkldnn_bf16_op_list or ()),
        bf16=device == "cpu" and conf.precision == "bf16",
        ir_optim=choice.ir_optim,
        mem_optim=conf.mem_optim,
        precision=conf.precision,
        use_calib=conf.use_calib,
        min_subgraph_size=conf.min_subgraph_size,
        trt_workspace_bytes=conf.trt_workspace_mb * 2**20,
        max_batch_size=conf.max_batch_size,
        dynamic_shapes=shapes,
        trt_cache_dir=Path(conf.trt_cache_dir) if conf.trt_cache_dir else model_dir / TRT_CACHE_FOLDER,
        engine=choice.engine,
        engine_choice=choice.reason,
        cpu_spin_wait=conf.cpu_spin_wait,
        trt_fallback=conf.trt_fallback,
    )
