"""PIR-TensorRT: what the kit asks paddle.tensorrt for, its cache, and every way TensorRT can fail to engage.

paddle.tensorrt exists only in Paddle's GPU build; a stand-in module records the calls (the real CPU build's
missing module is tested as it is).
"""

import json
import logging
import shutil
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from paddle import inference

from serving.config import LocalServiceConf
from serving.errors import ConfigError, InitError
from serving.model_config import SERVER_CONF, read_config
from serving.model_files import find_program
from serving.predictor import settings_from_conf
from serving.predictor.ort_engine import CUDA, TENSORRT, OrtEngine
from serving.predictor.settings import PredictorSettings
from serving.predictor.tensorrt import ENGINE_OP, TensorRTUnavailableError, make_plan, needs_conversion, prepare
from tests.test_predictor import RecordingConfig

GPU = "NVIDIA H200"
VERSIONS = ("3.3.1", "10.9.0")


class StandInTensorRT(types.ModuleType):
    """paddle.tensorrt's surface (Input, TensorRTConfig, PrecisionMode, convert), recording each conversion."""

    def __init__(self, engine_ops: int = 2, fail: bool = False, meanwhile: Callable[[], None] | None = None) -> None:
        super().__init__("paddle.tensorrt")
        self.engine_ops, self.fail, self.meanwhile = engine_ops, fail, meanwhile
        self.conversions: list[tuple[str, dict, list[dict]]] = []
        self.PrecisionMode = types.SimpleNamespace(FP32="FP32", FP16="FP16", INT8="INT8")
        self.Input = lambda **kwargs: kwargs
        self.TensorRTConfig = lambda **kwargs: kwargs

    def convert(self, model_path: str, config: dict) -> object:
        prefix = Path(config["save_model_dir"])
        prefix.with_suffix(".json").write_text('{"program": "converted"}')
        if self.fail:
            raise RuntimeError("TensorRT builder failed: out of memory")
        prefix.with_suffix(".pdiparams").write_bytes(b"params")
        if self.meanwhile is not None:
            self.meanwhile()
        self.conversions.append((model_path, {k: v for k, v in config.items() if k != "inputs"}, config["inputs"]))
        ops = [ENGINE_OP] * self.engine_ops + ["pd_op.feed", "pd_op.fetch"]
        block = types.SimpleNamespace(ops=[types.SimpleNamespace(name=lambda name=name: name) for name in ops])
        return types.SimpleNamespace(global_block=lambda: block)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[..., StandInTensorRT]:
    def install(**kwargs: object) -> StandInTensorRT:
        module = StandInTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "paddle.tensorrt", module)
        return module

    return install


@pytest.fixture(scope="module")
def server_dir(squeezenet_root: Path) -> Path:
    return squeezenet_root / "serving_server"


@pytest.fixture
def trt_settings(server_dir: Path, tmp_path: Path) -> PredictorSettings:
    conf = LocalServiceConf(model_config=str(server_dir), device_type=2, devices="0", precision="fp16",
                            max_batch_size=8, trt_workspace_mb=512, min_subgraph_size=5,
                            trt_cache_dir=str(tmp_path / "cache"))
    conf.validate("op.imagenet.local_service_conf")
    return settings_from_conf(conf, read_config(server_dir / SERVER_CONF))


def test_conversion_asks_for_every_batch_shape_precision_and_workspace(
        stand_in: Callable[..., StandInTensorRT], trt_settings: PredictorSettings, server_dir: Path) -> None:
    module = stand_in()
    program, params = find_program(server_dir)
    assert program.suffix == ".json" and needs_conversion(trt_settings, program)
    converted = prepare(trt_settings, program, params, GPU, VERSIONS)
    ((path, config, inputs),) = module.conversions
    assert path == str(program)
    assert inputs == [{"min_input_shape": (1, 3, 224, 224), "optim_input_shape": (4, 3, 224, 224),
                       "max_input_shape": (8, 3, 224, 224), "name": "x"}]
    assert config["precision_mode"] == "FP16" and config["workspace_size"] == 512 * 2**20
    assert config["min_subgraph_size"] == 5
    assert converted.engine_ops == 2 and not converted.fallback
    assert converted.program.parent.parent == trt_settings.trt_cache_dir
    assert converted.program.is_file() and converted.params.is_file()
    record = json.loads((converted.program.parent / "engine.json").read_text())
    assert record["engine_ops"] == 2 and record["plan"]["gpu_name"] == GPU and record["plan"]["precision"] == "fp16"
    assert converted.describe()["engine"] == "paddle-tensorrt"


def test_the_same_plan_reuses_the_cache_and_a_changed_one_converts_again(
        stand_in: Callable[..., StandInTensorRT], trt_settings: PredictorSettings, server_dir: Path) -> None:
    module = stand_in()
    program, params = find_program(server_dir)
    first = prepare(trt_settings, program, params, GPU, VERSIONS)
    again = prepare(trt_settings, program, params, GPU, VERSIONS)
    assert len(module.conversions) == 1 and again == first
    prepare(replace(trt_settings, precision="fp32"), program, params, GPU, VERSIONS)
    prepare(trt_settings, program, params, "Tesla T4", VERSIONS)
    prepare(trt_settings, program, params, GPU, ("3.3.1", "10.13.0"))
    assert [config["precision_mode"] for _, config, _ in module.conversions] == ["FP16", "FP32", "FP16", "FP16"]
    assert len(list(trt_settings.trt_cache_dir.glob("pir-*"))) == 4


def test_a_program_with_no_engine_op_is_refused_unless_the_fallback_is_chosen(
        stand_in: Callable[..., StandInTensorRT], trt_settings: PredictorSettings, server_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    stand_in(engine_ops=0)
    program, params = find_program(server_dir)
    with pytest.raises(TensorRTUnavailableError, match=f"TensorRT did not engage: .* holds no {ENGINE_OP} op"):
        prepare(trt_settings, program, params, GPU, VERSIONS)
    with caplog.at_level(logging.WARNING, logger="serving.tensorrt"):
        fallback = prepare(replace(trt_settings, trt_fallback="gpu"), program, params, GPU, VERSIONS)
    assert fallback.fallback and (fallback.program, fallback.params) == (program, params)
    assert "TENSORRT IS OFF" in caplog.text and "trt_fallback" in fallback.describe()["engine"]


def test_the_cpu_build_says_tensorrt_cannot_engage_and_how_to_get_it(trt_settings: PredictorSettings,
                                                                     server_dir: Path) -> None:
    program, params = find_program(server_dir)
    with pytest.raises(TensorRTUnavailableError, match=r"this Paddle build has no paddle.tensorrt.*paddlepaddle-gpu"):
        prepare(trt_settings, program, params, GPU, VERSIONS)


def test_int8_needs_a_quantized_program(stand_in: Callable[..., StandInTensorRT], trt_settings: PredictorSettings,
                                        server_dir: Path) -> None:
    module = stand_in()
    program, params = find_program(server_dir)
    with pytest.raises(TensorRTUnavailableError, match="INT8 on a PIR program needs a quantized model"):
        prepare(replace(trt_settings, precision="int8"), program, params, GPU, VERSIONS)
    assert module.conversions == []


def test_a_failed_conversion_leaves_nothing_half_written(stand_in: Callable[..., StandInTensorRT],
                                                          trt_settings: PredictorSettings, server_dir: Path) -> None:
    stand_in(fail=True)
    program, params = find_program(server_dir)
    with pytest.raises(TensorRTUnavailableError, match=r"conversion of .* failed: TensorRT builder failed"):
        prepare(trt_settings, program, params, GPU, VERSIONS)
    assert list(trt_settings.trt_cache_dir.iterdir()) == []


def test_a_worker_that_finished_the_same_conversion_first_wins(stand_in: Callable[..., StandInTensorRT],
                                                              trt_settings: PredictorSettings,
                                                              server_dir: Path) -> None:
    program, params = find_program(server_dir)
    final = trt_settings.trt_cache_dir / f"pir-{make_plan(trt_settings, program, GPU, VERSIONS).key}"

    def other_worker_finishes() -> None:
        final.mkdir(parents=True)
        (final / "inference.json").write_text("{}")
        (final / "inference.pdiparams").write_bytes(b"params")
        (final / "engine.json").write_text('{"engine_ops": 2}')

    stand_in(meanwhile=other_worker_finishes)
    converted = prepare(trt_settings, program, params, GPU, VERSIONS)
    assert (converted.program, converted.engine_ops) == (final / "inference.json", 2)
    assert [path.name for path in trt_settings.trt_cache_dir.iterdir()] == [final.name]


def test_legacy_pdmodel_keeps_enable_tensorrt_engine(trt_settings: PredictorSettings, tmp_path: Path) -> None:
    assert not needs_conversion(trt_settings, tmp_path / "inference.pdmodel")
    assert not needs_conversion(replace(trt_settings, device="gpu"), tmp_path / "inference.json")


def test_a_converted_program_runs_on_the_gpu_without_enable_tensorrt_engine(trt_settings: PredictorSettings) -> None:
    from serving.predictor import apply_settings

    config = RecordingConfig()
    apply_settings(config, trt_settings, 0, legacy_tensorrt=False)
    names = [name for name, _, _ in config.calls]
    assert names[0] == "enable_use_gpu" and config.calls[0][1][2] == inference.PrecisionType.Float32
    assert "enable_tensorrt_engine" not in names and "enable_new_executor" in names


# ONNX Runtime on GPU: the providers asked for, and the session's real providers checked


class StandInSession:
    """onnxruntime.InferenceSession's surface; `loaded` is what a machine's ONNX Runtime really loads."""

    loaded: ClassVar[list[str]] = ["CPUExecutionProvider"]
    created: ClassVar[list[list]] = []
    outputs: ClassVar[list[str]] = []

    def __init__(self, path: str, options: object, providers: list) -> None:
        StandInSession.created.append(providers)

    def get_providers(self) -> list[str]:
        return list(StandInSession.loaded)

    def get_inputs(self) -> list:
        return [types.SimpleNamespace(name="x")]

    def get_outputs(self) -> list:
        return [types.SimpleNamespace(name=name) for name in StandInSession.outputs]


@pytest.fixture
def onnx_model(server_dir: Path, tmp_path: Path) -> Path:
    """The export plus an inference.onnx file (the stand-in session never reads it)."""
    folder = tmp_path / "with_onnx"
    shutil.copytree(server_dir, folder)
    (folder / "inference.onnx").write_bytes(b"onnx")
    return folder


def ort_engine(onnx_model: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str], **conf: object) -> OrtEngine:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", StandInSession)
    monkeypatch.setattr(StandInSession, "loaded", loaded)
    monkeypatch.setattr(StandInSession, "created", [])
    local = LocalServiceConf(model_config=str(onnx_model), engine="onnxruntime", devices="1", max_batch_size=8,
                             trt_cache_dir=str(onnx_model / "cache"), **conf)
    local.validate("op.imagenet.local_service_conf")
    model_config = read_config(onnx_model / SERVER_CONF)
    monkeypatch.setattr(StandInSession, "outputs", [var.name for var in model_config.fetch_var])
    return OrtEngine(settings_from_conf(local, model_config), list(model_config.feed_var),
                     list(model_config.fetch_var))


def test_onnx_runtime_on_cuda_asks_for_the_card_and_checks_it_loaded(onnx_model: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ort_engine(onnx_model, monkeypatch, [CUDA, "CPUExecutionProvider"], device_type=1)
    assert len(engine.build_pool(2)) == 2
    assert StandInSession.created == [[(CUDA, {"device_id": 1})]]
    assert engine.describe() == {"providers": [CUDA, "CPUExecutionProvider"], "model_file": "inference.onnx"}
    quiet_fallback = ort_engine(onnx_model, monkeypatch, ["CPUExecutionProvider"], device_type=1)
    with pytest.raises(InitError, match=r"did not load CUDAExecutionProvider .*onnxruntime-gpu"):
        quiet_fallback.build_pool(1)


def test_onnx_runtime_on_tensorrt_asks_for_shapes_fp16_and_the_engine_cache(onnx_model: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ort_engine(onnx_model, monkeypatch, [TENSORRT, CUDA], device_type=2, precision="fp16",
                        trt_workspace_mb=256)
    engine.build_pool(1)
    ((trt, options), cuda) = StandInSession.created[0]
    assert (trt, cuda) == (TENSORRT, (CUDA, {"device_id": 1}))
    assert options["trt_fp16_enable"] and options["trt_max_workspace_size"] == 256 * 2**20
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(onnx_model / "cache" /
                                                                                           "onnxruntime")
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"],
            options["trt_profile_max_shapes"]) == ("x:1x3x224x224", "x:4x3x224x224", "x:8x3x224x224")


def test_onnx_runtime_without_its_tensorrt_provider_fails_unless_the_fallback_is_chosen(
        onnx_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TensorRTUnavailableError, match="TensorRT cannot engage: ONNX Runtime did not load"):
        ort_engine(onnx_model, monkeypatch, [CUDA, "CPUExecutionProvider"], device_type=2).build_pool(1)
    fallback = ort_engine(onnx_model, monkeypatch, [CUDA, "CPUExecutionProvider"], device_type=2,
                          trt_fallback="gpu")
    with caplog.at_level(logging.WARNING, logger="serving.ort"):
        fallback.build_pool(1)
    assert "TENSORRT IS OFF" in caplog.text
    with pytest.raises(TensorRTUnavailableError):  # nothing to fall back to: not even CUDA loaded
        ort_engine(onnx_model, monkeypatch, ["CPUExecutionProvider"], device_type=2, trt_fallback="gpu").build_pool(1)


def test_onnx_runtime_int8_on_tensorrt_is_refused_at_load(onnx_model: Path) -> None:
    local = LocalServiceConf(model_config=str(onnx_model), engine="onnxruntime", device_type=2, devices="0",
                             precision="int8")
    local.validate("op.imagenet.local_service_conf")
    with pytest.raises(ConfigError, match="ONNX Runtime's TensorRT provider runs fp32 or fp16"):
        settings_from_conf(local, read_config(onnx_model / SERVER_CONF))


def test_an_op_running_without_tensorrt_says_so_in_its_metrics() -> None:
    from serving import metrics
    from serving.config import LimitsConfig, OpConfig
    from serving.pipeline.op import Op

    class FellBack:
        """A predictor's start-up facts after trt_fallback: gpu took over."""

        engine_info: ClassVar[dict] = {"engine": "paddle-gpu (TensorRT off: trt_fallback)", "tensorrt_engine_ops": 0}
        max_batch_size = 8

    op = Op(name="trt_probe")
    op.configure(OpConfig(local_service_conf=LocalServiceConf(model_config="unused")), LimitsConfig())
    op.start(lambda _: FellBack())
    assert 'serving_tensorrt_engine_ops{op="trt_probe"} 0.0' in metrics.render().decode()
