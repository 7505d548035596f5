"""What the benchmarks write: JSON with the raw numbers, Markdown tables for the README, the machine they ran on."""

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: fixed decimals, an en dash for a missing value."""
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, the header has {len(header)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The first `model name` in /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dist_version(*names: str) -> str:
    """The installed version of the first distribution found (CPU or GPU wheel), without importing it."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> dict[str, object]:
    """Enough to tell whether two result sets are comparable."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "python": platform.python_version(),
            "paddle": dist_version("paddlepaddle", "paddlepaddle-gpu"),
            "onnxruntime": dist_version("onnxruntime", "onnxruntime-gpu"), "platform": platform.platform()}


def machine_line(machine: dict) -> str:
    """One Markdown line describing the machine."""
    return (f"{machine['cores']} cores ({machine['usable_cores']} usable), {machine['cpu']}; "
            f"Python {machine['python']}, {machine['paddle']}, {machine['onnxruntime']}; {machine['platform']}")


def write_outputs(out: Path, name: str, report: dict, markdown: str) -> list[Path]:
    """`out/name.json` (indented, raw samples included) and `out/name.md`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(markdown, encoding="utf-8")
    return paths


def _cell(row: dict | None) -> tuple[str, float | None]:
    """'median / p99' for one engine at one batch size, and the median used to pick the fastest."""
    if row is None:
        return "–", None
    if "error" in row:
        return "failed", None
    return f"{fmt(row['median_ms'])} / {fmt(row['p99_ms'])}", row["median_ms"]


def engines_markdown(report: dict) -> str:
    """Rows model × batch size, one 'median / p99' ms column per engine, the fastest median in bold."""
    engines = report["engines"]
    by_key = {(row["model"], row["batch"], row["engine"]): row for row in report["results"]}
    header = ["Model", "input", "bs", *engines.values()]
    rows = []
    for model, size in dict.fromkeys((row["model"], row["input"]) for row in report["results"]):
        for batch in report["settings"]["batches"]:
            cells = [_cell(by_key.get((model, batch, engine))) for engine in engines]
            medians = [median for _, median in cells if median is not None]
            best = min(medians) if len(medians) > 1 else None
            rows.append([model, str(size), str(batch),
                         *(f"**{text}**" if median is not None and median == best else text for text, median in cells)])
    settings = report["settings"]
    intro = (f"`LocalPredictor.predict` latency in ms, median / p99 of {settings['runs']} runs after "
             f"{settings['warmup']} warm-up runs, {settings['threads']} math threads, random float32 input; each "
             "(model, engine) in its own process. Fastest median in bold.\n\n")
    notes = [f"\n- {note}" for note in report.get("notes", [])]
    return intro + markdown_table(header, rows) + "".join(notes) + ("\n" if notes else "")


def ceiling_markdown(ceiling: dict) -> str:
    """One row: images/s and p50 of preprocess, predict and total for the in-process ceiling."""
    header = ["Model", "engine", "workers × threads", "images/s", "preprocess p50 ms", "predict p50 ms",
              "total p50 ms"]
    row = [ceiling["model"], ceiling["engine"], f"{ceiling['workers']} × {ceiling['threads']}",
           fmt(ceiling["images_per_s"]), fmt(ceiling["preprocess"]["median_ms"], 2),
           fmt(ceiling["predict"]["median_ms"], 2), fmt(ceiling["total"]["median_ms"], 2)]
    intro = (f"In-process ceiling: decode + preprocess + predict of `{ceiling['image']}` from {ceiling['workers']} "
             f"threads sharing a predictor pool of {ceiling['workers']}, {ceiling['seconds']} s, no serving.\n\n")
    return intro + markdown_table(header, [row])


def e2e_markdown(report: dict) -> str:
    """One row per target × protocol × concurrency; the last column is throughput over the ceiling."""
    header = ["target", "protocol", "concurrency", "req/s", "images/s", "p50 ms", "p90 ms", "p99 ms", "errors",
              "of ceiling"]
    rows = [[row["target"], row["protocol"], str(row["concurrency"]), fmt(row["requests_per_s"]),
             fmt(row["images_per_s"]), fmt(row["p50_ms"]), fmt(row["p90_ms"]), fmt(row["p99_ms"]), str(row["errors"]),
             fmt(row["ratio"], 2)] for row in report["results"]]
    settings = report["settings"]
    intro = (f"{settings['model']} ({settings['engine']}), {settings['images_per_request']} image(s) per request, "
             f"{settings['seconds']} s per row, closed loop; servers run {settings['workers']} concurrent predictions "
             f"× {settings['threads']} math threads. 'of ceiling' = images/s ÷ the in-process ceiling "
             f"({fmt(report['ceiling']['images_per_s'])} images/s).\n\n")
    errors = [f"- {row['target']}/{row['protocol']} c={row['concurrency']}: first error: {row['first_error']}\n"
              for row in report["results"] if row["errors"]]
    return intro + markdown_table(header, rows) + ("\n" + "".join(errors) if errors else "")


def readme(command: str, machine: dict, sections: list[tuple[str, str]]) -> str:
    """The results folder's README: how it was made, where, and every table."""
    parts = ["# Benchmark results\n", f"Command: `{command}`\n", f"Machine: {machine_line(machine)}\n"]
    parts += [f"## {title}\n\n{body}" for title, body in sections]
    return "\n".join(parts)
