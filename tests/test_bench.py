"""`python -m bench`: statistics, tables and report shapes, plus short real runs of every subcommand."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import build_parser, main
from bench.batching import summarize_models
from bench.e2e import oip_binary_vs_brpc, overhead_report, plan, result_row
from bench.engines import CPU_ENGINES
from bench.int8_e2e import int8_summary, round_order
from bench.load import LoadResult, build_payloads, drive_threads
from bench.memory import process_tree, rss_bytes, tree_rss_bytes
from bench.models import SAMPLE_IMAGE, WorkerError, run_worker
from bench.plots import write_plots
from bench.report import (
    batching_markdown,
    ceiling_markdown,
    e2e_markdown,
    engines_markdown,
    int8_e2e_markdown,
    markdown_table,
    overhead_markdown,
    readme,
    write_outputs,
)
from bench.scrape import mean_batch, server_means
from bench.servers import ServerError, wait_for_ports
from bench.stats import percentile, rate, summarize
from serving.proto.grpc_predict_v2_pb2 import ModelInferRequest
from serving.protocols.oip import request_from_grpc, request_from_rest

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
    assert "speed-up" not in text  # no INT8 column in this report


def test_engines_table_says_how_much_faster_int8_is_than_onnx_runtime_fp32() -> None:
    report = engines_report()
    report["engines"]["onnxruntime_int8"] = "ONNX Runtime INT8"
    report["results"] += [{"model": "SqueezeNet1_1", "input": 224, "engine": "onnxruntime_int8", "batch": 1,
                           "median_ms": 1.6, "p99_ms": 2.0},
                          {"model": "SqueezeNet1_1", "input": 224, "engine": "onnxruntime_int8", "batch": 4,
                           "error": "worker exited with 1"}]
    lines = engines_markdown(report).splitlines()
    header = lines.index("| Model | input | bs | Paddle + oneDNN | Paddle, no oneDNN | ONNX Runtime "
                         "| ONNX Runtime INT8 | INT8 speed-up |")
    assert lines[header + 2] == "| SqueezeNet1_1 | 224 | 1 | 8.1 / 9.0 | failed | 3.2 / 3.5 | **1.6 / 2.0** | 2.00× |"
    assert lines[header + 3] == "| SqueezeNet1_1 | 224 | 4 | – | – | 11.4 / 12.0 | failed | – |"
    assert "INT8 speed-up = ONNX Runtime median ÷ ONNX Runtime INT8 median." in lines[0]


def e2e_report(rows: list[dict]) -> dict:
    """An e2e report around `rows`, as run_e2e returns it."""
    return {"settings": {"model": "SqueezeNet1_1", "engine": "onnxruntime", "images_per_request": 2, "seconds": 2.0,
                         "workers": 2, "threads": 2},
            "ceilings": {"pipeline": [{"images_per_s": 200.0}], "model_server": [{"images_per_s": 180.0}]},
            "results": rows}


def test_e2e_rows_ratio_and_table() -> None:
    result = LoadResult(latencies_s=[0.010] * 99 + [0.050], errors=["err_no 5000: bad"], wall_s=2.0)
    row = result_row(("pipeline", "http", 4), result, images=2, ceiling_ips=200.0)
    assert (row["requests"], row["errors"], row["first_error"]) == (100, 1, "err_no 5000: bad")
    assert row["requests_per_s"] == 50.0 and row["images_per_s"] == 100.0 and row["ratio"] == 0.5
    assert row["p50_ms"] == pytest.approx(10.0) and row["p99_ms"] == pytest.approx(10.0 + 0.01 * 40.0)
    empty = result_row(("model_server", "brpc", 1), LoadResult(wall_s=1.0), images=1, ceiling_ips=0.0)
    assert empty["p50_ms"] is None and empty["requests_per_s"] == 0.0 and empty["ratio"] is None
    lines = e2e_markdown(e2e_report([row, empty])).splitlines()
    assert "right before that target's server started (pipeline 200.0, model_server 180.0 images/s)" in lines[0]
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
                                                                ["pipeline", "pipeline_procs", "model_server"])
    assert args.model == "SqueezeNet1_1" and len(args.models) == 5 and args.images == 1
    args = build_parser().parse_args(["batching"])
    assert (args.protocol, args.concurrency, args.min_requests, args.batch_size, args.batching_timeout_ms,
            len(args.models)) == ("http", 8, 200, 4, 2, 5)
    assert args.precision == "fp32"
    args = build_parser().parse_args(["int8-e2e"])
    assert (args.models, args.protocol, args.concurrency, args.rounds, args.seconds) == (
        ["SqueezeNet1_1", "AlexNet"], "grpc", 8, 2, 5.0)
    args = build_parser().parse_args(["memory"])
    assert (args.model, args.requests, args.warmup_requests, args.concurrency, args.protocols, args.checkpoints) == (
        "SqueezeNet1_1", 10000, 200, 4, ["http", "grpc"], 10)
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
    """One real `python -m bench engines` run (export included) into a temporary folder."""
    tmp = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "bench", "engines", "--models", "SqueezeNet1_1", "--batches", "1",
               "--runs", "2", "--warmup", "1", "--out", str(tmp / "results"), "--models-dir", str(tmp / "models")]
    run = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"wrote {tmp / 'results' / name}"
                                       for name in ("engines.json", "engines.md", "README.md")]
    return tmp


def test_engines_end_to_end_writes_a_row_per_engine(engines_run: Path) -> None:
    report = json.loads((engines_run / "results" / "engines.json").read_text())
    assert report["command"].startswith("python -m bench engines --models SqueezeNet1_1")
    assert {"cpu", "cores", "python", "paddle", "onnxruntime"} <= set(report["machine"])
    assert list(report["engines"])[:len(ENGINE_KEYS)] == ENGINE_KEYS
    rows = {row["engine"]: row for row in report["results"]}
    assert sorted(rows) == sorted(report["engines"]) and len(report["results"]) == len(rows)
    for row in rows.values():
        assert (row["model"], row["input"], row["batch"]) == ("SqueezeNet1_1", 224, 1)
        assert len(row["samples_ms"]) == 2 and row["median_ms"] == pytest.approx(np.median(row["samples_ms"]))
        assert 0 < row["median_ms"] <= row["p99_ms"] and row["setup_s"] > 0
    table = (engines_run / "results" / "engines.md").read_text().splitlines()
    (line,) = [line for line in table if line.startswith("| SqueezeNet1_1 | 224 | 1 |")]
    assert len(line.split(" | ")) == 4 + len(report["engines"])  # and the INT8 speed-up
    assert rows["onnxruntime_int8"]["median_ms"] > 0 and line.endswith("× |")
    assert (engines_run / "models" / "SqueezeNet1_1" / "serving_server" / "inference.int8.onnx").is_file()
    assert "--min-agreement 0 (random weights" in report["settings"]["int8"]
    assert (engines_run / "models" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_request_payloads_match_each_protocol(engines_run: Path) -> None:
    server_dir = engines_run / "models" / "SqueezeNet1_1" / "serving_server"
    payloads = build_payloads(b"jpeg", 2, server_dir)
    assert json.loads(payloads.pipeline_json) == {"key": ["image_0", "image_1"], "value": ["anBlZw=="] * 2}
    assert payloads.pipeline_feed == {"image_0": "anBlZw==", "image_1": "anBlZw=="}
    assert json.loads(payloads.model_json) == {"tensor": [{"name": "x", "alias_name": "x", "elem_type": 20,
                                                            "shape": [2], "data": ["anBlZw=="] * 2}],
                                               "fetch_var_names": ["prediction"]}
    assert payloads.brpc_feed == {"x": ["anBlZw=="] * 2} and payloads.oip is None


def test_tensor_payloads_carry_one_preprocessed_batch_in_every_protocol(engines_run: Path) -> None:
    server_dir = engines_run / "models" / "SqueezeNet1_1" / "serving_server"
    payloads = build_payloads(SAMPLE_IMAGE.read_bytes(), 2, server_dir, tensor=True)
    batch = payloads.brpc_feed["x"]
    assert batch.dtype == np.float32 and batch.shape == (2, 3, 224, 224)
    (model,) = json.loads(payloads.model_json)["tensor"]
    assert (model["elem_type"], model["shape"]) == (1, [2, 3, 224, 224])
    assert np.array_equal(np.asarray(model["float_data"], dtype=np.float32), batch.ravel())
    oip = payloads.oip
    assert oip.path == "/v2/models/SqueezeNet1_1/infer"
    request = request_from_rest(oip.binary, str(oip.header_length), "SqueezeNet1_1", "")
    assert [(o.name, o.binary) for o in request.outputs] == [("prediction", True)]
    assert np.array_equal(request.inputs[0].data, batch)
    assert np.array_equal(request_from_rest(oip.json, None, "SqueezeNet1_1", "").inputs[0].data, batch)
    decoded = request_from_grpc(ModelInferRequest.FromString(oip.grpc))
    assert decoded.model_name == "SqueezeNet1_1" and np.array_equal(decoded.inputs[0].data, batch)


def test_oip_rows_need_tensor_input_and_tensor_input_the_model_server(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["e2e", "--targets", "model_server", "--protocols", "oip_binary"])
    assert "oip_binary send the model's FP32 tensor: add --input tensor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["e2e", "--input", "tensor", "--protocols", "brpc"])
    assert "--input tensor needs --targets model_server" in capsys.readouterr().err


def ceiling_row(workers: int, preprocess_ms: float, predict_ms: float) -> dict:
    """One in-process ceiling measurement, as run_ceiling returns it (statistics trimmed to the p50s)."""
    return {"model": "SqueezeNet1_1", "engine": "onnxruntime", "workers": workers, "threads": 2,
            "image": "export/data/images/daisy.jpg", "seconds": 5.0, "images_per_s": 100.0 * workers,
            "preprocess": {"median_ms": preprocess_ms}, "predict": {"median_ms": predict_ms},
            "total": {"median_ms": preprocess_ms + predict_ms}}


def test_ceiling_table_has_a_row_per_worker_count() -> None:
    rows = [{**ceiling_row(2, 2.5, 14.0), "before": "pipeline"}, ceiling_row(1, 2.0, 6.5)]
    lines = ceiling_markdown({"results": rows}).splitlines()
    assert "| pipeline | SqueezeNet1_1 | onnxruntime | 2 × 2 | 200.0 | 2.50 | 14.00 | 16.50 |" in lines
    assert lines[-1] == "| — | SqueezeNet1_1 | onnxruntime | 1 × 2 | 100.0 | 2.00 | 6.50 | 8.50 |"


def test_overhead_subtracts_the_one_worker_ceiling_and_applies_each_protocols_target() -> None:
    def row(target: str, protocol: str, concurrency: int, p50: float | None) -> dict:
        return {"target": target, "protocol": protocol, "concurrency": concurrency, "p50_ms": p50, "mean_ms": p50}

    e2e = {"settings": {"images_per_request": 1},
           "results": [row("pipeline", "http", 1, 9.25), row("pipeline", "http", 4, 30.0),
                       row("pipeline", "grpc", 1, 10.25), row("model_server", "brpc", 1, None),
                       row("model_server", "http", 1, 8.0)]}
    e2e["results"][0]["server_ms"] = {"server": 8.0, "queue": 0.1, "preprocess": 1.5, "process": 6.0,
                                      "postprocess": 0.2}
    single, later = ceiling_row(1, 2.0, 6.5), ceiling_row(1, 3.0, 7.0)
    e2e["ceilings"] = {"pipeline": [ceiling_row(2, 2.5, 14.0), single], "model_server": [later]}
    report = overhead_report(e2e)
    assert report["ceilings"] == {"pipeline": single, "model_server": later}
    assert [(r["protocol"], r["overhead_ms"], r["limit_ms"], r["met"]) for r in report["results"]] == [
        ("http", pytest.approx(0.75), 1.0, True), ("grpc", pytest.approx(1.75), 1.0, False), ("brpc", None, 1.0, False),
        ("http", pytest.approx(-2.0), 1.0, True)]
    lines = overhead_markdown(report).splitlines()
    assert "| pipeline | http | 9.25 | 2.00 | 6.50 | 0.75 | ≤ 1.0 | met |" in lines
    assert "| pipeline | grpc | 10.25 | 2.00 | 6.50 | 1.75 | ≤ 1.0 | **missed** |" in lines
    assert "| model_server | brpc | – | 3.00 | 7.00 | – | ≤ 1.0 | **missed** |" in lines
    assert any(line.startswith("- model_server/http: negative overhead") for line in lines)
    assert lines[-1] == "| pipeline | http | 9.25 | 1.25 | 8.00 | 0.10 | 1.50 | 6.00 | 0.20 | 0.20 |"
    assert overhead_report({**e2e, "settings": {"images_per_request": 2}}) is None
    assert overhead_report({**e2e, "results": e2e["results"][1:2]}) is None


def test_batching_summary_flags_a_throughput_loss_above_5_percent() -> None:
    def row(model: str, batching: bool, images_per_s: float) -> dict:
        return {"model": model, "engine": "onnxruntime", "batching": batching, "requests_per_s": images_per_s,
                "images_per_s": images_per_s, "p50_ms": 40.0, "p99_ms": 80.0, "mean_batch": 2.5 if batching else 1.0,
                "errors": 0, "first_error": ""}

    rows = [row("AlexNet", False, 100.0), row("AlexNet", True, 90.0), row("DarkNet53", False, 8.0),
            row("DarkNet53", True, 7.6)]
    summary = summarize_models(rows)
    assert [(s["model"], s["ratio"], s["met"]) for s in summary] == [
        ("AlexNet", pytest.approx(0.9), False), ("DarkNet53", pytest.approx(0.95), True)]
    settings = {"protocol": "http", "concurrency": 8, "images_per_request": 1, "workers": 2, "threads": 2,
                "batch_size": 4, "auto_batching_timeout_ms": 2, "warmup_s": 2.0, "seconds": 10.0, "min_requests": 200,
                "min_ratio": 0.95}
    lines = batching_markdown({"settings": settings, "results": rows, "summary": summary}).splitlines()
    assert "| AlexNet | onnxruntime | off | 100.0 | 100.0 | 40.0 | 80.0 | 1.00 | 0 |  |" in lines
    assert "| AlexNet | onnxruntime | on | 90.0 | 90.0 | 40.0 | 80.0 | 2.50 | 0 | 0.90 |" in lines
    assert lines[-1] == "- AlexNet: batching on/off = 0.90, below 0.95"


def test_a_request_limit_ends_the_load_after_exactly_that_many_timed_calls() -> None:
    calls = []

    class Caller:
        def __call__(self) -> None:
            calls.append(1)
            time.sleep(0.001)

        def close(self) -> None:
            pass

    result = drive_threads(Caller, concurrency=3, seconds=60, requests=7)
    assert len(result.latencies_s) == 7 and len(calls) == 7 + 3 and result.wall_s < 30  # + one untimed call each


def test_rss_is_summed_over_the_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; x = b'1' * (64 << 20); print(); "
                              "sys.stdout.flush(); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the 64 MiB are written
        assert child.pid in process_tree(os.getpid())
        assert rss_bytes(child.pid) > 64 << 20
        total, processes = tree_rss_bytes(os.getpid())
        assert processes >= 2 and total >= rss_bytes(os.getpid()) + (64 << 20)
    finally:
        child.kill()
        child.wait()
    assert rss_bytes(child.pid) == 0


def test_readme_shows_each_table_under_the_command_that_made_it(tmp_path: Path) -> None:
    machine = {"cores": 2, "usable_cores": 2, "cpu": "EPYC", "python": "3.11", "paddle": "paddle 3",
               "onnxruntime": "onnxruntime 1", "platform": "Linux"}
    for name, command in (("engines", "all"), ("ceiling", "all"), ("batching", "batching"), ("memory", "memory")):
        write_outputs(tmp_path, name, {"command": command, "machine": machine}, f"{name} table\n")
    (tmp_path / "e2e.md").write_text("no JSON beside it: left out\n")
    text = readme(tmp_path)
    assert text.splitlines()[:9] == ["# Benchmark results", "", "## Engines", "", "Command: `all`", "",
                                     "Machine: 2 cores (2 usable), EPYC; Python 3.11, paddle 3, onnxruntime 1; Linux",
                                     "", "engines table"]
    assert "## In-process ceiling\n\nceiling table\n" in text and "left out" not in text
    assert "## Dynamic batching\n\nCommand: `batching`\n\nbatching table\n" in text
    assert text.endswith("## Memory\n\nCommand: `memory`\n\nmemory table\n")


def bench(engines_run: Path, name: str, *argv: str) -> Path:
    """One real `python -m bench` subcommand into a fresh folder, on the fixture's exported SqueezeNet1_1."""
    out = engines_run / name
    command = [sys.executable, "-m", "bench", name, *argv, "--out", str(out), "--models-dir",
               str(engines_run / "models")]
    run = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"wrote {out / 'README.md'}"
    return out


def test_e2e_writes_both_ceilings_and_the_overhead_of_the_same_run(engines_run: Path) -> None:
    out = bench(engines_run, "e2e", "--targets", "pipeline", "--protocols", "grpc", "--concurrency", "1", "--seconds",
                "0.5")
    ceilings = json.loads((out / "ceiling.json").read_text())["results"]
    assert [(c["workers"], c["threads"], c["before"]) for c in ceilings] == [(2, 2, "pipeline"), (1, 2, "pipeline")]
    overhead = json.loads((out / "overhead.json").read_text())
    assert overhead["ceilings"] == {"pipeline": {key: value for key, value in ceilings[1].items() if key != "before"}}
    assert overhead["command"].startswith("python -m bench e2e")
    (row,) = overhead["results"]
    (e2e_row,) = json.loads((out / "e2e.json").read_text())["results"]
    assert (row["target"], row["protocol"], row["limit_ms"], row["e2e_p50_ms"]) == ("pipeline", "grpc", 1.0,
                                                                                    e2e_row["p50_ms"])
    assert row["preprocess_p50_ms"] == ceilings[1]["preprocess"]["median_ms"] > 0
    assert row["overhead_ms"] == pytest.approx(row["e2e_p50_ms"] - row["preprocess_p50_ms"] - row["predict_p50_ms"])
    assert row["met"] == (row["overhead_ms"] <= 1.0)
    text = (out / "README.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## In-process ceiling", "## End to end", "## Overhead at concurrency 1"]
    assert text.count("Command: ") == 1


def test_e2e_runs_the_model_server_over_brpc_http_and_the_open_inference_protocol(engines_run: Path) -> None:
    protocols = ["brpc", "http", "oip_json", "oip_binary", "oip_grpc"]
    out = bench(engines_run, "e2e", "--targets", "model_server", "--input", "tensor", "--protocols", *protocols,
                "--concurrency", "1", "2", "--seconds", "0.5")
    report = json.loads((out / "e2e.json").read_text())
    assert report["settings"]["input"] == "tensor"
    rows = report["results"]
    assert [(row["protocol"], row["concurrency"]) for row in rows] == [(p, c) for p in protocols for c in (1, 2)]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0, row
    for row in rows[::2]:
        assert row["server_ms"]["server"] > 0, row  # each row's requests counted under its data-plane label
    brpc, binary = rows[0:2], rows[6:8]
    assert [(pair["concurrency"], pair["ratio"]) for pair in report["oip_binary_vs_brpc"]] == [
        (b["concurrency"], pytest.approx(o["requests_per_s"] / b["requests_per_s"]))
        for b, o in zip(brpc, binary, strict=True)]
    table = (out / "e2e.md").read_text()
    assert "| concurrency | brpc req/s | oip_binary req/s | oip_binary ÷ brpc | target | met |" in table


def test_e2e_with_precision_int8_serves_and_measures_the_int8_twin(engines_run: Path) -> None:
    out = bench(engines_run, "e2e", "--precision", "int8", "--targets", "model_server", "--protocols", "brpc",
                "--concurrency", "2", "--seconds", "0.5", "--workers", "1")
    report = json.loads((out / "e2e.json").read_text())
    assert (report["settings"]["engine"], report["settings"]["precision"]) == ("onnxruntime", "int8")
    assert "--precision int8" in report["settings"]["model_server"]
    (row,) = report["results"]
    assert row["errors"] == 0 and row["requests"] > 0, row
    ceilings = json.loads((out / "ceiling.json").read_text())["results"]
    assert [ceiling["precision"] for ceiling in ceilings] == ["int8"]
    assert "| model_server | SqueezeNet1_1 | onnxruntime INT8 | 1 × 2 |" in (out / "ceiling.md").read_text()


def test_int8_e2e_alternates_fresh_fp32_and_int8_pipelines_and_reports_the_ratio(engines_run: Path) -> None:
    out = bench(engines_run, "int8-e2e", "--models", "SqueezeNet1_1", "--rounds", "1", "--concurrency", "2",
                "--seconds", "0.5")
    report = json.loads((out / "int8_e2e.json").read_text())
    assert report["command"].startswith("python -m bench int8-e2e --models SqueezeNet1_1")
    rows = report["results"]
    assert [(row["precision"], row["model_file"]) for row in rows] == [("fp32", "inference.onnx"),
                                                                      ("int8", "inference.int8.onnx")]
    for row in rows:
        assert (row["model"], row["protocol"], row["concurrency"], row["engine"]) == ("SqueezeNet1_1", "grpc", 2,
                                                                                      "onnxruntime")
        assert row["errors"] == 0 and row["requests"] > 0, row
    (summary,) = report["summary"]
    assert summary["ratio"] == pytest.approx(rows[1]["requests_per_s"] / rows[0]["requests_per_s"])
    assert summary["met"] == (summary["ratio"] >= 1.8) and summary["min_ratio"] == 1.8
    ceilings = report["ceilings"]["SqueezeNet1_1"]
    assert [(ceilings[precision]["precision"], ceilings[precision]["count"] > 0) for precision in ("fp32", "int8")] \
        == [("fp32", True), ("int8", True)]
    in_process = ceilings["int8"]["images_per_s"] / ceilings["fp32"]["images_per_s"]
    assert summary["ceiling_ratio"] == pytest.approx(in_process)
    table = (out / "int8_e2e.md").read_text()
    assert "| INT8 ÷ FP32 | target | met | errors | in process: FP32 / INT8 images/s | in process: INT8 ÷ FP32 |" \
        in table and "| SqueezeNet1_1 | INT8 |" in table
    assert "## INT8 against FP32, end to end" in (out / "README.md").read_text()


def test_int8_e2e_pools_rounds_and_misses_the_target_on_errors() -> None:
    assert [round_order(number) for number in (1, 2, 3)] == [("fp32", "int8"), ("int8", "fp32"), ("fp32", "int8")]

    def row(precision: str, number: int, requests: int, errors: int = 0) -> dict:
        return {"model": "AlexNet", "round": number, "precision": precision, "engine": "onnxruntime",
                "model_file": "inference.onnx", "requests": requests, "errors": errors,
                "first_error": "err" if errors else "", "wall_s": 2.0, "requests_per_s": requests / 2.0,
                "images_per_s": requests / 2.0, "p50_ms": 10.0, "p99_ms": 20.0}

    rows = [row("fp32", 1, 100), row("int8", 1, 190), row("int8", 2, 210), row("fp32", 2, 100)]
    stages = {stage: {"median_ms": 1.0} for stage in ("preprocess", "predict", "total")}
    ceilings = {"AlexNet": {"fp32": {"images_per_s": 60.0, **stages}, "int8": {"images_per_s": 150.0, **stages}}}
    (summary,) = int8_summary(rows, ceilings)
    assert (summary["fp32_requests_per_s"], summary["int8_requests_per_s"]) == (50.0, 100.0)
    assert (summary["ratio"], summary["met"], summary["errors"]) == (2.0, True, 0)
    assert summary["ceiling_ratio"] == 2.5
    (failed,) = int8_summary([*rows[:3], row("fp32", 2, 100, errors=1)], ceilings)
    assert failed["ratio"] == 2.0 and not failed["met"]
    settings = {"protocol": "grpc", "concurrency": 8, "images_per_request": 1, "workers": 2, "threads": 2,
                "rounds": 2, "order": "ABBA", "warmup_s": 2.0, "seconds": 5.0, "min_ratio": 1.8, "int8": "QDQ"}
    lines = int8_e2e_markdown({"command": "python -m bench int8-e2e", "settings": settings, "results": rows,
                               "summary": [failed], "ceilings": ceilings}).splitlines()
    assert lines[0].startswith("`python -m bench int8-e2e`: pipeline over grpc, 8 concurrent clients")
    assert "| AlexNet | 50.0 | 100.0 | 2.00 | ≥ 1.8 | **no** | 1 | 60.0 / 150.0 | 2.50 |" in lines


def test_oip_binary_ratio_pairs_rows_of_the_same_concurrency() -> None:
    def row(protocol: str, concurrency: int, requests_per_s: float) -> dict:
        return {"target": "model_server", "protocol": protocol, "concurrency": concurrency,
                "requests_per_s": requests_per_s}

    pairs = oip_binary_vs_brpc([row("brpc", 1, 100.0), row("brpc", 4, 0.0), row("oip_binary", 1, 85.0),
                                row("oip_binary", 4, 50.0), row("oip_binary", 8, 50.0), row("oip_json", 1, 10.0)])
    assert [(p["concurrency"], p["ratio"]) for p in pairs] == [(1, pytest.approx(0.85)), (4, None)]
    lines = e2e_markdown({**e2e_report([]), "oip_binary_vs_brpc": pairs}).splitlines()
    assert lines[-2:] == ["| 1 | 100.0 | 85.0 | 0.85 | ≥ 0.90 | **missed** |",
                          "| 4 | 0.0 | 50.0 | – | ≥ 0.90 | **missed** |"]


def test_batching_runs_the_pipeline_with_and_without_merging(engines_run: Path) -> None:
    out = bench(engines_run, "batching", "--models", "SqueezeNet1_1", "--seconds", "1", "--min-requests", "5",
                "--concurrency", "4")
    report = json.loads((out / "batching.json").read_text())
    off, on = report["results"]
    assert (off["batching"], on["batching"], on["batch_size"], on["auto_batching_timeout"]) == (False, True, 4, 2)
    assert "batch_size" not in off and off["mean_batch"] == 1.0 and 1.0 <= on["mean_batch"] <= 4.0
    for row in (off, on):
        assert row["model"] == "SqueezeNet1_1" and row["errors"] == 0 and row["requests"] >= 5
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    (summary,) = report["summary"]
    assert summary["ratio"] == pytest.approx(on["images_per_s"] / off["images_per_s"])
    assert summary["met"] == (summary["ratio"] >= 0.95)
    table = (out / "batching.md").read_text()
    assert "| SqueezeNet1_1 | onnxruntime | on |" in table and "## Dynamic batching" in (out / "README.md").read_text()


def test_memory_reads_the_servers_rss_after_warm_up_and_after_each_round(engines_run: Path) -> None:
    out = bench(engines_run, "memory", "--requests", "50", "--warmup-requests", "10", "--checkpoints", "2",
                "--concurrency", "2")
    report = json.loads((out / "memory.json").read_text())
    rows = report["results"]
    assert [row["requests"] for row in rows] == [0, 25, 50]
    assert all(row["rss_bytes"] > 50 << 20 and row["processes"] >= 1 and row["errors"] == 0 for row in rows)
    assert report["ratio"] == pytest.approx(rows[-1]["rss_bytes"] / rows[0]["rss_bytes"])
    assert report["met"] == (report["ratio"] <= 1.1) and report["settings"]["protocols"] == ["http", "grpc"]
    assert "RSS after 50 requests ÷ RSS after warm-up: **" in (out / "memory.md").read_text()


def test_server_means_from_two_metrics_scrapes() -> None:
    before = {'serving_request_seconds_sum{protocol="grpc"}': 1.0,
              'serving_request_seconds_count{protocol="grpc"}': 100,
              'serving_stage_seconds_sum{op="imagenet",stage="process"}': 0.5,
              'serving_stage_seconds_count{op="imagenet",stage="process"}': 100,
              'serving_batch_size_sum{op="imagenet"}': 100, 'serving_batch_size_count{op="imagenet"}': 100}
    after = {'serving_request_seconds_sum{protocol="grpc"}': 1.8, 'serving_request_seconds_count{protocol="grpc"}': 200,
             'serving_stage_seconds_sum{op="imagenet",stage="process"}': 1.1,
             'serving_stage_seconds_count{op="imagenet",stage="process"}': 200,
             'serving_batch_size_sum{op="imagenet"}': 400, 'serving_batch_size_count{op="imagenet"}': 200}
    means = server_means(before, after, "grpc")
    assert means["server"] == pytest.approx(8.0) and means["process"] == pytest.approx(6.0)
    assert means["queue"] is None and server_means(before, after, "http")["server"] is None
    assert mean_batch(before, after) == pytest.approx(3.0)


def test_cpu_split_is_per_request_on_each_side() -> None:
    from bench.cpu_split import markdown, split_row

    row = split_row("pipeline", "http", 800, 5.0, 8.0, 0.4)
    assert row["requests_per_s"] == 160.0 and row["server_cpu_ms"] == 10.0 and row["client_cpu_ms"] == 0.5
    assert row["busy_cores"] == pytest.approx(1.68)
    args = argparse.Namespace(model="SqueezeNet1_1", seconds=5.0, concurrency=8)
    assert "| pipeline | http | 160.0 | 10.00 | 0.50 | 1.68 |" in markdown([row], args).splitlines()


def test_ray_scale_rows_split_cpu_per_request_keep_the_cleanest_round_and_profile_by_package(tmp_path: Path) -> None:
    from bench.ray_scale import RAY_GROUP, cleanest, markdown, profile_shares, row

    result = LoadResult(latencies_s=[0.01] * 400, wall_s=4.0)
    before = {"replicas": 1.0, "proxies": 0.5, "load generator": 0.1}
    after = {"replicas": 5.8, "proxies": 2.5, "load generator": 0.3}
    item = {"round": 1, "op_threads": 1,
            **row(2, ["replicas", "replicas", "proxies", "ray (other)"], result, before, after, 7.6)}
    assert (item["requests_per_s"], item["replica_processes"], item["proxy_processes"]) == (100.0, 2, 1)
    assert item["cpu_ms_per_request"] == pytest.approx({"replicas": 12.0, "proxies": 5.0, "load generator": 0.5})
    assert item["busy_cores"]["replicas"] == pytest.approx(1.2) and item["others_cores"] == pytest.approx(0.15)
    disturbed = {**item, "round": 0, "others_cores": 0.6}
    assert cleanest([disturbed, item, {**item, "replicas": 1}]) == [item, {**item, "replicas": 1}]
    stacks = tmp_path / "replicas.txt"
    pool = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
    stacks.write_text(f"{pool};Op.run (serving/pipeline/op.py:188);Session.run (onnxruntime/capi/session.py:406) 5\n"
                      f"{pool};decode_bgr (serving/images.py:103) 1\n"
                      f"{pool};Transforms.batch (/kit/serving/preprocess.py:42);Condition.wait (threading.py:331) 1\n"
                      f"{pool};_run_router_event_loop (ray/serve/_private/router.py:9);run (asyncio/base.py:1) 2\n"
                      "Thread.run (threading.py:982) 1\n")
    shares = profile_shares(stacks)
    assert shares["samples"] == 10 and shares[RAY_GROUP] == pytest.approx(30.0)
    assert list(shares.values())[1:3] == [pytest.approx(50.0), pytest.approx(20.0)]
    args = argparse.Namespace(model="SqueezeNet1_1", concurrency=8, protocol="http", seconds=4.0, rounds=2,
                              replicas=[1, 2], profile_s=8)
    text = markdown([item], {"replicas": shares}, args, "python -m bench.ray_scale")
    assert "| 1 | 2 | 100.0 | 10.0 | 10.0 | 0 | 0.50 | 5.00 | 12.00 | 1.75 / 0.15 |" in text.splitlines()
    assert "| one of 2 replicas | 10 | 50.0 | 20.0 | 30.0 |" in text.splitlines()
    assert "the one of 2 rounds in which other users' processes took the least CPU" in text


def test_gpu_check_says_what_is_missing_and_its_pipeline_runs_on_cpu_engines(capsys: pytest.CaptureFixture) -> None:
    from bench import gpu_check

    assert gpu_check.main(["--models", "SqueezeNet1_1"]) == 2  # the CPU build of Paddle
    assert "is the CPU build: install paddlepaddle-gpu" in capsys.readouterr().err
    cpu_engines = [gpu_check.Engine("paddle-cpu", {"engine": "paddle"}, "fp32"),
                   gpu_check.Engine("ort-cpu", {"engine": "onnxruntime"}, "fp32")]
    args = argparse.Namespace(models=["SqueezeNet1_1"], batches=[1, 4], repeat=2)
    rows = gpu_check.run(args, cpu_engines)
    assert [(row["engine"], row["batch"]) for row in rows] == [("paddle-cpu", 1), ("paddle-cpu", 4), ("ort-cpu", 1),
                                                               ("ort-cpu", 4)]
    assert all(row["ok"] and row["top1_equal"] for row in rows), rows
    assert rows[1]["seed_t4_ms"] == 1.88 and rows[2]["runtime"]["engine"] == "onnxruntime"
    table = gpu_check.markdown(rows, ["onnxruntime has no CUDAExecutionProvider"])
    assert "| SqueezeNet1_1 | ort-cpu | 4 |" in table and "- skipped: onnxruntime has no" in table


def test_gpu_check_agreement_per_precision() -> None:
    from bench.gpu_check import agreement

    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert agreement(reference, reference + 5e-5, "fp32")["ok"]
    assert not agreement(reference, reference + 5e-4, "fp32")["ok"]
    assert agreement(reference, reference + 5e-3, "fp16")["ok"]
    flipped = np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    assert agreement(reference, flipped, "fp16") == {"max_diff": pytest.approx(0.5), "top1_equal": False, "ok": False}


def test_paddle_int8_times_both_int8_routes_and_says_which_to_serve(engines_run: Path) -> None:
    """Paddle's post-training INT8 on oneDNN beside ONNX Runtime's, from the same cached export (issue 15, point 2)."""
    out = engines_run / "paddle_int8"
    run = subprocess.run([sys.executable, "-m", "bench.paddle_int8", "--models", "SqueezeNet1_1", "--runs", "2",
                          "--warmup", "1", "--out", str(out), "--models-dir", str(engines_run / "models")], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (row,) = json.loads((out / "paddle_int8.json").read_text())["results"]
    assert set(row["median_ms"]) == {"paddle_fp32", "paddle_int8", "onnxruntime_fp32", "onnxruntime_int8"}
    assert all(value > 0 for value in row["median_ms"].values()) and row["images"] == 14
    assert all(len(samples) == 2 for samples in row["samples_ms"].values())
    assert 0 <= row["int8_top1_agreement"]["paddle"] <= 1 and 0 <= row["int8_top1_agreement"]["onnxruntime"] <= 1
    table = (out / "paddle_int8.md").read_text()
    assert "| SqueezeNet1_1 | 1 |" in table and "Paddle Inference INT8 " in table.splitlines()[-1]
