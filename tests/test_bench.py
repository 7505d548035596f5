"""`python -m serving.bench`: statistics, table formatting and report shapes, plus one real `engines` run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.bench.__main__ import build_parser
from serving.bench.e2e import plan, result_row
from serving.bench.engines import CPU_ENGINES
from serving.bench.load import LoadResult, build_payloads
from serving.bench.models import WorkerError, run_worker
from serving.bench.plots import write_plots
from serving.bench.report import e2e_markdown, engines_markdown, markdown_table
from serving.bench.servers import ServerError, wait_for_ports
from serving.bench.stats import percentile, rate, summarize

ROOT = Path(__file__).parent.parent
ENGINE_KEYS = [engine.key for engine in CPU_ENGINES]


def test_median_and_p99_interpolate_between_samples() -> None:
    samples = [float(value) for value in range(1, 101)]
    stats = summarize(samples[::-1])
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert (stats["count"], stats["min_ms"], stats["mean_ms"]) == (100, 1.0, pytest.approx(50.5))
    assert percentile([7.0], 99) == 7.0 and percentile([1.0, 3.0], 50) == 2.0
    assert summarize([]) == {"count": 0, "median_ms": None, "p90_ms": None, "p99_ms": None, "min_ms": None,
                             "mean_ms": None}
    assert rate(10, 2.0) == 5.0 and rate(0, 0.0) == 0.0


def test_markdown_table_layout_and_row_width_check() -> None:
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    with pytest.raises(ValueError, match="has 1 cells, the header has 2"):
        markdown_table(["a", "b"], [["1"]])


def engines_report() -> dict:
    """Two engines measured, one failed, for SqueezeNet1_1 at batch 1 and 4."""
    row = {"model": "SqueezeNet1_1", "input": 224}
    results = [{**row, "engine": "paddle_onednn", "batch": 1, "median_ms": 8.14, "p99_ms": 9.0},
               {**row, "engine": "onnxruntime", "batch": 1, "median_ms": 3.2, "p99_ms": 3.46},
               {**row, "engine": "paddle", "batch": 1, "error": "worker exited with 1"},
               {**row, "engine": "onnxruntime", "batch": 4, "median_ms": 11.4, "p99_ms": 12.0}]
    return {"settings": {"batches": [1, 4], "runs": 20, "warmup": 5, "threads": 2},
            "engines": {"paddle_onednn": "Paddle + oneDNN", "paddle": "Paddle, no oneDNN",
                        "onnxruntime": "ONNX Runtime"},
            "notes": ["TensorRT: skipped, no GPU here."], "results": results}


def test_engines_table_has_a_row_per_model_and_batch_and_bolds_the_fastest() -> None:
    text = engines_markdown(engines_report())
    lines = text.splitlines()
    header = lines.index("| Model | input | bs | Paddle + oneDNN | Paddle, no oneDNN | ONNX Runtime |")
    assert lines[header + 1] == "|---|---|---|---|---|---|"
    assert lines[header + 2] == "| SqueezeNet1_1 | 224 | 1 | 8.1 / 9.0 | failed | **3.2 / 3.5** |"
    assert lines[header + 3] == "| SqueezeNet1_1 | 224 | 4 | – | – | 11.4 / 12.0 |"
    assert "median / p99 of 20 runs after 5 warm-up runs, 2 math threads" in text
    assert lines[-1] == "- TensorRT: skipped, no GPU here."


def e2e_report(rows: list[dict]) -> dict:
    """An e2e report around `rows`, as run_e2e returns it."""
    return {"settings": {"model": "SqueezeNet1_1", "engine": "onnxruntime", "images_per_request": 2, "seconds": 2.0,
                         "workers": 2, "threads": 2},
            "ceiling": {"images_per_s": 200.0}, "results": rows}


def test_e2e_rows_ratio_and_table() -> None:
    result = LoadResult(latencies_s=[0.010] * 99 + [0.050], errors=["err_no 5000: bad"], wall_s=2.0)
    row = result_row(("pipeline", "http", 4), result, images=2, ceiling_ips=200.0)
    assert (row["requests"], row["errors"], row["first_error"]) == (100, 1, "err_no 5000: bad")
    assert row["requests_per_s"] == 50.0 and row["images_per_s"] == 100.0 and row["ratio"] == 0.5
    assert row["p50_ms"] == pytest.approx(10.0) and row["p99_ms"] == pytest.approx(10.0 + 0.01 * 40.0)
    empty = result_row(("model_server", "brpc", 1), LoadResult(wall_s=1.0), images=1, ceiling_ips=0.0)
    assert empty["p50_ms"] is None and empty["requests_per_s"] == 0.0 and empty["ratio"] is None
    lines = e2e_markdown(e2e_report([row, empty])).splitlines()
    assert "| pipeline | http | 4 | 50.0 | 100.0 | 10.0 | 10.0 | 10.4 | 1 | 0.50 |" in lines
    assert "| model_server | brpc | 1 | 0.0 | 0.0 | – | – | – | 0 | – |" in lines
    assert lines[-1] == "- pipeline/http c=4: first error: err_no 5000: bad"


def test_plan_sends_each_protocol_to_the_servers_that_speak_it() -> None:
    assert plan(["pipeline", "model_server"], ["http", "grpc", "brpc"]) == [
        ("pipeline", ["http", "grpc"]), ("model_server", ["brpc", "http"])]
    assert plan(["pipeline", "model_server"], ["brpc"]) == [("model_server", ["brpc"])]
    assert plan(["pipeline"], ["brpc"]) == []


def test_command_line_defaults_and_bad_values(capsys: pytest.CaptureFixture) -> None:
    args = build_parser().parse_args(["all"])
    assert (args.batches, args.runs, args.warmup, args.threads, args.workers) == ([1, 4, 8], 20, 5, 2, 2)
    assert (args.concurrency, args.protocols, args.targets) == ([1, 2, 4, 8, 16], ["http", "grpc", "brpc"],
                                                                ["pipeline", "model_server"])
    assert args.model == "SqueezeNet1_1" and len(args.models) == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["e2e", "--concurrency", "0"])
    assert "0 is not >= 1" in capsys.readouterr().err


def test_plots_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [result_row((target, protocol, concurrency), LoadResult([0.01 * concurrency] * 10, [], 1.0), 2, 200.0)
            for target, protocol in (("pipeline", "grpc"), ("model_server", "brpc")) for concurrency in (1, 2, 4)]
    paths = write_plots(e2e_report(rows), tmp_path)
    assert [path.name for path in paths] == ["e2e_latency.png", "e2e_throughput.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)


def test_a_server_that_exits_before_listening_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-c", "print('error: no model here'); raise SystemExit(2)"],
                                   stdout=handle, stderr=subprocess.STDOUT)
    with pytest.raises(ServerError, match="server exited with 2 before listening:\nerror: no model here"):
        wait_for_ports(process, [1], log, timeout_s=30)


def test_a_failing_worker_is_reported_with_its_stderr(tmp_path: Path) -> None:
    spec = {"task": "ceiling", "server_dir": str(tmp_path / "missing"), "conf": {}, "workers": 1}
    with pytest.raises(WorkerError, match=r"ceiling worker exited with 1: (.|\n)*cannot read model config"):
        run_worker(spec, timeout_s=120)


@pytest.fixture(scope="module")
def engines_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `python -m serving.bench engines` run (export included) into a temporary folder."""
    tmp = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "serving.bench", "engines", "--models", "SqueezeNet1_1", "--batches", "1",
               "--runs", "2", "--warmup", "1", "--out", str(tmp / "results"), "--models-dir", str(tmp / "models")]
    run = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"wrote {tmp / 'results' / 'engines.json'}",
                                       f"wrote {tmp / 'results' / 'engines.md'}"]
    return tmp


def test_engines_end_to_end_writes_a_row_per_engine(engines_run: Path) -> None:
    report = json.loads((engines_run / "results" / "engines.json").read_text())
    assert report["command"].startswith("python -m serving.bench engines --models SqueezeNet1_1")
    assert {"cpu", "cores", "python", "paddle", "onnxruntime"} <= set(report["machine"])
    assert list(report["engines"])[:3] == ENGINE_KEYS
    rows = {row["engine"]: row for row in report["results"]}
    assert sorted(rows) == sorted(report["engines"]) and len(report["results"]) == len(rows)
    for row in rows.values():
        assert (row["model"], row["input"], row["batch"]) == ("SqueezeNet1_1", 224, 1)
        assert len(row["samples_ms"]) == 2 and row["median_ms"] == pytest.approx(np.median(row["samples_ms"]))
        assert 0 < row["median_ms"] <= row["p99_ms"] and row["setup_s"] > 0
    table = (engines_run / "results" / "engines.md").read_text().splitlines()
    (line,) = [line for line in table if line.startswith("| SqueezeNet1_1 | 224 | 1 |")]
    assert len(line.split(" | ")) == 3 + len(report["engines"])
    assert (engines_run / "models" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_request_payloads_match_each_protocol(engines_run: Path) -> None:
    server_dir = engines_run / "models" / "SqueezeNet1_1" / "serving_server"
    payloads = build_payloads(b"jpeg", 2, server_dir)
    assert json.loads(payloads.pipeline_json) == {"key": ["image_0", "image_1"], "value": ["anBlZw=="] * 2}
    assert payloads.pipeline_feed == {"image_0": "anBlZw==", "image_1": "anBlZw=="}
    assert json.loads(payloads.model_json) == {"tensor": [{"name": "x", "alias_name": "x", "elem_type": 20,
                                                            "shape": [2], "data": ["anBlZw=="] * 2}],
                                               "fetch_var_names": ["prediction"]}
    assert payloads.brpc_feed == {"x": ["anBlZw=="] * 2}
