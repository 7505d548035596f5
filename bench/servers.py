"""The servers under test as subprocesses: started on free ports, ready when the ports accept, always stopped."""

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.models import quiet_env

START_TIMEOUT_S = 300
STOP_GRACE_S = 20
# pipeline: ops as threads in one process; pipeline_procs: the same budget as worker processes sharing the ports.
TARGETS = ("pipeline", "pipeline_procs", "model_server")


class ServerError(RuntimeError):
    """A server exited or never listened; the message carries the end of its log."""


@dataclass(frozen=True)
class Server:
    """A started server: where each protocol listens, and its process id (for memory readings)."""

    endpoints: dict[str, str]
    pid: int


@dataclass(frozen=True)
class Budget:
    """The thread budget shared by the ceiling and both servers, so throughput ÷ ceiling compares like with like."""

    engine: str
    workers: int
    threads: int
    precision: str = "fp32"  # int8: the export's INT8 twin on ONNX Runtime (`python -m export --int8`)

    def conf(self) -> dict:
        """local_service_conf keys: oneDNN and IR passes on, as the shipped config.yml has them."""
        return {"engine": self.engine, "precision": self.precision, "use_mkldnn": True, "ir_optim": True,
                "thread_num": self.threads}


def free_port() -> int:
    """A port the kernel just handed out (and released), for a server to bind next."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pipeline_command(server_dir: Path, budget: Budget, workdir: Path, grpc_threads: int,
                     op_keys: dict | None = None, processes: bool = False) -> tuple[list, dict]:
    """web_service.py with a config.yml for this budget (plus `op_keys`, e.g. batching); a gRPC thread per client.

    `processes`: budget.workers worker processes (build_dag_each_worker) of one op thread each, instead of one
    process with budget.workers op threads.
    """
    http_port, rpc_port = free_port(), free_port()
    config = {"worker_num": grpc_threads, "http_port": http_port, "rpc_port": rpc_port, "dag": {"is_thread_op": True},
              "op": {"imagenet": {"concurrency": budget.workers, **(op_keys or {}), "local_service_conf": {
                  "model_config": str(server_dir), "device_type": 0, "devices": "", "fetch_list": ["prediction"],
                  **budget.conf()}}}}
    if processes:
        config.update(worker_num=budget.workers, build_dag_each_worker=True)
        config["op"]["imagenet"]["concurrency"] = 1
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "pipelines.web_service", "--config", str(path), "--pid_file",
               str(workdir / "web_service.pid")]
    return command, {"http": http_port, "grpc": rpc_port}


def model_server_command(server_dir: Path, budget: Budget) -> tuple[list, dict]:
    """serving.model_server with the same budget: --thread concurrent predictions of --cpu_threads each.

    Its one port answers brpc, HTTP and OIP REST; --grpc_port adds gRPC (OIP's ModelInfer among its services).
    """
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "serving.model_server", "--model", str(server_dir), "--port", str(port),
               "--grpc_port", str(grpc_port), "--engine", budget.engine, "--thread", str(budget.workers),
               "--cpu_threads", str(budget.threads), "--precision", budget.precision, "--use_mkldnn", "--ir_optim"]
    return command, {"brpc": port, "http": port, "oip_json": port, "oip_binary": port, "oip_grpc": grpc_port}


def _log_tail(path: Path, lines: int = 8) -> str:
    """The end of a server log, for error messages."""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])


def wait_for_ports(process: subprocess.Popen, ports: list[int], log: Path, timeout_s: float) -> None:
    """Block until every port accepts a connection; fail fast if the server exits, bounded by `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    waiting = list(ports)
    while waiting:
        if process.poll() is not None:
            raise ServerError(f"server exited with {process.returncode} before listening:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"ports {waiting} did not open within {timeout_s:.0f} s:\n{_log_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
            waiting.pop(0)
        except OSError:
            time.sleep(0.2)


def _ready_status(url: str) -> int:
    """HTTP status of GET `url`; 0 when the request fails outright."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """The pipeline listens before its models load: poll GET /ready until 200 (404: a build without /ready)."""
    deadline = time.monotonic() + timeout_s
    while (status := _ready_status(url)) not in (200, 404):
        if process.poll() is not None:
            raise ServerError(f"server exited with {process.returncode} while loading:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{url} still answers {status} after {timeout_s:.0f} s:\n{_log_tail(log)}")
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the servers drain and exit), then SIGKILL after a grace period."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running(target: str, server_dir: Path, budget: Budget, workdir: Path, grpc_threads: int,
            op_keys: dict | None = None) -> Iterator[Server]:
    """Start `target`, yield it once it serves, stop it on exit (errors, Ctrl-C too); `op_keys` go to the pipeline."""
    if target != "model_server":
        command, ports = pipeline_command(server_dir, budget, workdir, grpc_threads, op_keys,
                                          processes=target == "pipeline_procs")
    else:
        command, ports = model_server_command(server_dir, budget)
    log = workdir / f"{target}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=quiet_env(), stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for_ports(process, sorted(set(ports.values())), log, START_TIMEOUT_S)
        if target != "model_server":
            wait_until_ready(process, f"http://127.0.0.1:{ports['http']}/ready", log, START_TIMEOUT_S)
        yield Server({protocol: f"127.0.0.1:{port}" for protocol, port in ports.items()}, process.pid)
    finally:
        stop(process)
