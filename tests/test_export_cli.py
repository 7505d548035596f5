"""`python -m export`: real output on success; one-line errors, non-zero exit and nothing left behind on bad input."""

import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

from export.models import get_spec

ROOT = Path(__file__).parent.parent


def assert_failed_cleanly(result: tuple[int, str, str], out: Path, *fragments: str) -> None:
    code, _, stderr = result
    assert code != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0]
    assert not out.exists()
    assert [path.name for path in out.parent.iterdir() if path.name.startswith(".")] == []


@pytest.fixture(scope="module")
def squeezenet10_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "SqueezeNet1_0_pretrained.pdparams"
    paddle.save(get_spec("SqueezeNet1_0").build(1000).state_dict(), str(path))
    return path


def test_missing_unreadable_and_foreign_weights(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["--model", "SqueezeNet1_1", "--out", out]
    assert_failed_cleanly(run_cli(*base, "--weights", tmp_path / "nope.pdparams"), out, "does not exist")
    assert_failed_cleanly(run_cli(*base, "--weights", tmp_path), out, "is not a file")
    text = tmp_path / "readme.pdparams"
    text.write_text("not weights")
    assert_failed_cleanly(run_cli(*base, "--weights", text), out, "not a Paddle checkpoint")


def test_other_architecture_and_class_count(run_cli, tmp_path: Path, squeezenet10_weights: Path) -> None:
    out = tmp_path / "out"
    assert_failed_cleanly(
        run_cli("--model", "SqueezeNet1_1", "--weights", squeezenet10_weights, "--out", out),
        out, "weights do not fit SqueezeNet1_1", "mis-shaped 3: _conv.weight [96, 3, 7, 7] (want [64, 3, 3, 3])",
    )
    assert_failed_cleanly(
        run_cli("--model", "SqueezeNet1_0", "--weights", squeezenet10_weights, "--out", out, "--num-classes", "10",
                "--labels", write_labels(tmp_path, 10)),
        out, "mis-shaped 2: _conv9.weight", "pass --num-classes 1000",
    )


def write_labels(tmp_path: Path, count: int) -> Path:
    labels = tmp_path / f"labels{count}.txt"
    labels.write_text("".join(f"{i} class{i}\n" for i in range(count)))
    return labels


def test_unknown_model_labels_and_empty_inference_folder(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_failed_cleanly(run_cli("--model", "ResNet50", "--random-init", "0", "--out", out), out,
                          "unknown model 'ResNet50'", "AlexNet, SqueezeNet1_0, SqueezeNet1_1, DarkNet53, SENet154_vd")
    assert_failed_cleanly(run_cli("--model", "AlexNet", "--random-init", "0", "--out", out,
                                  "--labels", write_labels(tmp_path, 3)), out, "has 3 labels but the model has 1000")
    empty = tmp_path / "empty_infer"
    empty.mkdir()
    assert_failed_cleanly(run_cli("--model", "AlexNet", "--inference-model", empty, "--out", out), out,
                          "holds no inference model")


def test_existing_output_needs_force(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    code, _, stderr = run_cli("--model", "SqueezeNet1_1", "--random-init", "0", "--out", out)
    expected = f"error: output folder {out} already exists; pass --force to replace it"
    assert code != 0 and stderr.strip().splitlines()[-1] == expected
    assert (out / "old.txt").exists()
    code, stdout, _ = run_cli("--model", "SqueezeNet1_1", "--random-init", "0", "--out", out, "--force")
    assert code == 0 and "params: 1,235,496" in stdout
    assert sorted(path.name for path in out.iterdir()) == ["labels.txt", "model_card.yaml", "serving_client",
                                                            "serving_server"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_unwritable_output(run_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "out"
    code, _, stderr = run_cli("--model", "SqueezeNet1_1", "--random-init", "0", "--out", out)
    assert code != 0 and stderr.strip().splitlines()[-1] == (
        f"error: cannot write output folder {out}: {blocker} is a file, not a folder")


def test_python_dash_m_export_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "export", "--model", "SqueezeNet1_1", "--random-init", "0",
                          "--out", tmp_path / "m"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "params: 1,235,496" in run.stdout and "FLOPs:  0.70 G" in run.stdout
    assert "warning: --random-init 0: random weights, predictions are meaningless" in run.stderr
    parity = float(run.stdout.split("network = ")[1].split()[0])
    assert parity <= 1e-4
    bad = subprocess.run([sys.executable, "-m", "export", "--model", "Nope", "--random-init", "0",
                          "--out", tmp_path / "n"], capture_output=True, text=True, env=env, cwd=tmp_path)
    warning, error = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and warning.startswith("warning: --random-init") and error.startswith(
        "error: unknown model 'Nope'; valid models: AlexNet, SqueezeNet1_0")
