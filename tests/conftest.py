"""Shared test helpers: reference data, real photos, and the exporter's CLI run in-process."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

import pytest  # noqa: E402

import serving  # noqa: E402, F401  (sets OpenCV's pixel cap before any test module imports cv2)
from tests.loopback_dns import LoopbackDNS  # noqa: E402

if TYPE_CHECKING:
    from serving.model_server import ModelServer

DATA = Path(__file__).parent / "data"
IMAGES = Path(__file__).parent.parent / "export" / "data" / "images"
MODEL_NAMES = ["AlexNet", "SqueezeNet1_0", "SqueezeNet1_1", "DarkNet53", "SENet154_vd"]


def free_port() -> int:
    """A loopback port nothing listens on now (for servers started as subprocesses with a fixed port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 120, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail with the server's log (or stderr) when it exits or takes too long."""
    def output() -> str:
        return log.read_text() if log is not None else (process.stderr.read() if process.stderr else "")

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, output()
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {seconds} s")


@contextmanager
def running_model_server(*flags: object) -> Iterator["ModelServer"]:
    """A model server in this process, started from its command-line flags and stopped on leaving, even when the
    test fails; one helper so every test starts it as `python -m serving.model_server` would."""
    from serving.model_server import ModelServer, build_service, parse_args

    args = parse_args([str(flag) for flag in flags])
    server = ModelServer(build_service(args), args).start()
    try:
        yield server
    finally:
        server.stop()


def reference_params(model: str) -> list[list]:
    """PaddleClas's state_dict as [key, shape, dtype] rows, in order."""
    return json.loads((DATA / "reference" / f"{model}.params.json").read_text())


def photo_bytes() -> list[bytes]:
    """The two real photos: a daisy and an ImageNet val tench."""
    return [(IMAGES / name).read_bytes() for name in ("daisy.jpg", "n01440764_10026.JPEG")]


@pytest.fixture(scope="session")
def squeezenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SqueezeNet1_1 export (random weights, seed 0) shared by the serving tests; treat it as read-only."""
    from export.exporter import ExportRequest, export

    out = tmp_path_factory.mktemp("shared_export") / "SqueezeNet1_1"
    export(ExportRequest(model="SqueezeNet1_1", out=out, random_init=0))
    return out


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture):
    """Run `python -m export` in-process; return (exit code, stdout, stderr)."""
    from export.__main__ import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def has_ipv6_loopback() -> bool:
    """True when ::1 can be bound (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def loopback_dns() -> Iterator[LoopbackDNS]:
    """A DNS server on 127.0.0.1 (tests/loopback_dns.py); set `.answers[name]` to change what it says."""
    server = LoopbackDNS()
    server.start()
    yield server
    server.stop()
