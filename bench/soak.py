"""Soak and fault test: every protocol at saturation, good and bad requests mixed, kill -9 of a worker mid-run.

    python -m bench.soak --seconds 300 --out bench/results/soak     # the committed result (5 minutes)
    python -m bench.soak --seconds 20 --out /tmp/soak                # CI's short variant (tests/test_soak.py)

The pipeline runs as 2 worker processes sharing its ports (build_dag_each_worker), the model server
beside it. Client threads drive pipeline HTTP and gRPC and the model server's baidu_std and gRPC ports;
every 4th request is one of the bad inputs of bench/soak_cases.py. Halfway, one pipeline worker is
killed with SIGKILL. Report: requests, outcomes by kind (unexpected must be 0; connection errors count
as expected only within 5 s of the kill), RSS after warm-up vs at the end for every process that lived
through the run (growth must be <= 10 %), and the time until the replacement worker serves (<= 5 s).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.memory import parent_pids, rss_bytes
from bench.models import DEFAULT_MODELS_DIR, DEFAULT_RESULTS_DIR, SAMPLE_IMAGE, ensure_model, quiet_env
from bench.servers import free_port, stop, wait_for_ports, wait_until_ready
from bench.soak_cases import UNPICKLED, ModelServerBrpc, ModelServerGrpc, PipelineGrpc, PipelineHttp
from serving.files import atomic_write_text

KILL_WINDOW_S = 5.0
RECOVERY_TARGET_S = 5.0
RSS_GROWTH_TARGET = 0.10
BACK_IN_SERVICE = re.compile(r"worker \d+ back in service \(pid (\d+)\)")


class Tally:
    """Outcomes from every client thread; connection failures are expected only right after the kill."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.details: list[str] = []  # the first unexpected outcomes, verbatim
        self.kill_time: float | None = None
        self.first_ok_after_kill: float | None = None
        self._lock = threading.Lock()

    def add(self, name: str, outcome: str) -> None:
        """Count one request's outcome under its case name."""
        with self._lock:
            self.outcomes["ok: all protocols" if outcome == "ok" else f"{outcome.split(':', 1)[0]}: {name}"] += 1
            if outcome.startswith("unexpected") and len(self.details) < 20:
                self.details.append(f"{name}: {outcome[:300]}")
            if outcome == "ok" and self.kill_time is not None and self.first_ok_after_kill is None:
                self.first_ok_after_kill = time.monotonic() - self.kill_time

    def failed(self, name: str, exc: BaseException) -> None:
        """A request that raised: the killed worker's connections, or an unexpected error."""
        near_kill = self.kill_time is not None and time.monotonic() - self.kill_time < KILL_WINDOW_S
        kind = "kill" if near_kill else "unexpected"
        self.add(name, f"{kind}: {type(exc).__name__}: {exc}")


def drive(client: object, tally: Tally, stopping: threading.Event, label: str) -> None:
    """Requests back to back: three good, then the next bad case, until stopped."""
    cases = client.cases()
    index = 0
    while not stopping.is_set():
        case = cases[(index // 4) % len(cases)] if index % 4 == 3 else None
        name, send = (case.name, case.send) if case else (f"{label}: good", client.good)
        try:
            tally.add(name, send())
        except Exception as exc:  # a crash or reset: classified by whether the kill can explain it
            tally.failed(name, exc)
            if hasattr(client, "close"):
                client.close()
        index += 1


def pipeline_config(model_dir: Path, http_port: int, rpc_port: int) -> dict:
    """Two worker processes sharing the ports, one prediction at a time each, one math thread."""
    return {"worker_num": 2, "build_dag_each_worker": True, "http_port": http_port, "rpc_port": rpc_port,
            "op": {"imagenet": {"concurrency": 1, "local_service_conf": {
                "model_config": str(model_dir), "device_type": 0, "thread_num": 1, "fetch_list": ["prediction"]}}}}


def start_servers(model_dir: Path, workdir: Path) -> tuple[dict[str, subprocess.Popen], dict[str, int], Path]:
    """The pipeline (2 workers) and the model server as subprocesses; returns once both serve."""
    ports = {"http": free_port(), "rpc": free_port(), "brpc": free_port(), "model_grpc": free_port()}
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump(pipeline_config(model_dir, ports["http"], ports["rpc"])), encoding="utf-8")
    log = workdir / "pipeline.log"
    commands = {"pipeline": [sys.executable, "-m", "pipelines.web_service", "--config", str(config),
                             "--pid_file", str(workdir / "pipeline.pid")],
                "model_server": [sys.executable, "-m", "serving.model_server", "--model", str(model_dir),
                                 "--port", str(ports["brpc"]), "--grpc_port", str(ports["model_grpc"]),
                                 "--thread", "1", "--cpu_threads", "1"]}
    processes = {}
    for name, command in commands.items():
        with (workdir / f"{name}.log").open("wb") as handle:
            processes[name] = subprocess.Popen(command, env=quiet_env(), stdout=handle,
                                               stderr=subprocess.STDOUT)
    wait_until_ready(processes["pipeline"], f"http://127.0.0.1:{ports['http']}/ready", log, 600)
    wait_for_ports(processes["model_server"], [ports["brpc"], ports["model_grpc"]], workdir / "model_server.log", 600)
    return processes, ports, log


def workers(supervisor: int) -> list[int]:
    """The pipeline's worker processes (not multiprocessing's resource tracker)."""
    found = []  # by parent pid: /proc/PID/task/PID/children misses those the supervisor's watcher thread restarted
    for pid in [child for child, parent in parent_pids().items() if parent == supervisor]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.append(pid)
    return found


def snapshot(processes: dict[str, subprocess.Popen]) -> dict[str, int]:
    """RSS by role and pid: the supervisor, each worker, the model server."""
    supervisor = processes["pipeline"].pid
    pids = {f"pipeline supervisor {supervisor}": supervisor,
            **{f"pipeline worker {pid}": pid for pid in workers(supervisor)},
            f"model server {processes['model_server'].pid}": processes["model_server"].pid}
    return {name: rss_bytes(pid) // 1024 for name, pid in pids.items()}


def kill_a_worker(processes: dict[str, subprocess.Popen], log: Path, tally: Tally) -> dict:
    """SIGKILL one worker; wait for the supervisor's 'back in service' line of its replacement."""
    victim = workers(processes["pipeline"].pid)[0]
    seen = len(BACK_IN_SERVICE.findall(log.read_text(errors="replace")))
    tally.kill_time = killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while time.monotonic() - killed < 120:
        lines = BACK_IN_SERVICE.findall(log.read_text(errors="replace"))
        if len(lines) > seen:
            return {"killed_pid": victim, "replacement_pid": int(lines[-1]),
                    "recovery_s": round(time.monotonic() - killed, 2)}
        time.sleep(0.05)
    return {"killed_pid": victim, "replacement_pid": None, "recovery_s": None}


def run(model_dir: Path, seconds: float, workdir: Path, threads: int) -> dict:
    """Start, warm up, drive every protocol, kill a worker halfway, stop; the raw result."""
    processes, ports, log = start_servers(model_dir, workdir)
    image = SAMPLE_IMAGE.read_bytes()
    factories: list[tuple[str, Callable[[], object]]] = [
        ("pipeline http", lambda: PipelineHttp(ports["http"], image)),
        ("pipeline grpc", lambda: PipelineGrpc(ports["rpc"], image)),
        ("model server brpc", lambda: ModelServerBrpc(ports["brpc"], image)),
        ("model server grpc", lambda: ModelServerGrpc(ports["model_grpc"], image))]
    tally, stopping = Tally(), threading.Event()
    try:
        loops = [threading.Thread(target=drive, args=(factory(), tally, stopping, label), daemon=True)
                 for label, factory in factories for _ in range(threads)]
        for loop in loops:
            loop.start()
        time.sleep(min(30.0, seconds * 0.2))
        warm = snapshot(processes)
        time.sleep(max(seconds / 2 - min(30.0, seconds * 0.2), 0))
        kill = kill_a_worker(processes, log, tally)
        time.sleep(max(seconds / 2 - (time.monotonic() - tally.kill_time), 0))
        end = snapshot(processes)
        stopping.set()
        for loop in loops:
            loop.join(timeout=60)
    finally:
        for process in processes.values():
            stop(process)
    unpickled = sum(log.read_text(errors="replace").count(UNPICKLED) for log in workdir.glob("*.log"))
    return summarize(tally, warm, end, kill, seconds, threads, unpickled)


def summarize(tally: Tally, warm: dict[str, int], end: dict[str, int], kill: dict, seconds: float,
              threads: int, unpickled: int) -> dict:
    """Totals, the pass/fail verdicts and the RSS of the processes that lived through the run."""
    outcomes = dict(sorted(tally.outcomes.items()))
    survivors = sorted(set(warm) & set(end))
    growth = sum(end[name] for name in survivors) / max(sum(warm[name] for name in survivors), 1) - 1
    unexpected = sum(count for kind, count in outcomes.items() if kind.startswith("unexpected:"))
    verdicts = {"unexpected errors = 0": unexpected == 0, "no client data unpickled (server logs)": unpickled == 0,
                f"RSS growth <= {RSS_GROWTH_TARGET:.0%}": growth <= RSS_GROWTH_TARGET,
                f"recovery <= {RECOVERY_TARGET_S:.0f} s": kill["recovery_s"] is not None
                and kill["recovery_s"] <= RECOVERY_TARGET_S}
    return {"seconds": seconds, "client_threads_per_protocol": threads,
            "requests": sum(outcomes.values()), "unexpected": unexpected, "unexpected_details": tally.details,
            "outcomes": outcomes, "kill": kill,
            "first_success_after_kill_s": tally.first_ok_after_kill,
            "rss_kb": {"after_warm_up": warm, "at_end": end, "survivors": survivors, "growth": round(growth, 4)},
            "verdicts": verdicts, "passed": all(verdicts.values())}


def markdown(result: dict, command: str) -> str:
    """The committed report."""
    rss = result["rss_kb"]
    lines = [f"# Soak and fault test\n\nCommand: `{command}`\n",
             f"{result['seconds']:.0f} s, {result['client_threads_per_protocol']} client thread(s) per protocol "
             f"(pipeline HTTP, pipeline gRPC, model server baidu_std, model server gRPC), every 4th request bad; "
             f"pipeline in 2 worker processes sharing its ports. Requests: **{result['requests']}**, unexpected "
             f"errors: **{result['unexpected']}**.\n", "| verdict | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if met else 'NO'} |" for name, met in result["verdicts"].items()]
    kill = result["kill"]
    lines += ["", f"Kill -9 of worker {kill['killed_pid']} halfway: replacement {kill['replacement_pid']} serving "
              f"after **{kill['recovery_s']} s**; the first successful request after the kill came "
              f"{(result['first_success_after_kill_s'] or 0) * 1000:.0f} ms after it (the other worker kept "
              "answering).", "", "| outcome | case | count |", "|---|---|---|"]
    for kind, count in result["outcomes"].items():
        outcome, _, case = kind.partition(": ")
        lines.append(f"| {outcome} | {case} | {count} |")
    lines += [f"\nUnexpected: `{detail}`" for detail in result["unexpected_details"]]
    lines += ["", f"RSS (kB) after warm-up vs at the end; growth over the processes that lived through the run: "
              f"**{rss['growth']:+.1%}**", "", "| process | after warm-up | at end |", "|---|---|---|"]
    for name in sorted(set(rss["after_warm_up"]) | set(rss["at_end"])):
        lines.append(f"| {name} | {rss['after_warm_up'].get(name, '—')} | {rss['at_end'].get(name, '—')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, write soak.json and soak.md into --out, exit 1 unless every verdict is met."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the run")
    parser.add_argument("--threads", type=int, default=1, help="client threads per protocol")
    parser.add_argument("--model", type=Path, help="serving_server folder (default: SqueezeNet1_1, exported once)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR / "soak", help="result folder")
    args = parser.parse_args(argv)
    model_dir = args.model or ensure_model("SqueezeNet1_1", DEFAULT_MODELS_DIR)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"server logs: {workdir}", file=sys.stderr)
    result = run(model_dir.resolve(), args.seconds, workdir, args.threads)
    command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(args.out / "soak.json", json.dumps({"command": command, **result}, indent=1) + "\n")
    atomic_write_text(args.out / "soak.md", markdown(result, command))
    print(markdown(result, command))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
