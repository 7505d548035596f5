"""CI's short soak: every protocol, every bad input, a worker killed mid-run; the committed run is 5 minutes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_short_soak_has_no_unexpected_errors_and_recovers(squeezenet_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.soak", "--seconds", "20",
               "--model", str(squeezenet_root / "serving_server"), "--out", str(tmp_path)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["unexpected"] == 0, result["unexpected_details"]
    assert result["verdicts"]["no client data unpickled (server logs)"]
    assert result["kill"]["recovery_s"] is not None and result["kill"]["recovery_s"] <= 5.0
    expected = {kind.split(": ", 1)[1] for kind in result["outcomes"] if kind.startswith("expected: ")}
    assert len(expected) >= 25 and "brpc: wrong magic" in expected and "grpc: pickled byte_data tensor" in expected
    assert result["outcomes"]["ok: all protocols"] > 200
    assert "# Soak and fault test" in (tmp_path / "soak.md").read_text()
    assert finished.returncode in (0, 1), finished.stderr[-2000:]  # 1: the RSS verdict, too noisy in 20 s
