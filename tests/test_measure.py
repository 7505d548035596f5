"""`python -m export ... --measure` and `--measure DIR`: engine timings recorded in the card, per machine.

tests/test_int8.py measures an export with every engine and checks that `engine: auto` follows it.
"""

import shutil
from pathlib import Path

import pytest
import yaml

from export.measure import record
from serving.machine import this_machine


def test_export_with_measure_times_the_engines_it_has(run_cli, tmp_path: Path) -> None:
    """A Paddle-only export: both Paddle engines timed, the ONNX ones skipped with the flag that adds them."""
    out = tmp_path / "SqueezeNet1_1"
    code, stdout, err = run_cli("--model", "SqueezeNet1_1", "--random-init", "0", "--out", out, "--measure",
                                "--threads", "1", "--max-batch-size", "2", "--runs", "3")
    assert code == 0, err
    (table,) = yaml.safe_load((out / "model_card.yaml").read_text())["engine_timings"]
    assert table["machine"] == this_machine() and table["threads"] == 1
    assert {(row["engine"], row["batch"]) for row in table["rows"]} == {
        (engine, batch) for engine in ("paddle_onednn", "paddle") for batch in (1, 2)}
    assert table["skipped"] == {"onnxruntime": "no inference.onnx (export with --onnx)",
                                "onnxruntime_int8": "no inference.int8.onnx (export with --int8 --calib-images DIR)"}
    assert "[7/7] timing each engine on this machine" in err and "exported SqueezeNet1_1" in stdout
    assert "ONNX Runtime INT8    skipped: no inference.int8.onnx" in stdout
    assert "engine: auto now runs Paddle" in stdout


def test_measure_refuses_a_folder_that_is_not_an_export(run_cli, tmp_path: Path) -> None:
    code, stdout, err = run_cli("--measure", tmp_path)
    assert (code, stdout) == (2, "")
    assert err == f"error: {tmp_path} has no serving_server_conf.prototxt: give an exported model folder (or its " \
                  "serving_server)\n"


def test_a_new_table_replaces_the_same_machine_and_threads_only(tmp_path: Path) -> None:
    (tmp_path / "serving_server").mkdir()
    other = {"machine": {"cpu": "elsewhere"}, "threads": 2, "rows": []}
    (tmp_path / "model_card.yaml").write_text(yaml.safe_dump({"model": "AlexNet", "engine_timings": [other]}))
    first = {"machine": this_machine(), "threads": 2, "rows": [{"engine": "paddle", "ms_per_image": 2.0}]}
    second = {**first, "rows": [{"engine": "paddle", "ms_per_image": 1.0}]}
    four = {**first, "threads": 4}
    for table in (first, four, second):
        record(tmp_path / "serving_server", table)
    card = yaml.safe_load((tmp_path / "model_card.yaml").read_text())
    assert card["model"] == "AlexNet" and card["engine_timings"] == [other, four, second]


def test_measure_needs_a_readable_card(tmp_path: Path) -> None:
    from export.measure import MeasureError

    (tmp_path / "serving_server").mkdir()
    with pytest.raises(MeasureError, match="cannot read the model card"):
        record(tmp_path / "serving_server", {"machine": this_machine(), "threads": 2, "rows": []})


def test_an_engine_that_cannot_load_is_listed_with_its_error(squeezenet_root: Path, tmp_path: Path, run_cli) -> None:
    """A broken inference.onnx: ONNX Runtime's worker fails and says why; the Paddle engines are still timed."""
    root = tmp_path / "SqueezeNet1_1"
    shutil.copytree(squeezenet_root, root)
    (root / "serving_server" / "inference.onnx").write_bytes(b"not a model")
    code, stdout, err = run_cli("--measure", root, "--threads", "1", "--max-batch-size", "2", "--runs", "3")
    assert code == 0, err
    (table,) = yaml.safe_load((root / "model_card.yaml").read_text())["engine_timings"]
    assert {row["engine"] for row in table["rows"]} == {"paddle_onednn", "paddle"}
    assert table["skipped"]["onnxruntime"].startswith("failed: serving.errors.InitError: cannot create the ONNX "
                                                      "Runtime session for "), table["skipped"]
    assert "INVALID_PROTOBUF" in table["skipped"]["onnxruntime"] and "engine: auto now runs Paddle" in stdout
