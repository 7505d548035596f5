"""The local predictor: settings from local_service_conf, Config calls, and real Paddle Inference runs."""

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from paddle import inference

from export import inference_io
from serving.config import LocalServiceConf
from serving.errors import ConfigError, InferenceError, InitError, InputError
from serving.model_config import FLOAT32, SERVER_CONF, VarSpec, build_config, read_config, write_config
from serving.predictor import LocalPredictor, PredictorSettings, apply_settings, settings_from_conf
from serving.proto.general_model_config_pb2 import GeneralModelConfig

PATH = "op.cls.local_service_conf"
IMAGE = (3, 224, 224)


@pytest.fixture(scope="module")
def server_dir(squeezenet_root: Path) -> Path:
    """A real SqueezeNet1_1 serving_server folder (random weights): feed x, fetch alias prediction."""
    return squeezenet_root / "serving_server"


@pytest.fixture(scope="module")
def model_config(server_dir: Path) -> GeneralModelConfig:
    """The exported model's serving_server_conf."""
    return read_config(server_dir / SERVER_CONF)


@pytest.fixture(scope="module")
def make_conf(server_dir: Path) -> Callable[..., LocalServiceConf]:
    """A validated local_service_conf pointing at the exported model."""

    def make(**overrides: object) -> LocalServiceConf:
        conf = LocalServiceConf(**{"model_config": str(server_dir), **overrides})
        conf.validate(PATH)
        return conf

    return make


@pytest.fixture(scope="module")
def reference(server_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The exporter's own CPU predictor: the outputs LocalPredictor must reproduce."""
    predictor = inference_io.create_predictor(server_dir)
    return lambda batch: inference_io.run(predictor, batch)[0]


@pytest.fixture(scope="module")
def predictor(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig) -> LocalPredictor:
    """CPU, default options, max batch 4, two pooled predictors: shared by the request-level tests."""
    return LocalPredictor(settings_from_conf(make_conf(max_batch_size=4, thread_num=1), model_config), model_config, 2)


def images(batch: int, seed: int = 0) -> np.ndarray:
    """A reproducible float32 NCHW batch in [0, 1)."""
    return np.random.default_rng(seed).random((batch, *IMAGE), dtype=np.float32)


# settings_from_conf


def test_cpu_settings(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                      server_dir: Path) -> None:
    conf = make_conf(thread_num=4, use_mkldnn=True, mkldnn_cache_capacity=10, mkldnn_op_list=["conv2d"],
                     ir_optim=True, mem_optim=False)
    settings = settings_from_conf(conf, model_config)
    assert settings == PredictorSettings(
        model_dir=server_dir, device="cpu", gpu_ids=(), thread_num=4, use_mkldnn=True, mkldnn_cache_capacity=10,
        mkldnn_op_list=("conv2d",), ir_optim=True, mem_optim=False, trt_cache_dir=server_dir / "_trt_cache",
        engine_choice="auto: no engine timing recorded for this machine (python -m export --measure DIR records one); "
                      "paddle, the default rule")
    assert settings_from_conf(make_conf(device_type=0, devices="0"), model_config).device == "cpu"


def test_bf16_settings(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig) -> None:
    conf = make_conf(precision="bf16", use_mkldnn=True, mkldnn_bf16_op_list=["conv2d", "pool2d"])
    settings = settings_from_conf(conf, model_config)
    assert settings.bf16 and settings.use_mkldnn and settings.mkldnn_bf16_op_list == ("conv2d", "pool2d")
    assert not settings_from_conf(make_conf(), model_config).bf16


@pytest.mark.parametrize("device_type", [-1, 1])
def test_gpu_settings(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                      device_type: int) -> None:
    settings = settings_from_conf(make_conf(device_type=device_type, devices="0,1"), model_config)
    assert (settings.device, settings.gpu_ids, settings.gpu_memory_mb) == ("gpu", (0, 1), 1000)
    assert settings.dynamic_shapes == {}


def test_tensorrt_settings_cover_every_batch(make_conf: Callable[..., LocalServiceConf],
                                             model_config: GeneralModelConfig, server_dir: Path) -> None:
    conf = make_conf(device_type=2, devices="0", precision="fp16", max_batch_size=8, trt_workspace_mb=512,
                     min_subgraph_size=5)
    settings = settings_from_conf(conf, model_config)
    assert (settings.device, settings.gpu_ids, settings.precision) == ("tensorrt", (0,), "fp16")
    assert settings.trt_workspace_bytes == 512 * 2**20
    assert (settings.max_batch_size, settings.min_subgraph_size) == (8, 5)
    assert settings.dynamic_shapes == {"x": ([1, *IMAGE], [4, *IMAGE], [8, *IMAGE])}
    low, opt, high = settings.dynamic_shapes["x"]
    assert all(low[0] <= batch <= high[0] for batch in range(1, 9)) and low[0] <= opt[0] <= high[0]
    assert settings.trt_cache_dir == server_dir / "_trt_cache"


def test_tensorrt_cache_dir_and_shape_info_override(make_conf: Callable[..., LocalServiceConf],
                                                    model_config: GeneralModelConfig, tmp_path: Path) -> None:
    conf = make_conf(device_type=2, devices="1", trt_cache_dir=str(tmp_path / "engines"))
    info = {"min_input_shape": {"x": [1, 3, 112, 112]}, "opt_input_shape": {"x": [2, 3, 224, 224]},
            "max_input_shape": {"x": [4, 3, 448, 448]}}
    settings = settings_from_conf(conf, model_config, info)
    assert settings.trt_cache_dir == tmp_path / "engines"
    assert settings.dynamic_shapes == {"x": ([1, 3, 112, 112], [2, 3, 224, 224], [4, 3, 448, 448])}


@pytest.mark.parametrize(("overrides", "info", "key", "hint"), [
    ({"fetch_list": ["prediction", "logits"]}, None, "fetch_list", "'logits' is not a fetch of the model"),
    ({"use_calib": True, "device_type": 2, "devices": "0"}, None, "use_calib", "precision int8"),
    ({"precision": "int8", "device_type": 1, "devices": "0"}, None, "precision", "TensorRT only"),
    ({"precision": "bf16"}, None, "precision", "use_mkldnn: true"),
    ({"device_type": 2, "devices": "0"}, {"min_input_shape": {"x": [1, 3, 224, 224]}},
     "dynamic_shape_info.x", "opt_input_shape"),
    ({"device_type": 2, "devices": "0"}, {key: {"x": shape} for key, shape in [
        ("min_input_shape", [2, 3, 224, 224]), ("opt_input_shape", [1, 3, 224, 224]),
        ("max_input_shape", [4, 3, 224, 224])]}, "dynamic_shape_info.x", "min <= opt <= max"),
])
def test_model_dependent_errors(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                                overrides: dict, info: dict | None, key: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"config {PATH}.{key} = ") as caught:
        settings_from_conf(make_conf(**overrides), model_config, info, path=PATH)
    assert hint in str(caught.value)


def test_fetch_list_accepts_alias_and_name(make_conf: Callable[..., LocalServiceConf],
                                           model_config: GeneralModelConfig) -> None:
    settings_from_conf(make_conf(fetch_list=["prediction", model_config.fetch_var[0].name]), model_config)


def test_variable_dims_need_shape_info_for_tensorrt(make_conf: Callable[..., LocalServiceConf]) -> None:
    config = build_config([VarSpec("x", "image", FLOAT32, (3, -1, -1))], [VarSpec("out", "prediction", FLOAT32, (9,))])
    with pytest.raises(ConfigError, match="feed 'x' has variable dims"):
        settings_from_conf(make_conf(device_type=2, devices="0"), config, path=PATH)
    info = {key: {"x": [1, 3, 64, 64]} for key in ("min_input_shape", "opt_input_shape", "max_input_shape")}
    settings = settings_from_conf(make_conf(device_type=2, devices="0"), config, info)
    assert settings.dynamic_shapes["x"] == ([1, 3, 64, 64],) * 3


# apply_settings


class RecordingConfig:
    """Stands in for paddle.inference.Config: records each call, fails on any method the real one lacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not hasattr(inference.Config, name):
            pytest.fail(f"apply_settings called {name}, which paddle.inference.Config does not have")
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def recorded(settings: PredictorSettings, gpu_id: int | None = None) -> list[tuple]:
    """apply_settings' calls as (name, *args[, kwargs]) tuples, easy to compare whole."""
    config = RecordingConfig()
    apply_settings(config, settings, gpu_id)
    return [(name, *args, *([kwargs] if kwargs else [])) for name, args, kwargs in config.calls]


COMMON_TAIL = [("switch_ir_optim", True), ("enable_memory_optim",), ("disable_glog_info",),
               ("switch_use_feed_fetch_ops", False)]


def test_cpu_with_mkldnn_calls(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig) -> None:
    conf = make_conf(thread_num=4, use_mkldnn=True, mkldnn_cache_capacity=10, mkldnn_op_list=["conv2d"],
                     ir_optim=True)
    assert recorded(settings_from_conf(conf, model_config)) == [
        ("disable_gpu",), ("set_cpu_math_library_num_threads", 4), ("enable_mkldnn",),
        ("set_mkldnn_cache_capacity", 10), ("set_mkldnn_op", {"conv2d"}), ("enable_new_executor",), *COMMON_TAIL]


def test_cpu_bf16_calls(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig) -> None:
    conf = make_conf(precision="bf16", use_mkldnn=True, mkldnn_bf16_op_list=["conv2d"], ir_optim=True)
    assert recorded(settings_from_conf(conf, model_config))[:5] == [
        ("disable_gpu",), ("set_cpu_math_library_num_threads", 2), ("enable_mkldnn",), ("enable_mkldnn_bfloat16",),
        ("set_bfloat16_op", {"conv2d"})]


def test_cpu_without_mkldnn_disables_it(make_conf: Callable[..., LocalServiceConf],
                                        model_config: GeneralModelConfig) -> None:
    assert recorded(settings_from_conf(make_conf(use_mkldnn=False, mem_optim=False), model_config)) == [
        ("disable_gpu",), ("set_cpu_math_library_num_threads", 2), ("disable_mkldnn",), ("enable_new_executor",),
        ("switch_ir_optim", False), ("disable_glog_info",), ("switch_use_feed_fetch_ops", False)]


@pytest.mark.parametrize(("precision", "mode"), [("fp32", "Float32"), ("fp16", "Half")])
def test_gpu_calls(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig, precision: str,
                   mode: str) -> None:
    settings = settings_from_conf(make_conf(device_type=1, devices="0,1", precision=precision, ir_optim=True),
                                  model_config)
    assert recorded(settings, gpu_id=1) == [
        ("enable_use_gpu", 1000, 1, getattr(inference.PrecisionType, mode)), ("enable_new_executor",), *COMMON_TAIL]


def test_tensorrt_fp16_calls(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                             tmp_path: Path) -> None:
    cache = tmp_path / "engines"
    conf = make_conf(device_type=2, devices="0", precision="fp16", max_batch_size=8, trt_workspace_mb=512,
                     min_subgraph_size=5, ir_optim=True, trt_cache_dir=str(cache))
    calls = recorded(settings_from_conf(conf, model_config), gpu_id=0)
    engine = {"workspace_size": 512 * 2**20, "max_batch_size": 8, "min_subgraph_size": 5,
              "precision_mode": inference.PrecisionType.Half, "use_static": True, "use_calib_mode": False}
    assert calls == [
        ("enable_use_gpu", 1000, 0, inference.PrecisionType.Float32), ("enable_tensorrt_engine", engine),
        ("set_trt_dynamic_shape_info", {"x": [1, *IMAGE]}, {"x": [8, *IMAGE]}, {"x": [4, *IMAGE]}),
        ("set_optim_cache_dir", str(cache)), *COMMON_TAIL]
    assert cache.is_dir()


@pytest.mark.parametrize("use_mkldnn", [True, False])
def test_real_config_reflects_mkldnn(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                                     server_dir: Path, use_mkldnn: bool) -> None:
    program, params = inference_io.find_program(server_dir)
    config = inference.Config(str(program), str(params))
    apply_settings(config, settings_from_conf(make_conf(use_mkldnn=use_mkldnn, thread_num=3), model_config), None)
    assert config.mkldnn_enabled() is use_mkldnn
    assert (config.use_gpu(), config.cpu_math_library_num_threads(), config.ir_optim()) == (False, 3, False)


# LocalPredictor on the exported model


@pytest.mark.parametrize("batch", [1, 3])
def test_matches_reference(predictor: LocalPredictor, reference: Callable, batch: int) -> None:
    x = images(batch, seed=batch)
    out = predictor.predict({"x": x})
    assert list(out) == ["prediction"] and out["prediction"].shape == (batch, 1000)
    np.testing.assert_allclose(out["prediction"], reference(x), rtol=0, atol=1e-5)


def test_mkldnn_ir_optim_predictor_matches_reference(make_conf: Callable[..., LocalServiceConf],
                                                     model_config: GeneralModelConfig, reference: Callable) -> None:
    settings = settings_from_conf(make_conf(use_mkldnn=True, ir_optim=True, thread_num=1), model_config)
    x = images(2, seed=7)
    out = LocalPredictor(settings, model_config).predict({"x": x})["prediction"]
    np.testing.assert_allclose(out, reference(x), rtol=0, atol=1e-5)


def test_names(predictor: LocalPredictor) -> None:
    assert (predictor.feed_names, predictor.fetch_aliases) == (["x"], ["prediction"])


def test_fetch_by_alias_or_name_and_any_single_feed_key(predictor: LocalPredictor, model_config: GeneralModelConfig,
                                                        reference: Callable) -> None:
    x = images(2, seed=11)
    expected = reference(x)
    for fetch in (["prediction"], [model_config.fetch_var[0].name], "prediction"):
        np.testing.assert_allclose(predictor.predict({"x": x}, fetch)["prediction"], expected, rtol=0, atol=1e-5)
    for key in ("image", "inputs"):
        np.testing.assert_allclose(predictor.predict({key: x})["prediction"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("feed", "fetch", "parts"), [
    ({"x": images(1).astype(np.float64)}, None, ["feed 'x'", "float64", "float32"]),
    ({"image": images(1).astype(np.uint8)}, None, ["feed 'image'", "uint8", "float32"]),
    ({"x": images(1)[:, :, :32, :32]}, None, ["feed 'x'", "[1, 3, 32, 32]", "[batch, 3, 224, 224]"]),
    ({"x": images(1)[0]}, None, ["[3, 224, 224]", "[batch, 3, 224, 224]"]),
    ({"x": images(5)}, None, ["batch size 5", "1..4"]),
    ({"x": images(1)[:0]}, None, ["batch size 0", "1..4"]),
    ({"x": images(1).tolist()}, None, ["feed 'x'", "numpy array", "list"]),
    ({"x": images(1), "y": images(1)}, None, ["unknown feed 'y'", "takes: x"]),
    ({"x": images(1)}, ["prediction", "nope"], ["unknown fetch 'nope'", "prediction (name "]),
    ({"x": images(1)}, [], ["empty fetch list"]),
])
def test_bad_requests_are_input_errors(predictor: LocalPredictor, reference: Callable, feed: dict,
                                       fetch: list[str] | None, parts: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        predictor.predict(feed, fetch)
    assert all(part in str(caught.value) for part in parts), str(caught.value)
    x = images(1, seed=3)
    np.testing.assert_allclose(predictor.predict({"x": x})["prediction"], reference(x), rtol=0, atol=1e-5)


def test_concurrent_calls_share_the_pool(predictor: LocalPredictor, reference: Callable) -> None:
    batches = [images(1 + i % 4, seed=100 + i) for i in range(12)]
    expected = [reference(x) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: predictor.predict({"x": x})["prediction"], batches))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def call_with_timeout(call: Callable[[], object], seconds: float = 60) -> BaseException | None:
    """Run `call` in a daemon thread; return what it raised, failing if it hangs (a predictor not returned)."""
    raised: list[BaseException | None] = [None]

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            raised[0] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "predict hung: the pool lost its predictor"
    return raised[0]


def test_predictor_failure_is_inference_error_and_pool_survives(make_conf: Callable[..., LocalServiceConf],
                                                                model_config: GeneralModelConfig) -> None:
    lying = GeneralModelConfig()
    lying.CopyFrom(model_config)
    lying.feed_var[0].shape[0] = 4
    one = LocalPredictor(settings_from_conf(make_conf(thread_num=1), lying), lying, pool_size=1)
    bad = np.zeros((1, 4, 224, 224), np.float32)
    for _ in range(2):
        error = call_with_timeout(lambda: one.predict({"x": bad}))
        assert isinstance(error, InferenceError), error
        assert "\n" not in str(error) and "channels" in str(error)


def test_unloadable_model_is_init_error(make_conf: Callable[..., LocalServiceConf], model_config: GeneralModelConfig,
                                        server_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "serving_server"
    broken.mkdir()
    (broken / "inference.json").write_bytes((server_dir / "inference.json").read_bytes())
    (broken / "inference.pdiparams").write_bytes((server_dir / "inference.pdiparams").read_bytes()[:1000])
    write_config(model_config, broken / SERVER_CONF)
    settings = settings_from_conf(make_conf(model_config=str(broken)), model_config)
    with pytest.raises(InitError, match="cannot create the Paddle Inference predictor"):
        LocalPredictor(settings, model_config)
    (broken / "inference.json").unlink()
    with pytest.raises(InitError, match="holds no inference model"):
        LocalPredictor(settings, model_config)


def test_model_config_must_match_the_program(make_conf: Callable[..., LocalServiceConf]) -> None:
    config = build_config([VarSpec("image", "image", FLOAT32, IMAGE)], [VarSpec("out", "prediction", FLOAT32, (9,))])
    with pytest.raises(InitError, match=r"names \['image', 'out'\], which the program lacks"):
        LocalPredictor(settings_from_conf(make_conf(), config), config)
    config.feed_var[0].feed_type = 20
    with pytest.raises(InitError, match="feed_type 20"):
        LocalPredictor(settings_from_conf(make_conf(), config), config)


def test_onnx_runtime_engine_matches_paddle(tmp_path: Path) -> None:
    from export.exporter import ExportRequest, export

    out = tmp_path / "with_onnx"
    export(ExportRequest(model="SqueezeNet1_1", out=out, random_init=0, onnx=True))
    server = out / "serving_server"
    model_config = read_config(server / SERVER_CONF)
    auto = LocalServiceConf(model_config=str(server), max_batch_size=4)
    settings = settings_from_conf(auto, model_config)
    assert settings.engine == "onnxruntime"
    paddle_conf = LocalServiceConf(model_config=str(server), max_batch_size=4, engine="paddle")
    assert settings_from_conf(paddle_conf, model_config).engine == "paddle"
    x = np.random.RandomState(3).randn(3, *IMAGE).astype(np.float32)
    ort_predictor = LocalPredictor(settings, model_config, pool_size=2)
    ort = ort_predictor.predict({"x": x})["prediction"]
    spin = "session.intra_op.allow_spinning"
    assert ort_predictor._idle.get().get_session_options().get_session_config_entry(spin) == "0"
    spinning = LocalPredictor(settings_from_conf(replace(auto, cpu_spin_wait=True), model_config), model_config)
    assert spinning._idle.get().get_session_options().get_session_config_entry(spin) == "1"
    native = LocalPredictor(settings_from_conf(paddle_conf, model_config), model_config).predict({"x": x})
    np.testing.assert_allclose(ort, native["prediction"], atol=1e-5)


def test_onnx_runtime_engine_needs_the_onnx_file(make_conf: Callable[..., LocalServiceConf],
                                                 model_config: GeneralModelConfig) -> None:
    with pytest.raises(ConfigError, match=r"engine = 'onnxruntime': no inference\.onnx in .*; export with --onnx"):
        settings_from_conf(make_conf(engine="onnxruntime"), model_config)
    assert settings_from_conf(make_conf(), model_config).engine == "paddle"


def test_paddle_engine_without_paddle_says_which_extra_to_install(make_conf: Callable[..., LocalServiceConf],
                                                                  model_config: GeneralModelConfig, server_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paddle", None)  # `import paddle` now fails as in the wheel's plain install
    monkeypatch.delitem(sys.modules, "serving.predictor.paddle_predictor")
    with pytest.raises(InitError) as error:
        LocalPredictor(settings_from_conf(make_conf(), model_config), model_config)
    assert str(error.value) == (
        f"engine paddle (Paddle Inference) for {server_dir}, but Paddle is not installed: pip install "
        "'pipeline-serving-kit[paddle]' (on GPU: paddlepaddle-gpu), or serve an export made with --onnx on engine "
        "onnxruntime")
