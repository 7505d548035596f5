"""`engine: auto` runs the fastest FP32 engine the model card recorded for this machine, else the default rule.

The tables here are written by hand to steer the choice each way; tests/test_measure.py records real ones.
"""

import shutil
from pathlib import Path

import pytest
import yaml

from serving.config import LocalServiceConf
from serving.machine import cpu_limit, this_machine
from serving.model_config import SERVER_CONF, read_config
from serving.predictor.engine_table import CARD_FILE, TIMINGS_KEY, fastest_fp32, score, table_for
from serving.predictor.settings import settings_from_conf

OTHER_MACHINE = {"cpu": "AMD EPYC 9R14 96-Core Processor", "cpus": 2, "arch": "x86_64", "flags": ["avx2"]}


def rows(**ms_per_image: tuple[float, float]) -> list[dict]:
    """Table rows at batch 1 and 8 from (batch-1 ms, batch-8 ms per image) per engine key."""
    return [{"engine": key, "precision": "int8" if key.endswith("int8") else "fp32", "batch": batch,
             "median_ms": value * batch, "ms_per_image": value}
            for key, pair in ms_per_image.items() for batch, value in zip((1, 8), pair, strict=True)]


@pytest.fixture
def model(squeezenet_root: Path, tmp_path: Path) -> Path:
    """A copy of the shared export (Paddle only) with an empty ONNX file beside it: the engine choice reads files
    and the card, it loads nothing."""
    root = tmp_path / "SqueezeNet1_1"
    shutil.copytree(squeezenet_root, root)
    (root / "serving_server" / "inference.onnx").write_bytes(b"")
    return root


def write_tables(root: Path, *tables: dict) -> None:
    """Put the timing tables into the card as `python -m export --measure` would."""
    card = yaml.safe_load((root / CARD_FILE).read_text())
    card[TIMINGS_KEY] = list(tables)
    (root / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False))


def settings(root: Path, **keys: object) -> object:
    """settings_from_conf for a CPU op on `root` with engine auto unless `keys` say otherwise."""
    server_dir = root / "serving_server"
    conf = LocalServiceConf(model_config=str(server_dir), device_type=0, **keys)
    conf.validate("op.clas.local_service_conf")
    return settings_from_conf(conf, read_config(server_dir / SERVER_CONF), path="op.clas.local_service_conf")


def test_auto_runs_the_fastest_fp32_engine_recorded_for_this_machine(model: Path) -> None:
    """oneDNN wins here by the table: Paddle with oneDNN and IR optimisation on, though the op left both off."""
    write_tables(model, {"machine": this_machine(), "threads": 2,
                         "rows": rows(paddle_onednn=(3.0, 2.0), paddle=(9.0, 9.0), onnxruntime=(4.0, 3.0),
                                      onnxruntime_int8=(1.0, 1.0))})
    chosen = settings(model)
    assert (chosen.engine, chosen.use_mkldnn, chosen.ir_optim) == ("paddle", True, True)
    assert chosen.engine_choice == ("auto: fastest FP32 engine measured on this machine (Paddle + oneDNN, "
                                    "2.45 ms per image, 2 threads)")


def test_another_machines_table_falls_back_to_the_default_rule(model: Path) -> None:
    write_tables(model, {"machine": OTHER_MACHINE, "threads": 2, "rows": rows(paddle_onednn=(1.0, 1.0))})
    chosen = settings(model)
    assert (chosen.engine, chosen.use_mkldnn) == ("onnxruntime", False)
    assert chosen.engine_choice.startswith("auto: no engine timing recorded for this machine")


def test_an_engine_the_export_lacks_is_never_chosen(model: Path) -> None:
    """The table says ONNX Runtime, but this copy of the export has no inference.onnx any more."""
    write_tables(model, {"machine": this_machine(), "threads": 2,
                         "rows": rows(onnxruntime=(1.0, 1.0), paddle=(5.0, 5.0))})
    (model / "serving_server" / "inference.onnx").unlink()
    assert settings(model).engine == "paddle" and "Paddle, no oneDNN" in settings(model).engine_choice


def test_explicit_engine_and_other_precisions_ignore_the_table(model: Path) -> None:
    write_tables(model, {"machine": this_machine(), "threads": 2, "rows": rows(paddle_onednn=(1.0, 1.0))})
    assert settings(model, engine="onnxruntime").engine == "onnxruntime"
    bf16 = settings(model, precision="bf16", use_mkldnn=True, engine="paddle")
    assert (bf16.engine, bf16.engine_choice) == ("paddle", "")


def test_the_table_at_the_ops_thread_count_wins() -> None:
    machine = this_machine()
    two = {"machine": machine, "threads": 2, "rows": rows(paddle=(1.0, 1.0))}
    four = {"machine": machine, "threads": 4, "rows": rows(onnxruntime=(1.0, 1.0))}
    other = {"machine": OTHER_MACHINE, "threads": 4, "rows": rows(onnxruntime=(1.0, 1.0))}
    assert table_for([two, four, other], machine, 4) is four
    assert table_for([two, four, other], machine, 8) is four  # none at 8: this machine's latest
    assert table_for([other], machine, 4) is None


def test_score_is_the_geometric_mean_per_image() -> None:
    assert score(rows(paddle=(2.0, 8.0))) == pytest.approx(4.0)


def test_a_card_without_a_table_or_unreadable_gives_no_choice(model: Path, tmp_path: Path) -> None:
    assert fastest_fp32(model / "serving_server", 2) is None
    (model / CARD_FILE).write_text("{not yaml: [")
    assert fastest_fp32(model / "serving_server", 2) is None


def test_this_machine_names_cpu_count_and_the_telling_flags() -> None:
    machine = this_machine()
    assert machine == this_machine() and set(machine) == {"cpu", "cpus", "cpu_limit", "arch", "flags"}
    assert machine["cpus"] >= 1 and machine["cpu"] and isinstance(machine["flags"], list)


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000\n"}, 2.0), ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None), ({}, None)])
def test_a_containers_cpu_quota_is_part_of_the_machine(tmp_path: Path, files: dict, expected: float | None) -> None:
    """Kubernetes `limits.cpu` on the same node is another machine for timings: cgroup v2's cpu.max or v1's CFS."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == expected
