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


def engine_label(row: dict) -> str:
    """The engine a row or settings ran, with the precision when not FP32 (reports older than --precision lack it)."""
    precision = row.get("precision", "fp32")
    return row["engine"] if precision == "fp32" else f"{row['engine']} {precision.upper()}"


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


# The speed-up column: INT8 over FP32 on the same engine, when a report has both columns.
INT8_PAIR = ("onnxruntime", "onnxruntime_int8")


def engines_markdown(report: dict) -> str:
    """Rows model × batch size, one 'median / p99' ms column per engine, the fastest median in bold; with both ONNX
    Runtime columns, a last one says how much faster INT8 is than FP32."""
    engines = report["engines"]
    by_key = {(row["model"], row["batch"], row["engine"]): row for row in report["results"]}
    speedup = all(key in engines for key in INT8_PAIR)
    header = ["Model", "input", "bs", *engines.values(), *(["INT8 speed-up"] if speedup else [])]
    rows = []
    for model, size in dict.fromkeys((row["model"], row["input"]) for row in report["results"]):
        for batch in report["settings"]["batches"]:
            cells = [_cell(by_key.get((model, batch, engine))) for engine in engines]
            medians = [median for _, median in cells if median is not None]
            best = min(medians) if len(medians) > 1 else None
            rows.append([model, str(size), str(batch),
                         *(f"**{text}**" if median is not None and median == best else text for text, median in cells)])
            if speedup:
                fp32, int8 = (_cell(by_key.get((model, batch, engine)))[1] for engine in INT8_PAIR)
                rows[-1].append("–" if fp32 is None or not int8 else f"{fp32 / int8:.2f}×")
    settings = report["settings"]
    intro = (f"`LocalPredictor.predict` latency in ms, median / p99 of {settings['runs']} runs after "
             f"{settings['warmup']} warm-up runs, {settings['threads']} math threads, random float32 input; each "
             "(model, engine) in its own process. Fastest median in bold."
             + (" INT8 speed-up = ONNX Runtime median ÷ ONNX Runtime INT8 median." if speedup else "")
             + (f" INT8: {settings['int8']}." if "int8" in settings else "") + "\n\n")
    notes = [f"\n- {note}" for note in report.get("notes", [])]
    return intro + markdown_table(header, rows) + "".join(notes) + ("\n" if notes else "")


def ceiling_markdown(report: dict) -> str:
    """A row per thread budget: images/s and p50 of preprocess, predict and total for the in-process ceiling."""
    header = ["measured before", "Model", "engine", "workers × threads", "images/s", "preprocess p50 ms",
              "predict p50 ms", "total p50 ms"]
    rows = [[row.get("before", "—"), row["model"], engine_label(row), f"{row['workers']} × {row['threads']}",
             fmt(row["images_per_s"]), fmt(row["preprocess"]["median_ms"], 2), fmt(row["predict"]["median_ms"], 2),
             fmt(row["total"]["median_ms"], 2)] for row in report["results"]]
    first = report["results"][0]
    intro = (f"In-process ceiling: decode + preprocess + predict of `{first['image']}` from W threads sharing a "
             f"predictor pool of W (W = workers), {first['seconds']} s per row, no serving; in an e2e run, measured "
             "again right before each target's server starts. The 1-worker rows are the baselines of the overhead "
             "at concurrency 1.\n\n")
    return intro + markdown_table(header, rows)


def e2e_markdown(report: dict) -> str:
    """One row per target × protocol × concurrency; the last column is throughput over the ceiling."""
    header = ["target", "protocol", "concurrency", "req/s", "images/s", "p50 ms", "p90 ms", "p99 ms", "errors",
              "of ceiling"]
    rows = [[row["target"], row["protocol"], str(row["concurrency"]), fmt(row["requests_per_s"]),
             fmt(row["images_per_s"]), fmt(row["p50_ms"]), fmt(row["p90_ms"]), fmt(row["p99_ms"]), str(row["errors"]),
             fmt(row["ratio"], 2)] for row in report["results"]]
    settings = report["settings"]
    intro = (f"{settings['model']} ({engine_label(settings)}), {settings['images_per_request']} image(s) per request, "
             f"{settings['seconds']} s per row, closed loop; servers run {settings['workers']} concurrent predictions "
             f"× {settings['threads']} math threads. 'of ceiling' = images/s ÷ the in-process ceiling measured right "
             "before that target's server started ("
             + ", ".join(f"{target} {fmt(runs[0]['images_per_s'])}" for target, runs in report["ceilings"].items())
             + " images/s)."
             + "".join(f" {target}: {settings[target]}." for target in ("pipeline", "pipeline_procs", "model_server")
                       if target in settings) + "\n\n")
    if settings.get("input") == "tensor":
        intro += ("Tensor input: the model server's rows send the image preprocessed once by the load generator "
                  "(FP32 [images, 3, S, S]), so the server only predicts; the ceiling still includes decode and "
                  "preprocess. oip_json: OIP REST with JSON data; oip_binary: OIP REST with the binary tensor "
                  "extension (input and output); oip_grpc: ModelInfer with raw contents.\n\n")
    errors = [f"- {row['target']}/{row['protocol']} c={row['concurrency']}: first error: {row['first_error']}\n"
              for row in report["results"] if row["errors"]]
    return (intro + markdown_table(header, rows) + ("\n" + "".join(errors) if errors else "")
            + oip_ratio_markdown(report.get("oip_binary_vs_brpc", [])))


def oip_ratio_markdown(pairs: list[dict]) -> str:
    """OIP binary's throughput over brpc's at each concurrency, against the target ('' without both rows)."""
    if not pairs:
        return ""
    header = ["concurrency", "brpc req/s", "oip_binary req/s", "oip_binary ÷ brpc", "target", "met"]
    rows = [[str(pair["concurrency"]), fmt(pair["brpc_requests_per_s"]), fmt(pair["oip_binary_requests_per_s"]),
             fmt(pair["ratio"], 2), f"≥ {fmt(pair['min_ratio'], 2)}",
             "met" if pair["ratio"] is not None and pair["ratio"] >= pair["min_ratio"] else "**missed**"]
            for pair in pairs]
    return ("\nOpen Inference Protocol with binary tensors against brpc, same model server, tensor and load:\n\n"
            + markdown_table(header, rows))


def overhead_markdown(report: dict) -> str:
    """A row per target/protocol: p50 at concurrency 1 minus the 1-worker preprocess + predict p50s, vs the target."""
    header = ["target", "protocol", "e2e p50 ms", "preprocess p50 ms", "predict p50 ms", "overhead ms", "target ms",
              "met"]
    rows = [[row["target"], row["protocol"], fmt(row["e2e_p50_ms"], 2), fmt(row["preprocess_p50_ms"], 2),
             fmt(row["predict_p50_ms"], 2), fmt(row["overhead_ms"], 2), f"≤ {fmt(row['limit_ms'])}",
             "met" if row["met"] else "**missed**"] for row in report["results"]]
    ceiling = next(iter(report["ceilings"].values()))
    intro = (f"{ceiling['model']} ({engine_label(ceiling)}), one 1-image request at a time: e2e p50 from the "
             f"end-to-end table (concurrency 1), preprocess and predict p50 from the in-process ceiling with 1 "
             f"worker × {ceiling['threads']} math threads, measured in the same run right before that target's server. "
             "overhead = e2e p50 − (preprocess p50 + predict p50): network, (de)serialisation, queues and threads."
             "\n\n")
    notes = [f"- {row['target']}/{row['protocol']}: negative overhead, so the machine was busier while the ceiling "
             "ran than during this row: rerun on an idle machine\n"
             for row in report["results"] if row["overhead_ms"] is not None and row["overhead_ms"] < 0]
    return intro + markdown_table(header, rows) + ("\n" + "".join(notes) if notes else "") + breakdown_markdown(report)


def breakdown_markdown(report: dict) -> str:
    """The profile of a lone request: client-side mean against the server's own means per stage, from /metrics."""
    stages = ("queue", "preprocess", "process", "postprocess")
    header = ["target", "protocol", "e2e mean", "outside the server", "server", *stages, "rest in server"]
    rows = []
    for row in report["results"]:
        server = row.get("server_ms") or {}
        if server.get("server") is None or row["e2e_mean_ms"] is None:
            continue
        staged = [server.get(stage) for stage in stages]
        rest = server["server"] - sum(value for value in staged if value is not None)
        rows.append([row["target"], row["protocol"], fmt(row["e2e_mean_ms"], 2),
                     fmt(row["e2e_mean_ms"] - server["server"], 2), fmt(server["server"], 2),
                     *(fmt(value, 2) if value is not None else "—" for value in staged), fmt(rest, 2)])
    if not rows:
        return ""
    return ("\n\nWhere the time goes at concurrency 1 (means in ms, same runs): 'outside the server' is the client, "
            "the loopback network and the protocol's framing and parsing (HTTP/JSON, gRPC, baidu_std) before the "
            "server's data plane starts its clock; 'server' is the data plane's own time; the stages are the op's "
            "(the model server has no ops: its time is decode + preprocess + predict + encode); 'rest' is the data "
            "plane and the hand-offs between threads. Compare 'process' with the ceiling's predict p50 above: "
            "the difference is the predictor slowed by what else runs on the 2 cores.\n\n"
            + markdown_table(header, rows))


def batching_markdown(report: dict) -> str:
    """Two rows per model (batching off, on), the on/off throughput ratio on the second, notes where it is < 0.95."""
    settings = report["settings"]
    ratios = {row["model"]: row["ratio"] for row in report["summary"]}
    header = ["Model", "engine", "batching", "req/s", "images/s", "p50 ms", "p99 ms", "mean batch", "errors", "on/off"]
    rows = [[row["model"], engine_label(row), "on" if row["batching"] else "off", fmt(row["requests_per_s"]),
             fmt(row["images_per_s"]), fmt(row["p50_ms"]), fmt(row["p99_ms"]), fmt(row["mean_batch"], 2),
             str(row["errors"]), fmt(ratios[row["model"]], 2) if row["batching"] else ""]
            for row in report["results"]]
    intro = (f"Pipeline over {settings['protocol']}, {settings['concurrency']} concurrent clients (closed loop), "
             f"{settings['images_per_request']} image(s) per request, op concurrency {settings['workers']} × "
             f"{settings['threads']} math threads, a fresh server per row. on: `batch_size: {settings['batch_size']}`"
             f" and `auto_batching_timeout: {settings['auto_batching_timeout_ms']}` (ms) on the op; off: neither. "
             f"Each row: {settings['warmup_s']} s warm-up, then at least {settings['seconds']} s, longer where the "
             f"warm-up's rate says {settings['min_requests']} requests need more (slow models). mean batch = rows per "
             f"predictor call, from the server's /metrics. Target: on/off ≥ {settings['min_ratio']}.\n\n")
    notes = [f"- {row['model']}: batching on/off = {fmt(row['ratio'], 2)}, below {settings['min_ratio']}\n"
             for row in report["summary"] if not row["met"]]
    notes += [f"- {row['model']} batching {'on' if row['batching'] else 'off'}: first error: {row['first_error']}\n"
              for row in report["results"] if row["errors"]]
    return intro + markdown_table(header, rows) + ("\n" + "".join(notes) if notes else "")


def memory_markdown(report: dict) -> str:
    """A row per reading (after warm-up, then every round of requests) and the final ratio against the target."""
    settings = report["settings"]
    header = ["requests", "RSS MiB", "÷ after warm-up", "processes", "req/s in round", "errors in round"]
    rows = [[str(row["requests"]), fmt(row["rss_bytes"] / (1 << 20)), fmt(row["ratio"], 3), str(row["processes"]),
             fmt(row["requests_per_s"]), str(row["errors"])] for row in report["results"]]
    intro = (f"{settings['model']} ({engine_label(settings)}) in the pipeline, op concurrency {settings['workers']} × "
             f"{settings['threads']} math threads; {settings['concurrency']} concurrent clients, closed loop, requests "
             f"split evenly over {' and '.join(settings['protocols'])} (each round also opens fresh connections). "
             f"RSS = {settings['rss']}, read after {settings['warmup_requests']} warm-up requests (row 0) and after "
             "each round.\n\n")
    verdict = "met" if report["met"] else "**missed**"
    outcome = (f"\nRSS after {settings['requests']} requests ÷ RSS after warm-up: **{fmt(report['ratio'], 3)}** "
               f"(target ≤ {settings['max_ratio']}: {verdict}).\n")
    errors = [f"- after {row['requests']} requests: first error: {row['first_error']}\n"
              for row in report["results"] if row["errors"]]
    return intro + markdown_table(header, rows) + outcome + ("\n" + "".join(errors) if errors else "")


def int8_e2e_markdown(report: dict) -> str:
    """A row per model (pooled FP32 and INT8 req/s, their ratio against the target), then every round's row."""
    settings = report["settings"]
    header = ["Model", "FP32 req/s", "INT8 req/s", "INT8 ÷ FP32", "target", "met", "errors",
              "in process: FP32 / INT8 images/s", "in process: INT8 ÷ FP32"]
    rows = [[row["model"], fmt(row["fp32_requests_per_s"]), fmt(row["int8_requests_per_s"]), fmt(row["ratio"], 2),
             f"≥ {fmt(row['min_ratio'], 1)}", "yes" if row["met"] else "**no**", str(row["errors"]),
             f"{fmt(row['ceiling_images_per_s']['fp32'])} / {fmt(row['ceiling_images_per_s']['int8'])}",
             fmt(row["ceiling_ratio"], 2)]
            for row in report["summary"]]
    stage_header = ["Model", "precision", "images/s", "preprocess p50 ms", "predict p50 ms", "total p50 ms"]
    stage_rows = [[model, precision.upper(), fmt(ceiling["images_per_s"]), fmt(ceiling["preprocess"]["median_ms"]),
                   fmt(ceiling["predict"]["median_ms"]), fmt(ceiling["total"]["median_ms"])]
                  for model, by_precision in report["ceilings"].items() for precision, ceiling in by_precision.items()]
    round_header = ["Model", "round", "precision", "engine", "model file", "req/s", "images/s", "p50 ms", "p99 ms",
                    "errors"]
    round_rows = [[row["model"], str(row["round"]), row["precision"].upper(), row["engine"], row["model_file"],
                   fmt(row["requests_per_s"]), fmt(row["images_per_s"]), fmt(row["p50_ms"]), fmt(row["p99_ms"]),
                   str(row["errors"])] for row in report["results"]]
    intro = (f"`{report['command']}`: pipeline over {settings['protocol']}, "
             f"{settings['concurrency']} concurrent clients (closed loop, saturating), "
             f"{settings['images_per_request']} image(s) per request, op concurrency {settings['workers']} × "
             f"{settings['threads']} math threads, FP32 and INT8 servers alternating over "
             f"{settings['rounds']} round(s) ({settings['order']}); each row {settings['warmup_s']} s warm-up, then "
             f"{settings['seconds']} s. req/s per precision = its requests ÷ its rows' summed wall time. met: "
             f"INT8 ÷ FP32 ≥ {settings['min_ratio']} with no errors. In process: the same budget decoding, "
             "preprocessing and predicting the same image from its worker threads with no server and no client (bench "
             f"ceiling), measured before the rounds: the most INT8 ÷ FP32 serving could show. INT8: "
             f"{settings['int8']}.\n\n")
    errors = [f"- {row['model']} {row['precision'].upper()} round {row['round']}: first error: {row['first_error']}\n"
              for row in report["results"] if row["errors"]]
    return (intro + markdown_table(header, rows) + "\nIn process, per stage:\n\n"
            + markdown_table(stage_header, stage_rows) + "\nEach round:\n\n" + markdown_table(round_header, round_rows)
            + ("\n" + "".join(errors) if errors else ""))


SECTIONS = (("engines", "Engines"), ("ceiling", "In-process ceiling"), ("e2e", "End to end"),
            ("overhead", "Overhead at concurrency 1"), ("int8_e2e", "INT8 against FP32, end to end"),
            ("batching", "Dynamic batching"), ("memory", "Memory"),
            ("ray_scale", "Ray Serve scaling"))


def readme(out: Path) -> str:
    """The results folder's README: every table found in `out`, each under the command and machine that made it."""
    parts, shown = ["# Benchmark results\n"], {}
    for name, title in SECTIONS:
        markdown, raw = out / f"{name}.md", out / f"{name}.json"
        if not (markdown.is_file() and raw.is_file()):
            continue
        stamp = json.loads(raw.read_text(encoding="utf-8"))
        parts.append(f"## {title}\n")
        for key, line in (("command", f"Command: `{stamp['command']}`\n"),
                          ("machine", f"Machine: {machine_line(stamp['machine'])}\n")):
            if shown.get(key) != stamp[key]:
                parts.append(line)
                shown[key] = stamp[key]
        parts.append(markdown.read_text(encoding="utf-8"))
    return "\n".join(parts)


def write_readme(out: Path) -> Path:
    """README.md in `out`, rebuilt from the tables there, so any subcommand's run refreshes it."""
    path = out / "README.md"
    path.write_text(readme(out), encoding="utf-8")
    return path
