"""The CPU engines a model can run on, and the timing table the model card records per machine, read for `auto`.

`python -m export --measure DIR` (or `--measure` on an export) writes the table; the serving side only reads it here.
"""

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from serving.machine import this_machine
from serving.model_card import CARD_FILE

TIMINGS_KEY = "engine_timings"


@dataclass(frozen=True)
class CpuEngine:
    """One engine and precision on CPU: the local_service_conf keys that select it and the export file it needs."""

    key: str
    label: str
    precision: str
    conf: dict
    model_file: str  # in serving_server/; Paddle's inference program is always there


CPU_ENGINES = (
    CpuEngine("paddle_onednn", "Paddle + oneDNN", "fp32",
              {"engine": "paddle", "use_mkldnn": True, "ir_optim": True}, ""),
    CpuEngine("paddle", "Paddle, no oneDNN", "fp32", {"engine": "paddle", "use_mkldnn": False, "ir_optim": True}, ""),
    CpuEngine("onnxruntime", "ONNX Runtime", "fp32", {"engine": "onnxruntime"}, "inference.onnx"),
    CpuEngine("onnxruntime_int8", "ONNX Runtime INT8", "int8", {"engine": "onnxruntime", "precision": "int8"},
              "inference.int8.onnx"),
)
ENGINES_BY_KEY = {engine.key: engine for engine in CPU_ENGINES}


@dataclass(frozen=True)
class Fastest:
    """The FP32 engine `auto` runs, and the figure it won with."""

    engine: CpuEngine
    ms_per_image: float
    threads: int

    @property
    def reason(self) -> str:
        """For the start-up log and /metadata: why this engine."""
        return (f"auto: fastest FP32 engine measured on this machine ({self.engine.label}, "
                f"{self.ms_per_image:.2f} ms per image, {self.threads} threads)")


def recorded_tables(model_dir: Path) -> list[dict]:
    """The card's timing tables (one per machine measured on); none when the card or its table is missing."""
    try:
        card = yaml.safe_load((Path(model_dir).parent / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    tables = card.get(TIMINGS_KEY) if isinstance(card, dict) else None
    return [table for table in tables or [] if isinstance(table, dict) and isinstance(table.get("rows"), list)]


def table_for(tables: list[dict], machine: dict, threads: int) -> dict | None:
    """This machine's table, the one taken at `threads` math threads when there are several."""
    mine = [table for table in tables if table.get("machine") == machine]
    same_threads = [table for table in mine if table.get("threads") == threads]
    return (same_threads or mine or [None])[-1]


def score(rows: list[dict]) -> float:
    """One engine's figure over the recorded batch sizes: the geometric mean of its ms per image."""
    times = [float(row["ms_per_image"]) for row in rows]
    return math.exp(sum(math.log(value) for value in times) / len(times))


def available(engine: CpuEngine, model_dir: Path) -> bool:
    """The export has the engine's model file and its runtime is installed (Paddle is an extra)."""
    has_file = not engine.model_file or (Path(model_dir) / engine.model_file).is_file()
    return has_file and importlib.util.find_spec(engine.conf["engine"]) is not None


def fastest_in(table: dict, model_dir: Path, threads: int) -> Fastest | None:
    """The fastest FP32 engine of one timing table whose model file and runtime are here; None if it has none
    (`threads`: what to report when the table does not say)."""
    by_engine: dict[str, list[dict]] = {}
    for row in table["rows"]:
        engine = ENGINES_BY_KEY.get(row.get("engine"))
        if engine is not None and engine.precision == "fp32" and available(engine, model_dir) and "ms_per_image" in row:
            by_engine.setdefault(engine.key, []).append(row)
    if not by_engine:
        return None
    key = min(by_engine, key=lambda name: score(by_engine[name]))
    return Fastest(ENGINES_BY_KEY[key], score(by_engine[key]), int(table.get("threads", threads)))


def fastest_fp32(model_dir: Path, threads: int, machine: dict | None = None) -> Fastest | None:
    """The fastest FP32 engine recorded for this machine whose model file the export has; None without a table."""
    table = table_for(recorded_tables(model_dir), machine or this_machine(), threads)
    return None if table is None else fastest_in(table, model_dir, threads)
