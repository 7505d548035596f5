"""Time each CPU engine and precision an export can run here, each in a fresh process, and record the table in the
model card with the machine it ran on: `engine: auto` then runs the fastest FP32 engine measured on that machine.

    python -m export --measure DIR [--threads N] [--max-batch-size B]     (on the serving machine)
    python -m export.measure '<spec JSON>' OUT.json                         (one engine's timing; used by the above)
"""

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from export.errors import ExportError
from serving.config import LocalServiceConf
from serving.files import atomic_write_text
from serving.machine import this_machine
from serving.model_card import CARD_FILE
from serving.model_config import SERVER_CONF, read_config
from serving.predictor.engine_table import CPU_ENGINES, TIMINGS_KEY, CpuEngine, available, fastest_in

DEFAULT_THREADS = 2  # local_service_conf.thread_num's default
DEFAULT_MAX_BATCH = 8
DEFAULT_RUNS = 10
WARMUP_RUNS = 2
MIN_RUNS = 3
BUDGET_S = 10.0  # per engine and batch size: big models at large batches stop after MIN_RUNS
TIMEOUT_S = 1800
METHOD = (f"LocalPredictor.predict on random float32 input; median of up to {DEFAULT_RUNS} timed runs (at least "
          f"{MIN_RUNS}, about {BUDGET_S:.0f} s) after {WARMUP_RUNS} warm-up runs per batch size; each engine in its "
          "own process")


class MeasureError(ExportError):
    """The folder is not an export, or no engine could be timed."""


def build_predictor(server_dir: str, conf: dict, pool_size: int) -> object:
    """A LocalPredictor from local_service_conf keys, validated exactly as config.yml would be."""
    from serving.predictor import LocalPredictor, settings_from_conf

    service_conf = LocalServiceConf(model_config=server_dir, **conf)
    service_conf.validate("measure")
    model_config = read_config(Path(server_dir) / SERVER_CONF)
    return LocalPredictor(settings_from_conf(service_conf, model_config, path="measure"), model_config, pool_size)


def time_engine(spec: dict) -> dict:
    """Setup time, then per batch size `warmup` untimed and up to `runs` timed predict calls (within `budget_s`)."""
    started = time.perf_counter()
    predictor = build_predictor(spec["server_dir"], spec["conf"], pool_size=1)
    setup_s = time.perf_counter() - started
    shape = list(read_config(Path(spec["server_dir"]) / SERVER_CONF).feed_var[0].shape)
    feed = predictor.feed_names[0]
    rng = np.random.default_rng(0)
    budget_s = spec.get("budget_s", float("inf"))
    samples: dict[str, list[float]] = {}
    for batch in spec["batches"]:
        array = rng.standard_normal((batch, *shape), dtype=np.float32)
        for _ in range(spec["warmup"]):
            predictor.predict({feed: array})
        timings: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(timings) < spec["runs"] and (len(timings) < MIN_RUNS or time.perf_counter() < deadline):
            start = time.perf_counter()
            predictor.predict({feed: array})
            timings.append((time.perf_counter() - start) * 1000)
        samples[str(batch)] = timings
    return {"setup_s": setup_s, "samples_ms": samples}


class WorkerProcessError(MeasureError):
    """A worker process ran past its time, exited non-zero or wrote no result; its stderr comes along."""

    def __init__(self, message: str, returncode: int | None = None, stderr_lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_lines = stderr_lines or []

    @property
    def last_line(self) -> str:
        """The worker's last word (a traceback's error line), or what happened to it."""
        return self.stderr_lines[-1] if self.stderr_lines else str(self)


def run_in_fresh_process(argv: list[str], timeout_s: float = TIMEOUT_S, env: dict[str, str] | None = None) -> dict:
    """`python -m ARGV... OUT.json` in a fresh interpreter (engines' thread pools distort each other in one
    process); the JSON the worker wrote to OUT.json."""
    with tempfile.TemporaryDirectory(prefix="worker-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            done = subprocess.run([sys.executable, "-m", *argv, str(out)], env=env, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise WorkerProcessError(f"ran past {timeout_s:.0f} s") from None
        if done.returncode != 0 or not out.is_file():
            raise WorkerProcessError(f"exited with {done.returncode}", done.returncode,
                               [line for line in done.stderr.strip().splitlines() if line.strip()])
        return json.loads(out.read_text(encoding="utf-8"))


def measure(server_dir: Path, threads: int = DEFAULT_THREADS, max_batch: int = DEFAULT_MAX_BATCH,
            runs: int = DEFAULT_RUNS, progress: Callable[[str], None] = lambda _: None) -> dict:
    """The timing table of every engine this export and install can run, as the card records it."""
    server_dir = Path(server_dir).resolve()
    if not (server_dir / SERVER_CONF).is_file():
        raise MeasureError(f"{server_dir} has no {SERVER_CONF}: give an exported model folder (or its serving_server)")
    batches = sorted({1, max_batch})
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for engine in CPU_ENGINES:
        if not available(engine, server_dir):
            skipped[engine.key] = why_unavailable(engine, server_dir)
            continue
        progress(engine.label)
        spec = {"server_dir": str(server_dir), "batches": batches, "runs": runs, "warmup": WARMUP_RUNS,
                "budget_s": BUDGET_S, "conf": {**engine.conf, "thread_num": threads, "max_batch_size": max_batch}}
        try:
            timing = run_in_fresh_process(["export.measure", json.dumps(spec)])
        except WorkerProcessError as exc:
            skipped[engine.key] = f"failed: {exc.last_line}"
            continue
        rows += [row(engine, batch, timing["samples_ms"][str(batch)]) for batch in batches]
    if not rows:
        raise MeasureError(f"no engine could be timed on {server_dir}: " + "; ".join(
            f"{key}: {why}" for key, why in skipped.items()))
    return {"machine": this_machine(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threads": threads, "method": METHOD, "rows": rows, "skipped": skipped}


def why_unavailable(engine: CpuEngine, server_dir: Path) -> str:
    """The reason `available` said no, in the words a user acts on."""
    if engine.model_file and not (server_dir / engine.model_file).is_file():
        flag = "--int8 --calib-images DIR" if engine.precision == "int8" else "--onnx"
        return f"no {engine.model_file} (export with {flag})"
    return f"{engine.conf['engine']} is not installed"


def row(engine: CpuEngine, batch: int, samples_ms: list[float]) -> dict:
    """One table line: the median and its per-image share."""
    median = float(np.median(samples_ms))
    return {"engine": engine.key, "precision": engine.precision, "batch": batch, "runs": len(samples_ms),
            "median_ms": round(median, 3), "ms_per_image": round(median / batch, 3)}


def record(server_dir: Path, table: dict) -> dict:
    """Add the table to the card, replacing an earlier one of the same machine and thread count; returns the card."""
    card_path = Path(server_dir).resolve().parent / CARD_FILE
    try:
        card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MeasureError(f"cannot read the model card {card_path} ({exc})") from None
    kept = [old for old in card.get(TIMINGS_KEY) or []
            if (old.get("machine"), old.get("threads")) != (table["machine"], table["threads"])]
    card[TIMINGS_KEY] = [*kept, table]
    atomic_write_text(card_path, yaml.safe_dump(card, sort_keys=False))
    return card


def lines(server_dir: Path, table: dict) -> list[str]:
    """What the command prints: the table, what was skipped, and what `engine: auto` will now run."""
    labels = {engine.key: engine.label for engine in CPU_ENGINES}
    out = [f"engine timings on {table['machine']['cpu']} ({table['machine']['cpus']} CPUs), "
           f"{table['threads']} threads:"]
    out += [f"  {labels[r['engine']]:<20} batch {r['batch']:>3}: {r['median_ms']:9.2f} ms "
            f"({r['ms_per_image']:.2f} ms per image)" for r in table["rows"]]
    out += [f"  {labels[key]:<20} skipped: {why}" for key, why in table["skipped"].items()]
    fastest = fastest_in(table, Path(server_dir).resolve(), table["threads"])
    if fastest is not None:
        out.append(f"  engine: auto now runs {fastest.engine.label} on this machine")
    return out


def resolve_server_dir(folder: Path) -> Path:
    """An export's root or its serving_server folder, as the user names it."""
    folder = Path(folder)
    return folder / "serving_server" if (folder / "serving_server" / SERVER_CONF).is_file() else folder


def main(argv: list[str]) -> int:
    """Worker mode: time one engine as the spec says and write the samples as JSON."""
    spec, out = json.loads(argv[0]), Path(argv[1])
    out.write_text(json.dumps(time_engine(spec)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
