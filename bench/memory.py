"""`memory`: the pipeline's resident memory after many requests against after warm-up, where a leak would show."""

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.ceiling import served_model
from bench.load import LoadResult, Payloads, build_payloads, drive
from bench.models import SAMPLE_IMAGE
from bench.report import memory_markdown, write_outputs
from bench.servers import Server, running
from bench.stats import rate

MAX_RATIO = 1.1  # issue 5: RSS after the run ≤ 1.1 × RSS after warm-up
ROUND_LIMIT_S = 3600.0  # rounds end by request count; this only bounds a server that stopped answering
MIB = 1 << 20


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process in /proc (a process may exit while we look: skipped)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, so worker processes (if ops ever run as processes) are counted too."""
    parents = parent_pids()
    tree, index = [pid], 0
    while index < len(tree):
        tree += [child for child, parent in parents.items() if parent == tree[index]]
        index += 1
    return tree


def rss_bytes(pid: int) -> int:
    """VmRSS of one process from /proc/PID/status; 0 once it is gone (or for kernel threads, which have none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS summed over the process tree, number of processes in it)."""
    tree = process_tree(pid)
    return sum(rss_bytes(each) for each in tree), len(tree)


def send(server: Server, payloads: Payloads, args: argparse.Namespace, count: int) -> LoadResult:
    """`count` timed requests split evenly over the protocols, one protocol after the other; results merged."""
    merged = LoadResult()
    for index, protocol in enumerate(args.protocols):
        share = count // len(args.protocols) + (index < count % len(args.protocols))
        result = drive("pipeline", protocol, server.endpoints[protocol], payloads, args.concurrency, ROUND_LIMIT_S,
                       share)
        merged.latencies_s += result.latencies_s
        merged.errors += result.errors
        merged.wall_s += result.wall_s
    return merged


def reading(server: Server, requests: int, result: LoadResult) -> dict:
    """One row: requests so far, the server tree's RSS now, and the throughput and errors of the last round."""
    rss, processes = tree_rss_bytes(server.pid)
    return {"requests": requests, "rss_bytes": rss, "processes": processes,
            "requests_per_s": rate(len(result.latencies_s), result.wall_s), "errors": len(result.errors),
            "first_error": result.errors[0] if result.errors else ""}


def measure(server: Server, payloads: Payloads, args: argparse.Namespace) -> list[dict]:
    """Warm up, read RSS, then `checkpoints` rounds of requests with a reading after each."""
    readings = [reading(server, 0, send(server, payloads, args, args.warmup_requests))]
    step = -(-args.requests // args.checkpoints)
    done = 0
    with tqdm(total=args.requests, unit="req", desc="memory", file=sys.stderr) as bar:
        while done < args.requests:
            count = min(step, args.requests - done)
            result = send(server, payloads, args, count)
            done += count
            readings.append(reading(server, done, result))
            bar.update(count)
            bar.set_postfix_str(f"{readings[-1]['rss_bytes'] / MIB:.0f} MiB")
    return readings


def run_memory(args: argparse.Namespace) -> dict:
    """One pipeline serving `args.model`; returns the memory.json report."""
    server_dir, budget = served_model(args.model, args)
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), 1, server_dir)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, \
            running("pipeline", server_dir, budget, Path(tmp), args.concurrency) as server:
        readings = measure(server, payloads, args)
    for row in readings:
        row["ratio"] = row["rss_bytes"] / readings[0]["rss_bytes"] if readings[0]["rss_bytes"] else None
    ratio = readings[-1]["ratio"]
    return {"settings": {"model": args.model, "engine": budget.engine, "precision": budget.precision,
                         "workers": budget.workers,
                         "threads": budget.threads, "protocols": args.protocols, "concurrency": args.concurrency,
                         "requests": args.requests, "warmup_requests": args.warmup_requests,
                         "checkpoints": args.checkpoints, "max_ratio": MAX_RATIO,
                         "rss": "VmRSS from /proc/PID/status, summed over the server process and its descendants"},
            "results": readings, "ratio": ratio, "met": ratio is not None and ratio <= MAX_RATIO}


def write_memory(report: dict, out: Path) -> list[Path]:
    """memory.json + memory.md in `out`."""
    return write_outputs(out, "memory", report, memory_markdown(report))
