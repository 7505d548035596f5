"""The wheel and sdist work outside the checkout: files, console command, dependency split, all three protocols.

The sdist is built from the checkout and the wheel from the unpacked sdist (so the sdist alone must be enough),
both through setuptools' PEP 517 hooks, which is what `python -m build --no-isolation` calls. The wheel goes
into a fresh venv that has no pip of its own (the dev venv's pip installs into it with --python, from pip's
index and cache) and never sees the checkout: no PYTHONPATH, and every command runs in a folder outside it.
First the plain install, without Paddle: `import paddle` fails, the exporter and the Paddle engine each say
which extra to install, and an ONNX export made by the dev venv is served by `serving-kit serve` (the packaged
default config) and `serving-kit model-server`, answering the installed REST, gRPC (PipelineClient) and brpc
(Client) clients the same label as `serving-kit predict`; `serving-kit stop` stops the pipeline. Then the
`export` extra is added to the same venv and `serving-kit export` exports from the wheel alone (labels and
calibration photos from the package) the same model. Measured on the 2-core dev machine: plain install 7-11 s,
the export extra 17-27 s more, the whole file 40-55 s.
"""

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import IMAGES, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
DIST = "pipeline_serving_kit-0.1.0"
DAISY = IMAGES / "daisy.jpg"
# What the runtime and the console command read from the installed packages.
PACKAGE_FILES = ["pipelines/__init__.py", "pipelines/web_service.py", "kit/__main__.py", "kit/predict.py",
                 "export/data/imagenet1k_label_list.txt", "export/data/images/daisy.jpg",
                 "export/data/images/n01440764_10026.JPEG", "export/data/param_names/SqueezeNet1_1.json",
                 "serving/classify.py", "clients/brpc_client.py", "bench/eval.py"]
HOOK = "import sys; from setuptools import build_meta; print(getattr(build_meta, sys.argv[1])(sys.argv[2]))"
START_TIMEOUT_S = 120
# Imports every module the plain install serves with, from the venv's site-packages; prints what fails to import.
IMPORT_ALL = """
import importlib, pkgutil
for package in ("serving", "clients", "pipelines", "kit"):
    module = importlib.import_module(package)
    assert module.__file__.startswith(__import__("sys").prefix), module.__file__
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            print(f"{info.name}: {exc}")
"""


def build(hook: str, source: Path, out: Path) -> Path:
    """One PEP 517 hook of setuptools, run in `source`; the path of what it built."""
    done = subprocess.run([sys.executable, "-c", HOOK, hook, str(out)], cwd=source, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), the wheel built from the unpacked sdist."""
    out = tmp_path_factory.mktemp("dist")
    sdist = build("build_sdist", ROOT, out)
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "unpacked", filter="data")
    return sdist, build("build_wheel", out / "unpacked" / DIST, out)


def outside_env() -> dict[str, str]:
    """The environment without anything that points Python at the checkout."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "GLOG_minloglevel": "2"}


def pip_install(venv: Path, requirement: str) -> float:
    """Install into the venv with the dev venv's pip, blind to the checkout's egg-info; seconds taken."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--quiet", requirement], env=outside_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel without extras."""
    folder = tmp_path_factory.mktemp("venv") / "wheel"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    print(f"plain install: {pip_install(folder, str(dist[1])):.1f} s")
    return folder


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SqueezeNet1_1 with its ONNX twin, exported by the dev venv (the plain install cannot export)."""
    from export.exporter import ExportRequest, export

    out = tmp_path_factory.mktemp("onnx_export") / "SqueezeNet1_1"
    export(ExportRequest(model="SqueezeNet1_1", out=out, random_init=0, onnx=True))
    return out


def run(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A venv program (serving-kit, python) run in `cwd` with the outside environment."""
    program, *rest = args
    return subprocess.run([str(venv / "bin" / program), *rest], cwd=cwd, env=outside_env(), capture_output=True,
                          text=True, timeout=timeout)


def answer_of(output: str) -> tuple[str, float]:
    """The `label: [...]` and `prob: [...]` lines every client and `predict` print for one image."""
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    return lines["label"], float(lines["prob"].strip("[]"))


def test_sdist_and_wheel_hold_what_the_runtime_reads(dist: tuple[Path, Path]) -> None:
    sdist, wheel = dist
    with tarfile.open(sdist) as archive:
        in_sdist = {name.removeprefix(f"{DIST}/") for name in archive.getnames()}
    assert {"config.yml", "setup.py", "setup.cfg", "MANIFEST.in", *PACKAGE_FILES} <= in_sdist
    assert {"tests/data/tls/localhost.crt", "tests/conftest.py"} <= in_sdist
    assert not any(name.startswith("bench/results") for name in in_sdist)
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        assert archive.read("pipelines/config.yml") == (ROOT / "config.yml").read_bytes()
        info = f"{DIST}.dist-info"
        assert "serving-kit = kit.__main__:main" in archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode().splitlines()
    assert set(PACKAGE_FILES) <= in_wheel
    assert not any(name.startswith(("tests/", "bench/results")) for name in in_wheel)
    requires = [line.split(": ", 1)[1] for line in metadata if line.startswith("Requires-Dist: ")]
    plain = {req.split(">")[0].split("<")[0].split("[")[0] for req in requires if "extra ==" not in req}
    assert {"onnxruntime", "grpcio", "uvicorn", "opencv-python-headless"} <= plain
    assert plain.isdisjoint({"paddlepaddle", "paddle2onnx", "onnx-graphsurgeon", "sympy", "grpcio-tools", "tqdm"})
    assert {line.split(": ", 1)[1] for line in metadata if line.startswith("Provides-Extra: ")} == {
        "paddle", "export", "bench", "gpu", "ray", "test"}
    assert any(req.startswith("paddlepaddle") and 'extra == "paddle"' in req for req in requires)
    assert any(req.startswith("ray[serve]") and 'extra == "ray"' in req for req in requires)


@contextmanager
def server(venv: Path, cwd: Path, log: Path, *args: str) -> Iterator[subprocess.Popen]:
    """A `serving-kit` server subprocess; killed on the way out if the test did not stop it."""
    with log.open("wb") as handle:
        process = subprocess.Popen([str(venv / "bin" / "serving-kit"), *args], cwd=cwd, env=outside_env(),
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_plain_install_serves_an_onnx_export_without_paddle(venv: Path, onnx_model: Path, tmp_path: Path) -> None:
    imported = run(venv, tmp_path, "python", "-c", IMPORT_ALL)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines() == ["serving.predictor.paddle_predictor: No module named 'paddle'"]
    no_paddle = run(venv, tmp_path, "python", "-c", "import paddle")
    assert no_paddle.returncode != 0 and "No module named 'paddle'" in no_paddle.stderr

    export = run(venv, tmp_path, "serving-kit", "export", "--model", "SqueezeNet1_1", "--random-init", "0",
                 "--out", str(tmp_path / "x"))
    assert export.returncode == 2 and export.stderr.strip().splitlines() == [
        "error: serving-kit export needs paddle, which is not installed: pip install 'pipeline-serving-kit[export]'"]
    server_dir = onnx_model / "serving_server"
    paddle_engine = run(venv, tmp_path, "serving-kit", "model-server", "--model", str(server_dir), "--port", "0",
                        "--engine", "paddle")
    assert paddle_engine.returncode == 2 and "Traceback" not in paddle_engine.stderr
    last = paddle_engine.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: model 'SqueezeNet1_1' version 1 ({server_dir}) refused: "), last
    assert (f"engine paddle (Paddle Inference) for {server_dir}, but Paddle is not installed: pip install "
            "'pipeline-serving-kit[paddle]' (on GPU: paddlepaddle-gpu), or serve an export made with --onnx on engine "
            "onnxruntime") in last

    measured_model = tmp_path / "measured" / "SqueezeNet1_1"
    shutil.copytree(onnx_model, measured_model)
    measured = run(venv, tmp_path, "serving-kit", "export", "--measure", str(measured_model), "--runs", "3",
                   "--max-batch-size", "2")  # on the serving machine, without Paddle: what can run here
    assert measured.returncode == 0, measured.stderr
    assert "Paddle + oneDNN      skipped: paddle is not installed" in measured.stdout
    assert "engine: auto now runs ONNX Runtime on this machine" in measured.stdout

    predicted = run(venv, tmp_path, "serving-kit", "predict", "--model", str(onnx_model), str(DAISY))
    assert predicted.returncode == 0, predicted.stderr
    label, prob = answer_of(predicted.stdout)
    assert label.startswith("['") and 0 < prob <= 1

    http_port, rpc_port, brpc_port = free_port(), free_port(), free_port()
    log = tmp_path / "pipeline.log"
    with server(venv, tmp_path, log, "serve", "--model_config", str(server_dir), "--http_port", str(http_port),
                "--rpc_port", str(rpc_port)) as pipeline:
        wait_ready(f"http://127.0.0.1:{http_port}/ready", pipeline, START_TIMEOUT_S, log)
        assert int((tmp_path / "web_service.pid").read_text()) == pipeline.pid
        rest = run(venv, tmp_path, "python", "-m", "clients.http_client", str(DAISY), "--url",
                   f"http://127.0.0.1:{http_port}/imagenet/prediction")
        grpc = run(venv, tmp_path, "python", "-m", "clients.grpc_client", str(DAISY), "--endpoint",
                   f"127.0.0.1:{rpc_port}")
        model_log = tmp_path / "model_server.log"
        with server(venv, tmp_path, model_log, "model-server", "--model", str(server_dir), "--port",
                    str(brpc_port)) as model_server:
            wait_ready(f"http://127.0.0.1:{brpc_port}/ready", model_server, START_TIMEOUT_S, model_log)
            brpc = run(venv, tmp_path, "python", "-m", "clients.brpc_client", "--config",
                       str(onnx_model / "serving_client" / "serving_client_conf.prototxt"), "--endpoint",
                       f"127.0.0.1:{brpc_port}", str(DAISY))
            model_server.send_signal(signal.SIGTERM)
            assert model_server.wait(timeout=60) == 0, model_log.read_text()
        stop = run(venv, tmp_path, "serving-kit", "stop")
        assert stop.returncode == 0 and stop.stdout.strip() == f"stopped service {pipeline.pid}", stop.stderr
        assert pipeline.wait(timeout=10) == 0, log.read_text()
    for name, answer in {"rest": rest, "grpc": grpc, "brpc": brpc}.items():
        assert answer.returncode == 0, (name, answer.stderr)
        served_label, served_prob = answer_of(answer.stdout)
        assert served_label == label and abs(served_prob - prob) <= 1e-5, (name, answer.stdout, predicted.stdout)
    assert not (tmp_path / "web_service.pid").exists()


def test_export_extra_exports_from_the_wheel_alone(dist: tuple[Path, Path], venv: Path, onnx_model: Path,
                                                  tmp_path: Path) -> None:
    print(f"export extra: {pip_install(venv, f'{dist[1]}[export]'):.1f} s")
    out = tmp_path / "models" / "SqueezeNet1_1"
    export = run(venv, tmp_path, "serving-kit", "export", "--model", "SqueezeNet1_1", "--random-init", "0",
                 "--onnx", "--out", "models/SqueezeNet1_1")
    assert export.returncode == 0, export.stderr[-3000:]
    assert "params: 1,235,496" in export.stdout and (out / "serving_server" / "inference.onnx").is_file()
    from_wheel = run(venv, tmp_path, "serving-kit", "predict", str(DAISY))  # the default model folder
    from_dev = run(venv, tmp_path, "serving-kit", "predict", "--model", str(onnx_model), str(DAISY))
    assert from_wheel.returncode == 0, from_wheel.stderr
    (label, prob), (dev_label, dev_prob) = answer_of(from_wheel.stdout), answer_of(from_dev.stdout)
    assert label == dev_label and abs(prob - dev_prob) <= 1e-4  # same seed and calibration photos: same weights
