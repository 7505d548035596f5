"""config.yml: Paddle Serving's keys and defaults; every mistake fails at start naming key, value and rule."""

from pathlib import Path

import pytest
import yaml

from serving.config import load_config, parse_config
from serving.errors import ConfigError
from serving.model_config import SERVER_CONF

ROOT = Path(__file__).parent.parent


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model" / "serving_server"
    folder.mkdir(parents=True)
    (folder / SERVER_CONF).write_text("")
    return folder


def op_with(model_dir: Path, **local: object) -> dict:
    return {"http_port": 18080, "op": {"imagenet": {"local_service_conf": {"model_config": str(model_dir), **local}}}}


def test_defaults_are_paddle_servings(model_dir: Path) -> None:
    config = parse_config(op_with(model_dir), Path("."))
    assert (config.rpc_port, config.http_port, config.worker_num, config.build_dag_each_worker) == (None, 18080, 1,
                                                                                                    False)
    assert (config.dag.retry, config.dag.client_type, config.dag.is_thread_op, config.dag.channel_size) == (
        1, "brpc", True, 0)
    op = config.op["imagenet"]
    assert (op.concurrency, op.timeout, op.retry, op.batch_size, op.auto_batching_timeout) == (1, -1, 1, 1, -1)
    conf = op.local_service_conf
    assert (conf.client_type, conf.device_type, conf.devices, conf.thread_num) == ("local_predictor", -1, "", 2)
    assert (conf.mem_optim, conf.ir_optim, conf.precision, conf.use_mkldnn, conf.min_subgraph_size) == (
        True, False, "fp32", False, 3)
    assert config.limits.max_body_bytes == 64 * 2**20 and config.limits.max_image_pixels == 40_000_000


def test_relative_model_folder_resolves_against_the_config_file(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(op_with(Path("model/serving_server"))))
    config = load_config(path)
    assert config.op["imagenet"].local_service_conf.model_config == str(model_dir.resolve())


def test_relative_trt_cache_dir_resolves_against_the_config_file(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(op_with(model_dir, trt_cache_dir="cache/trt")))
    assert load_config(path).op["imagenet"].local_service_conf.trt_cache_dir == str((tmp_path / "cache/trt").resolve())


def test_command_line_overrides(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(op_with(tmp_path / "missing")))
    config = load_config(path, {"http_port": 0, "rpc_port": 9100, "model_config": str(model_dir)})
    assert (config.http_port, config.rpc_port) == (0, 9100)
    assert config.op["imagenet"].local_service_conf.model_config == str(model_dir)


def test_the_repository_config_yml_parses(model_dir: Path) -> None:
    data = yaml.safe_load((ROOT / "config.yml").read_text())
    data["op"]["imagenet"]["local_service_conf"]["model_config"] = str(model_dir)
    config = parse_config(data, ROOT)
    assert (config.http_port, config.rpc_port) == (18080, 9993)
    assert (config.ray_serve.http_port, config.ray_serve.grpc_port) == (18080, 9993)
    assert config.ray_serve.autoscaling_config.max_replicas == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"http_port": None}, "config rpc_port/http_port = None: set at least one of rpc_port and http_port"),
    ({"http_port": 80}, "config http_port = 80: use 1024-65535 (or 0 for any free port)"),
    ({"http_port": "18080x"}, "config http_port = '18080x': expected an integer"),
    ({"rpc_port": 18080}, "config http_port = 18080: rpc_port and http_port must differ"),
    ({"wroker_num": 2}, "config wroker_num = 2: unknown key; allowed keys here: rpc_port, http_port, worker_num"),
    ({"worker_num": 0}, "config worker_num = 0: must be >= 1"),
    ({"build_dag_each_worker": "yes"}, "config build_dag_each_worker = 'yes': expected true or false"),
    ({"dag": {"client_type": "http"}}, "config dag.client_type = 'http': one of brpc, grpc"),
    ({"dag": {"channel_size": -1}}, "config dag.channel_size = -1: must be >= 0"),
    ({"limits": {"max_image_pixels": 0}}, "config limits.max_image_pixels = 0: must be >= 1"),
    ({"op": []}, "config op = []: expected a mapping of op name -> settings"),
])
def test_top_level_errors(model_dir: Path, change: dict, message: str) -> None:
    data = {**op_with(model_dir), **change}
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("."))
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(("op", "local", "message"), [
    ({"batch_size": 0}, {}, "config op.imagenet.batch_size = 0: must be >= 1"),
    ({"concurrency": 1.5}, {}, "config op.imagenet.concurrency = 1.5: expected an integer"),
    ({"batch_size": 64}, {}, "config op.imagenet.local_service_conf.max_batch_size: 32 is below op.imagenet"),
    ({}, {"device_type": 7}, "config op.imagenet.local_service_conf.device_type = 7: supported: -1"),
    ({}, {"device_type": 2}, "config op.imagenet.local_service_conf.devices = '': device_type 2 needs GPU ids"),
    ({}, {"devices": "gpu0"}, "config op.imagenet.local_service_conf.devices = 'gpu0': use \"\" for CPU"),
    ({}, {"precision": "fp16"}, "config op.imagenet.local_service_conf.precision = 'fp16': on CPU use fp32 or bf16"),
    ({}, {"precision": "fp8"}, "config op.imagenet.local_service_conf.precision = 'fp8': one of fp32"),
    ({}, {"client_type": "http"}, "config op.imagenet.local_service_conf.client_type = 'http': one of"),
    ({}, {"thread_num": 0}, "config op.imagenet.local_service_conf.thread_num = 0: must be >= 1"),
    ({}, {"fetch_list": "prediction"}, "config op.imagenet.local_service_conf.fetch_list = 'prediction': expected a "
                                       "list of strings"),
    ({}, {"use_mkldnn": 1}, "config op.imagenet.local_service_conf.use_mkldnn = 1: expected true or false"),
    ({}, {"mkldnn_cache": 1}, "config op.imagenet.local_service_conf.mkldnn_cache = 1: unknown key"),
])
def test_op_errors(model_dir: Path, op: dict, local: dict, message: str) -> None:
    data = op_with(model_dir, **local)
    data["op"]["imagenet"].update(op)
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("."))
    assert str(error.value).startswith(message)


def test_model_folder_must_hold_the_server_conf(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_config = '.*empty': the folder must exist and hold "
                                          r"serving_server_conf\.prototxt"):
        parse_config(op_with(tmp_path / "empty"), Path("."))


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("http_port: [18080\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_ray_serve_defaults_and_a_full_section(model_dir: Path) -> None:
    default = parse_config(op_with(model_dir), Path(".")).ray_serve
    assert (default.num_replicas, default.autoscaling_config, default.max_ongoing_requests) == (None, None, 5)
    assert (default.ray_actor_options.num_cpus, default.http_port, default.grpc_port) == (1.0, 8000, 9000)
    section = {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 0.5}, "proxy_location": "HeadOnly",
               "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
                                      "upscale_delay_s": 1, "downscale_delay_s": 5.5}}
    ray = parse_config({**op_with(model_dir), "ray_serve": section}, Path(".")).ray_serve
    scaling = ray.autoscaling_config
    assert (scaling.max_replicas, scaling.target_ongoing_requests, scaling.downscale_delay_s) == (3, 2.0, 5.5)
    assert isinstance(scaling.upscale_delay_s, float) and scaling.look_back_period_s == 30.0
    assert (ray.ray_actor_options.num_cpus, ray.proxy_location) == (0.5, "HeadOnly")


@pytest.mark.parametrize(("section", "message"), [
    ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}},
     "config ray_serve.num_replicas = 2: set num_replicas for a fixed count or autoscaling_config, not both"),
    ({"num_replicas": 0}, "config ray_serve.num_replicas = 0: must be >= 1"),
    ({"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}},
     "config ray_serve.autoscaling_config.max_replicas = 2: must be >= 1 and >= min_replicas (3)"),
    ({"autoscaling_config": {"max_replicas": 2, "initial_replicas": 5}},
     "config ray_serve.autoscaling_config.initial_replicas = 5: must lie between min_replicas (1) and max_replicas"),
    ({"autoscaling_config": {"target_ongoing_requests": 0}},
     "config ray_serve.autoscaling_config.target_ongoing_requests = 0.0: must be > 0"),
    ({"autoscaling_config": {"downscale_delay_s": -1}},
     "config ray_serve.autoscaling_config.downscale_delay_s = -1.0: must be >= 0"),
    ({"autoscaling_config": {"upscale_delay_s": "soon"}},
     "config ray_serve.autoscaling_config.upscale_delay_s = 'soon': expected a number"),
    ({"autoscaling_config": {"target_ongoing_request": 2}},
     "config ray_serve.autoscaling_config.target_ongoing_request = 2: unknown key; allowed keys here: min_replicas"),
    ({"max_ongoing_requests": 1, "autoscaling_config": {"target_ongoing_requests": 2}},
     "config ray_serve.max_ongoing_requests = 1: must be >= autoscaling_config.target_ongoing_requests (2.0)"),
    ({"ray_actor_options": {"num_cpus": -1}}, "config ray_serve.ray_actor_options.num_cpus = -1.0: must be >= 0"),
    ({"proxy_location": "Everywhere"}, "config ray_serve.proxy_location = 'Everywhere': one of EveryNode, HeadOnly"),
    ({"http_port": 80}, "config ray_serve.http_port = 80: use 1024-65535"),
    ({"grpc_port": 8000}, "config ray_serve.grpc_port = 8000: http_port and grpc_port must differ"),
])
def test_ray_serve_errors(model_dir: Path, section: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({**op_with(model_dir), "ray_serve": section}, Path("."))
    assert str(error.value).startswith(message)
