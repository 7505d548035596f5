"""`serving-kit` (`python -m kit`): each command reaches its tool's main() with the arguments as given; `predict`
classifies real photos; a library missing from the install is one line naming the extra."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from kit.__main__ import COMMANDS, main
from serving.model_card import load_card
from tests.conftest import IMAGES

ROOT = Path(__file__).resolve().parents[1]
# command -> (module whose main() it runs, arguments put before the user's)
EXPECTED = {"export": ("export.__main__", []), "serve": ("pipelines.web_service", []),
            "stop": ("pipelines.web_service", ["stop"]), "model-server": ("serving.model_server", []),
            "predict": ("kit.predict", []), "bench": ("bench.__main__", []), "eval": ("bench.eval", []),
            "migrate": ("serving.migrate", []), "compat": ("serving.compat", [])}


def test_every_command_is_expected() -> None:
    assert set(COMMANDS) == set(EXPECTED)


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_each_command_hands_its_arguments_to_its_tool(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, prefix = EXPECTED[command]
    calls = []
    monkeypatch.setattr(importlib.import_module(module), "main", lambda argv: calls.append(argv) or 7)
    assert main([command, "--model", "m", "-h", "stop"]) == 7
    assert calls == [[*prefix, "--model", "m", "-h", "stop"]]


@pytest.mark.parametrize(("command", "option"), [("export", "--random-init"), ("serve", "--model_config"),
                                                 ("model-server", "--grpc_port"), ("eval", "--via")])
def test_help_is_the_tools_own(command: str, option: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and option in capsys.readouterr().out


def test_python_dash_m_kit_lists_the_commands_and_refuses_others() -> None:
    listing = subprocess.run([sys.executable, "-m", "kit", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert listing.returncode == 0
    assert all(f"\n  {name} " in listing.stdout for name in COMMANDS), listing.stdout
    unknown = subprocess.run([sys.executable, "-m", "kit", "frobnicate"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice: 'frobnicate'" in unknown.stderr


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.delitem(sys.modules, "bench.eval", raising=False)
    assert main(["eval", "--help"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: serving-kit eval needs tqdm, which is not installed: pip install 'pipeline-serving-kit[bench]'"]


def test_a_missing_library_of_the_plain_install_is_a_bug_not_an_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(importlib.import_module("serving.migrate"), "main", lambda argv: __import__("tqdm"))
    with pytest.raises(ModuleNotFoundError):
        main(["migrate", "x.py"])


def test_predict_prints_label_and_prob_per_photo(squeezenet_root: Path, capsys: pytest.CaptureFixture) -> None:
    photos = [IMAGES / "daisy.jpg", IMAGES / "n01440764_10026.JPEG"]
    assert main(["predict", "--model", str(squeezenet_root), *map(str, photos)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["image", "label", "prob"] * 2
    assert lines[0] == f"image: {photos[0]}" and lines[3] == f"image: {photos[1]}"
    labels = load_card(squeezenet_root / "serving_server").display_labels
    for label, prob in (lines[1:3], lines[4:6]):
        assert ast.literal_eval(label.split(": ", 1)[1])[0] in labels
        assert 0 < ast.literal_eval(prob.split(": ", 1)[1])[0] <= 1
    assert captured.err.startswith(f"warning: {squeezenet_root} holds RANDOM weights (seed 0)")


def test_predict_reports_a_bad_image_and_an_unusable_model(squeezenet_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert main(["predict", "--model", str(squeezenet_root), str(text), str(IMAGES / "daisy.jpg")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"image: {IMAGES / 'daisy.jpg'}\nlabel: ['")
    assert captured.err.splitlines()[-1].startswith(f"error: {text}: ")
    assert main(["predict", "--model", str(tmp_path), str(IMAGES / "daisy.jpg")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read the model card in {tmp_path}")


def test_compat_runs_a_script_with_its_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = tmp_path / "ps_client.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    assert main(["compat", str(script), "--endpoint", "127.0.0.1:9993"]) == 0
    assert capsys.readouterr().out == "['--endpoint', '127.0.0.1:9993']\n"
