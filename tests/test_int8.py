"""INT8: the exporter's static quantization and its held-out figures, its refusals, and serving it on ONNX Runtime.

The models are --random-init: their probabilities are near-uniform, so FP32/INT8 top-1 agreement says little about
a trained model. The export below passes --min-agreement 0 so the figures are recorded whatever they are; the
threshold refusal is provoked with a calibration set of black images, which clips the activations of a real photo.
"""

import ast
import base64
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from PIL import Image

from bench.calibration import calibration_folder
from clients import PipelineClient
from export.int8 import INT8_FILE, agreement, file_list_sha256
from export.onnx_export import run_onnx
from pipelines.web_service import ImageService
from serving.config import LocalServiceConf
from serving.errors import ConfigError, LoadError
from serving.machine import this_machine
from serving.model_card import load_card
from serving.model_config import SERVER_CONF, read_config
from serving.model_server import ModelServer, build_service, parse_args
from serving.predictor.engine_table import fastest_fp32
from serving.predictor.settings import settings_from_conf
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.protocols.brpc_model_client import Client
from tests.conftest import IMAGES, photo_bytes, running_model_server
from tests.test_model_server import image_request, output
from tests.test_remote_ops import remote_config


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 crops, flips and colour shifts of the two bundled photos: 11 calibrate, 3 (every 4th) are held out."""
    return calibration_folder(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def int8_root(calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.__main__ import main

    out = tmp_path_factory.mktemp("int8") / "SqueezeNet1_1"
    code = main(["--model", "SqueezeNet1_1", "--random-init", "0", "--int8", "--calib-images", str(calib_dir),
                 "--min-agreement", "0", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def server(int8_root: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", int8_root / "serving_server", "--port", "0", "--grpc_port", "0",
                              "--precision", "int8") as running:
        yield running


def test_card_records_calibration_figures_and_method(int8_root: Path, calib_dir: Path) -> None:
    card = yaml.safe_load((int8_root / "model_card.yaml").read_text())
    section = card["int8"]
    assert (int8_root / section["file"]).is_file() and section["file"].endswith(INT8_FILE)
    images = sorted(calib_dir.iterdir())
    calibration = [path for index, path in enumerate(images) if index % 4 != 3]
    assert section["calibration"]["count"] == 11 and section["calibration"]["sha256"] == file_list_sha256(calibration)
    held = section["held_out"]
    assert held["count"] == 3 and 0 <= held["top1_agreement"] <= 1 and 0 <= held["top5_overlap"] <= 1
    assert 0 <= held["mean_abs_diff"] <= held["max_abs_diff"] < 0.5
    assert "QDQ" in section["method"] and "per-channel" in section["method"]
    assert load_card(int8_root / "serving_server").int8 == section


def test_int8_is_close_to_fp32_on_the_photos(int8_root: Path) -> None:
    server_dir = int8_root / "serving_server"
    transforms = load_card(server_dir).transforms
    batch = np.stack([transforms(path.read_bytes()) for path in sorted(IMAGES.iterdir())])
    figures = agreement(run_onnx(server_dir / "inference.onnx", batch), run_onnx(server_dir / INT8_FILE, batch))
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_diff"] < 0.1


def test_too_few_images_is_one_line(run_cli, calib_dir: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(calib_dir.iterdir())[:3]:
        (few / path.name).write_bytes(path.read_bytes())
    code, _, err = run_cli("--model", "SqueezeNet1_1", "--random-init", "0", "--int8", "--calib-images", few,
                           "--out", tmp_path / "out")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --calib-images {few} has 3 images; at least 4 are needed "
        "(every 4th is held out to measure INT8 against FP32)")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def bad_calib(tmp_path: Path) -> Path:
    """Three black images calibrate, the daisy is held out: its activations clip and the top-1 changes."""
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in "abc":
        Image.new("RGB", (256, 256)).save(folder / f"{name}.jpg")
    (folder / "d.jpg").write_bytes((IMAGES / "daisy.jpg").read_bytes())
    return folder


def test_agreement_below_threshold_refused_unless_forced(run_cli, bad_calib: Path, tmp_path: Path) -> None:
    args = ("--model", "SqueezeNet1_1", "--random-init", "0", "--int8", "--calib-images", bad_calib,
            "--min-agreement", "1", "--out", tmp_path / "out")
    code, _, err = run_cli(*args)
    assert code == 2 and "below --min-agreement 1.0" in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
    code, _, _ = run_cli(*args, "--force")
    card = yaml.safe_load((tmp_path / "out" / "model_card.yaml").read_text())
    assert code == 0 and card["int8"]["forced_below_min_agreement"] is True


def test_model_server_serves_int8_with_its_agreement(server: ModelServer, int8_root: Path) -> None:
    """GET /metadata shows the precision and the held-out figures, OIP's model metadata the precision."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metadata", timeout=10) as answer:
        metadata = json.loads(answer.read())
    card = yaml.safe_load((int8_root / "model_card.yaml").read_text())
    assert (metadata["engine"], metadata["precision"]) == ("onnxruntime", "int8")
    assert metadata["int8_held_out"] == card["int8"]["held_out"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v2/models/{metadata['model']}", timeout=10) as answer:
        assert json.loads(answer.read())["platform"] == "onnxruntime_int8"
    server_dir = int8_root / "serving_server"
    data = (IMAGES / "daisy.jpg").read_bytes()
    body = {"tensor": [{"name": "x", "alias_name": "image", "elem_type": 20, "shape": [1],
                        "data": [base64.b64encode(data).decode()]}], "fetch_var_names": ["prediction"]}
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/GeneralModelService/inference",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        served = np.array(json.loads(answer.read())["outputs"][0]["tensor"][0]["float_data"])
    batch = load_card(server_dir).transforms(data)[None]
    np.testing.assert_allclose(served, run_onnx(server_dir / INT8_FILE, batch)[0], atol=1e-5)
    assert served.argmax() == run_onnx(server_dir / "inference.onnx", batch)[0].argmax()


def test_int8_is_served_over_brpc_and_grpc_too(server: ModelServer, int8_root: Path) -> None:
    """baidu_std with Paddle Serving's Client (a preprocessed tensor) and gRPC (the image file) answer INT8."""
    data = (IMAGES / "daisy.jpg").read_bytes()
    batch = load_card(int8_root / "serving_server").transforms(data)[None]
    expected = run_onnx(int8_root / "serving_server" / INT8_FILE, batch)
    with Client() as client:
        client.load_client_config(int8_root / "serving_client")
        client.connect([f"127.0.0.1:{server.port}"])
        brpc = client.predict(feed={client.get_feed_names()[0]: batch}, fetch=["prediction"], batch=True)
    np.testing.assert_allclose(brpc["prediction"], expected, atol=1e-5)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = gm_grpc.GeneralModelServiceStub(channel).inference(image_request([data]))
    np.testing.assert_allclose(output(response), expected, atol=1e-5)


def test_int8_without_an_int8_model_fails_at_start(squeezenet_root: Path) -> None:
    args = parse_args(["--model", str(squeezenet_root / "serving_server"), "--port", "0", "--precision", "int8"])
    with pytest.raises(LoadError, match=r"no inference\.int8\.onnx in .*; export with --int8 --calib-images DIR"):
        build_service(args)


@pytest.mark.parametrize(("engine", "expected"), [("auto", "onnxruntime"), ("onnxruntime", "onnxruntime"),
                                                  ("paddle", "precision")])
def test_op_precision_int8_on_cpu(int8_root: Path, engine: str, expected: str) -> None:
    """A pipeline op's local_service_conf: int8 on CPU is ONNX Runtime's; engine paddle is refused."""
    server_dir = int8_root / "serving_server"
    conf = LocalServiceConf(model_config=str(server_dir), device_type=0, precision="int8", engine=engine)
    try:
        conf.validate("op.clas.local_service_conf")
        settings = settings_from_conf(conf, read_config(server_dir / SERVER_CONF), path="op.clas.local_service_conf")
    except ConfigError as exc:
        assert f"op.clas.local_service_conf.{expected}" in str(exc)
    else:
        assert (settings.engine, settings.precision) == (expected, "int8")


def test_int8_graph_folds_the_bias_adds_and_keeps_softmax_float(int8_root: Path) -> None:
    """Paddle2ONNX's Conv + bias Add + Identity, left apart, cost a QLinearAdd per Conv and made INT8 no faster."""
    import onnx

    graph = onnx.load(str(int8_root / "serving_server" / INT8_FILE)).graph
    ops = [node.op_type for node in graph.node]
    assert "Add" not in ops and "Identity" not in ops and ops.count("Conv") == 26
    assert all(len(node.input) == 3 for node in graph.node if node.op_type == "Conv")  # the bias is the Conv's own
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    assert softmax.output[0] == graph.output[0].name  # no QuantizeLinear after it: probabilities are not uint8


def test_eval_compares_int8_with_fp32_image_by_image(int8_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Without a list: agreement alone; with one: FP32 and INT8 top-1/top-5 too; below --min-agreement exits 1."""
    from bench.eval import main

    code = main(["--model", str(int8_root), "--images", str(IMAGES), "--precision", "int8", "--min-agreement", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "| Model |" not in out and out.startswith("2 images: INT8 top-1 agrees with FP32 on 1.000")
    server_dir = int8_root / "serving_server"
    batch = np.stack([load_card(server_dir).transforms(path.read_bytes()) for path in sorted(IMAGES.iterdir())])
    top1 = run_onnx(server_dir / "inference.onnx", batch).argmax(axis=-1)
    listing = tmp_path / "val_list.txt"
    names = [path.name for path in sorted(IMAGES.iterdir())]
    listing.write_text("".join(f"{name} {label}\n" for name, label in zip(names, top1, strict=True)))
    code = main(["--model", str(int8_root), "--images", str(IMAGES), "--list", str(listing), "--precision", "int8",
                 "--min-agreement", "1.01"])
    out = capsys.readouterr().out
    assert code == 1 and "| SqueezeNet1_1 | FP32 | 1.000 | 1.000 |" in out and "| SqueezeNet1_1 | INT8 |" in out


def test_measure_times_every_engine_and_auto_follows_the_table(int8_root: Path, tmp_path: Path, run_cli) -> None:
    """`python -m export --measure DIR` on the serving machine: every engine and precision the export has, in the
    card with this machine; `engine: auto` then runs the fastest FP32 one of them, and says why in its metadata."""
    root = tmp_path / "SqueezeNet1_1"
    shutil.copytree(int8_root, root)
    code, out, err = run_cli("--measure", root, "--threads", "1", "--max-batch-size", "2", "--runs", "3")
    assert code == 0, err
    (table,) = yaml.safe_load((root / "model_card.yaml").read_text())["engine_timings"]
    assert table["machine"] == this_machine() and table["threads"] == 1 and table["skipped"] == {}
    measured = {(row["engine"], row["precision"], row["batch"]) for row in table["rows"]}
    assert measured == {(engine, precision, batch) for batch in (1, 2) for engine, precision in
                        [("paddle_onednn", "fp32"), ("paddle", "fp32"), ("onnxruntime", "fp32"),
                         ("onnxruntime_int8", "int8")]}
    assert all(row["runs"] >= 3 and row["ms_per_image"] == pytest.approx(row["median_ms"] / row["batch"], abs=1e-3)
               for row in table["rows"])
    fastest = fastest_fp32(root / "serving_server", 1)
    assert f"engine: auto now runs {fastest.engine.label} on this machine" in out
    args = parse_args(["--model", str(root / "serving_server"), "--port", "0", "--cpu_threads", "1"])
    metadata = build_service(args).find(root.name).service.metadata()
    assert metadata["engine"] == fastest.engine.conf["engine"] and metadata["engine_choice"] == fastest.reason


def pipeline_config(int8_root: Path, where: str, server: ModelServer) -> dict:
    """The imagenet op runs INT8 in process (precision: int8), or calls the INT8 model server over brpc or gRPC."""
    if where == "local":
        op = {"local_service_conf": {"model_config": str(int8_root / "serving_server"), "precision": "int8"}}
        return {"http_port": 0, "rpc_port": 0, "op": {"imagenet": op}}
    port = server.port if where == "brpc" else server.grpc_port
    return {**remote_config(int8_root, f"127.0.0.1:{port}", client_type=where), "rpc_port": 0}


@pytest.mark.parametrize("where", ["local", "brpc", "grpc"])
def test_pipeline_serves_int8_over_http_and_grpc(int8_root: Path, server: ModelServer, where: str) -> None:
    """End to end: the pipeline's REST and gRPC answers equal the INT8 model run in process, whether the op runs it
    or the INT8 model server does (over baidu_std or gRPC); /metadata shows the precision and its agreement."""
    images = photo_bytes()
    card = load_card(int8_root / "serving_server")
    probs = run_onnx(int8_root / "serving_server" / INT8_FILE, np.stack([card.transforms(data) for data in images]))
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict=pipeline_config(int8_root, where, server))
    service.start()
    try:
        values = [base64.b64encode(data).decode() for data in images]
        request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/imagenet/prediction", method="POST",
                                         data=json.dumps({"key": ["image_0", "image_1"], "value": values}).encode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            rest = json.loads(answer.read())
        client = PipelineClient()
        client.connect([f"127.0.0.1:{service.rpc_port}"])
        rpc = client.predict(feed_dict={"image_0": values[0], "image_1": values[1]})
        client.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/metadata", timeout=10) as answer:
            op = json.loads(answer.read())["ops"]["imagenet"]
    finally:
        service.stop()
    assert rest["err_no"] == 0 and rpc.err_no == 0, (rest, rpc.err_msg)
    result = {key: ast.literal_eval(value) for key, value in zip(rest["key"], rest["value"], strict=True)}
    assert result == {key: ast.literal_eval(value) for key, value in zip(rpc.key, rpc.value, strict=True)}
    assert result["label"] == [card.display_labels[index] for index in probs.argmax(axis=1)]
    np.testing.assert_allclose(result["prob"], probs.max(axis=1), atol=1e-5)
    if where == "local":
        assert op["precision"] == "int8" and op["int8_held_out"] == card.int8["held_out"]
