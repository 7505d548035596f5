"""Where the CPU goes at saturation: the server process against the load generator, per request.

    python -m bench.cpu_split [--model SqueezeNet1_1] [--seconds 8] [--concurrency 8] [--out bench/results]

The in-process ceiling spends all of both cores on decode, preprocess and predict; a server that falls
short of it either spends more CPU per request or leaves cores idle. This reads the server's CPU time
from /proc and the load generator's from getrusage around one closed-loop run per protocol.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.load import build_payloads, drive
from bench.models import DEFAULT_MODELS_DIR, DEFAULT_RESULTS_DIR, SAMPLE_IMAGE, ensure_model
from bench.report import fmt, markdown_table
from bench.servers import Budget, running

TARGETS = (("pipeline", "http"), ("pipeline", "grpc"), ("model_server", "brpc"), ("model_server", "http"))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """User + system CPU seconds of this process (the load generator's threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def split_row(target: str, protocol: str, requests: int, wall_s: float, server_s: float, client_s: float) -> dict:
    """Requests/s, CPU ms per request on each side, and how many of the cores were busy."""
    return {"target": target, "protocol": protocol, "requests_per_s": requests / wall_s,
            "server_cpu_ms": server_s / requests * 1000, "client_cpu_ms": client_s / requests * 1000,
            "busy_cores": (server_s + client_s) / wall_s}


def measure(args: argparse.Namespace) -> list[dict]:
    """One warm-up and one measured run per target and protocol, each server alone on the machine."""
    server_dir = ensure_model(args.model, DEFAULT_MODELS_DIR)
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), 1, server_dir)
    budget = Budget("onnxruntime", 2, 2)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for target, protocol in TARGETS:
            with running(target, server_dir, budget, Path(workdir), args.concurrency) as server:
                endpoint = server.endpoints[protocol]
                drive(target, protocol, endpoint, payloads, args.concurrency, 2.0)
                server_0, client_0, started = process_cpu_s(server.pid), own_cpu_s(), time.perf_counter()
                result = drive(target, protocol, endpoint, payloads, args.concurrency, args.seconds)
                wall = time.perf_counter() - started
                rows.append(split_row(target, protocol, len(result.latencies_s), wall,
                                      process_cpu_s(server.pid) - server_0, own_cpu_s() - client_0))
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The table, with the command that produced it."""
    header = ["target", "protocol", "req/s", "server CPU ms/request", "load generator CPU ms/request",
              "busy cores (of 2)"]
    cells = [[row["target"], row["protocol"], fmt(row["requests_per_s"]), fmt(row["server_cpu_ms"], 2),
              fmt(row["client_cpu_ms"], 2), fmt(row["busy_cores"], 2)] for row in rows]
    return (f"{args.model} (onnxruntime, 2 predictions × 2 threads), {args.concurrency} clients, {args.seconds} s "
            f"per row. Command: `python -m bench.cpu_split --model {args.model} --seconds {args.seconds} "
            f"--concurrency {args.concurrency}`\n\n" + markdown_table(header, cells))


def main(argv: list[str] | None = None) -> int:
    """Measure and write cpu_split.md under --out."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SqueezeNet1_1")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    text = markdown(measure(args), args)
    (args.out / "cpu_split.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
