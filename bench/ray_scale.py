"""Ray Serve scaling: saturated throughput of the pipeline with 1 and 2 replicas, and where the CPU went.

    python -m bench.ray_scale [--model SqueezeNet1_1] [--replicas 1 2] [--op-threads 1 2] [--concurrency 8]
                              [--seconds 20] [--rounds 1] [--protocol http] [--profile-s 0] [--out bench/results]

A head and a worker node on 127.0.0.1 with one CPU each (ray.cluster_utils.Cluster), deployed by deploy.rayserve
with ray_serve.num_replicas fixed per row. Each replica reserves one CPU (a reservation, not a limit) and runs
--op-threads ONNX Runtime predictors of 1 math thread. The load generator's threads run in this process, through
Ray's proxies. Each row reads the CPU time of every process Ray started (replicas, proxies, controller, the rest)
and of this process, so a row that does not scale shows which part took the cores.
"""

import argparse
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from bench.cpu_split import own_cpu_s, process_cpu_s
from bench.load import LoadResult, build_payloads, drive
from bench.memory import process_tree
from bench.models import DEFAULT_MODELS_DIR, DEFAULT_RESULTS_DIR, SAMPLE_IMAGE, ensure_model
from bench.report import fmt, machine_info, markdown_table, write_outputs, write_readme
from bench.servers import free_port
from bench.stats import rate, summarize

NAME = "imagenet"
KINDS = (("ray::ServeReplica", "replicas"), ("ray::ProxyActor", "proxies"), ("ray::ServeController", "controller"))
WARMUP_S = 3.0
# Who spent a sample: the innermost frame outside the standard library's plumbing (threads, pools, event loops)
# names the model, the kit's own code (decode, preprocess, data plane, REST app) or, for anything else, Ray (its
# event loops, actor calls, routing, metrics; native time shows under the Python frame that called it).
PROFILE_GROUPS = (("model (ONNX Runtime)", ("onnxruntime/",)),
                  ("kit (serving, pipelines, starlette, json)", ("serving/", "pipelines/", "starlette/", "json/")))
RAY_GROUP = "Ray Serve and its threads"
PLUMBING = ("threading.py", "concurrent/", "asyncio/", "queue.py", "selectors.py", "contextlib.py")


def ray_processes() -> dict[int, str]:
    """This process's descendants (Ray's GCS, raylets, dashboard, workers), each with its kind."""
    found = {}
    for pid in process_tree(os.getpid())[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        found[pid] = next((kind for prefix, kind in KINDS if command.startswith(prefix)), "ray (other)")
    return found


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of Ray's processes by kind, and of this process (the load generator)."""
    totals: dict[str, float] = defaultdict(float)
    for pid, kind in ray_processes().items():
        try:
            totals[kind] += process_cpu_s(pid)
        except (OSError, IndexError):
            continue  # exited meanwhile
    totals["load generator"] = own_cpu_s()
    return dict(totals)


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent so far (other users' included), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def profile(pids: dict[str, int], seconds: int, folder: Path) -> list[subprocess.Popen]:
    """py-spy (installed with ray[serve]) on each process for `seconds` at 50 Hz, collapsed stacks into `folder`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "-d", str(seconds), "-r", "50", "-f", "raw", "--nonblocking",
                              "-o", str(folder / f"{kind}.txt"), "--pid", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for kind, pid in pids.items()]


def profile_shares(path: Path) -> dict[str, float]:
    """Percent of a process's samples by PROFILE_GROUPS (the rest is Ray's), from py-spy's collapsed stacks."""
    counts: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        files = [file for file in re.findall(r"\(([^()]*):\d+\)", stack)
                 if not any(part in file for part in PLUMBING)]
        owner = files[-1] if files else ""
        group = next((name for name, keys in PROFILE_GROUPS
                      if any(owner.startswith(key) or f"/{key}" in owner for key in keys)), RAY_GROUP)
        counts[group] += int(samples)
    total = sum(counts.values()) or 1
    return {"samples": total, **{group: counts[group] / total * 100
                                 for group in [*(name for name, _ in PROFILE_GROUPS), RAY_GROUP]}}


def config_for(server_dir: Path, replicas: int, op_threads: int, concurrency: int) -> dict:
    """config.yml for one row: a fixed replica count, one CPU reserved per replica, room for every client."""
    return {"http_port": 18080,
            "op": {NAME: {"concurrency": op_threads, "local_service_conf": {
                "model_config": str(server_dir), "engine": "onnxruntime", "thread_num": 1}}},
            "ray_serve": {"num_replicas": replicas, "max_ongoing_requests": concurrency,
                          "ray_actor_options": {"num_cpus": 1}, "http_host": "127.0.0.1",
                          "http_port": free_port(), "grpc_port": free_port()}}


def measure(args: argparse.Namespace) -> tuple[list[dict], dict | None]:
    """One cluster; per round and (op threads, replicas) a deployment, warm-up and measured window; then the profile."""
    import deploy  # Ray's workers import deploy (not installed with the kit) from the folder holding it

    source = str(Path(deploy.__file__).resolve().parents[1])
    os.environ.update({"PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
                       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"})
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deploy.rayserve import deploy, read

    server_dir = ensure_model(args.model, args.models_dir)
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), 1, server_dir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)  # replica logs stay in files
    rows, shares = [], None
    try:
        with tempfile.TemporaryDirectory() as folder:
            for round_index, op_threads, replicas in itertools.product(range(args.rounds), args.op_threads,
                                                                       args.replicas):
                path = Path(folder) / f"config_{op_threads}_{replicas}.yml"
                path.write_text(yaml.safe_dump(config_for(server_dir, replicas, op_threads, args.concurrency)))
                config, source = read(path)
                serve.shutdown()  # proxies take the ports of serve.start only when Serve starts anew
                deploy(config, source)
                port = config.ray_serve.grpc_port if args.protocol == "grpc" else config.ray_serve.http_port
                endpoint = f"127.0.0.1:{port}"
                drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, WARMUP_S)
                kinds = list(ray_processes().values())
                before, machine_before = cpu_by_kind(), machine_busy_s()
                result = drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, args.seconds)
                after, machine_after = cpu_by_kind(), machine_busy_s()
                rows.append({"round": round_index, "op_threads": op_threads,
                             **row(replicas, kinds, result, before, after, machine_after - machine_before)})
                print(f"round {round_index}, {op_threads} op thread(s), {replicas} replica(s): "
                      f"{rows[-1]['requests_per_s']:.1f} req/s, {len(result.errors)} errors, "
                      f"others' load {rows[-1]['others_cores']:.2f} cores", file=sys.stderr)
            if args.profile_s:  # a window of its own after the last row, so py-spy costs the measurement nothing
                targets = {kind: next(pid for pid, found in ray_processes().items() if found == kind)
                           for kind in ("replicas", "proxies")}
                spies = profile(targets, args.profile_s, Path(folder))
                drive("pipeline", args.protocol, endpoint, payloads, args.concurrency, args.profile_s + 1)
                for spy in spies:
                    spy.wait()
                shares = {kind: profile_shares(Path(folder) / f"{kind}.txt") for kind in targets}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return rows, shares


def cleanest(windows: list[dict]) -> list[dict]:
    """Per (op threads, replicas), the round that other users' processes disturbed least (this machine is shared)."""
    best: dict[tuple[int, int], dict] = {}
    for window in windows:
        key = (window["op_threads"], window["replicas"])
        if key not in best or window["others_cores"] < best[key]["others_cores"]:
            best[key] = window
    return list(best.values())


def row(replicas: int, kinds: list[str], result: LoadResult, before: dict, after: dict, machine_s: float) -> dict:
    """Throughput, latency and CPU ms per request by kind for one window."""
    count, wall = len(result.latencies_s), result.wall_s
    cpu = {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in after}
    busy = {kind: seconds / wall for kind, seconds in sorted(cpu.items())}
    return {"replicas": replicas, "replica_processes": kinds.count("replicas"),
            "proxy_processes": kinds.count("proxies"), "requests": count, "errors": len(result.errors),
            "error_samples": result.errors[:5], "wall_s": wall, "requests_per_s": rate(count, wall),
            "latency": summarize([value * 1000 for value in result.latencies_s]),
            "cpu_ms_per_request": {kind: seconds / max(count, 1) * 1000 for kind, seconds in sorted(cpu.items())},
            "busy_cores": busy, "machine_busy_cores": machine_s / wall,
            "others_cores": max(0.0, machine_s / wall - sum(busy.values()))}


def markdown(rows: list[dict], profile_shares_by_kind: dict | None, args: argparse.Namespace, command: str) -> str:
    """The table (each row the least disturbed of its rounds) and the profile, under the command that made them."""
    kinds = sorted({kind for item in rows for kind in item["cpu_ms_per_request"]})
    header = ["op threads per replica", "replicas", "req/s", "p50 ms", "p99 ms", "errors",
              *[f"{kind} CPU ms/req" for kind in kinds], "busy cores: Ray + client / others"]
    cells = []
    for item in rows:
        latency, ours = item["latency"], sum(item["busy_cores"].values())
        cells.append([str(item["op_threads"]), str(item["replicas"]), fmt(item["requests_per_s"]),
                      fmt(latency["median_ms"]), fmt(latency["p99_ms"]), str(item["errors"]),
                      *[fmt(item["cpu_ms_per_request"].get(kind), 2) for kind in kinds],
                      f"{ours:.2f} / {item['others_cores']:.2f}"])
    setup = (f"{args.model} on Ray Serve: a head and a worker node on 127.0.0.1 with 1 CPU each, 1 CPU reserved per "
             f"replica (ONNX Runtime, one predictor of 1 math thread per op thread), {args.concurrency} closed-loop "
             f"{args.protocol} clients in the bench process through Ray's proxies, {args.seconds:g} s per window "
             f"after {WARMUP_S:g} s of warm-up. The machine is shared: each row is the one of {args.rounds} rounds in "
             f"which other users' processes took the least CPU ('others', cores); every window is in the JSON.")
    return (f"{setup}\n\nCommand: `{command}`\n\n" + markdown_table(header, cells)
            + profile_markdown(profile_shares_by_kind, args))


def profile_markdown(profile_shares_by_kind: dict | None, args: argparse.Namespace) -> str:
    """The py-spy shares of one replica and one proxy, if profiled."""
    if profile_shares_by_kind is None:
        return ""
    groups = [*(name for name, _ in PROFILE_GROUPS), RAY_GROUP]
    cells = [[f"one of {args.replicas[-1]} {kind}", str(shares["samples"]), *(fmt(shares[name]) for name in groups)]
             for kind, shares in profile_shares_by_kind.items()]
    return (f"\nWhere a replica's and a proxy's CPU went: py-spy at 50 Hz for {args.profile_s} s under the same load "
            f"after the last window, % of samples by their innermost frame outside thread, pool and event-loop "
            f"code:\n\n" + markdown_table(["process", "samples", *[f"{group} %" for group in groups]], cells))


def main(argv: list[str] | None = None) -> int:
    """Measure, then write ray_scale.json and ray_scale.md into --out and rebuild its README."""
    parser = argparse.ArgumentParser(prog="python -m bench.ray_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SqueezeNet1_1")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--op-threads", type=int, nargs="+", default=[1, 2],
                        help="op.imagenet.concurrency per replica: 1 keeps a replica within its one CPU")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row; the least disturbed round is shown")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--profile-s", type=int, default=0, help="py-spy a replica and a proxy this long after the "
                                                                 "last row (0: no profile)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    command = "python -m bench.ray_scale " + shlex.join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()
    windows, shares = measure(args)
    rows = cleanest(windows)
    report = {"command": command.strip(), "machine": machine_info(), "load_before": load_before,
              "settings": {key: str(value) for key, value in vars(args).items()}, "rows": rows, "windows": windows,
              "profile": shares}
    for path in write_outputs(args.out, "ray_scale", report, markdown(rows, shares, args, command.strip())):
        print(f"wrote {path}")
    print(f"wrote {write_readme(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
