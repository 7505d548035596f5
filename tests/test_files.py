"""Atomic writes leave the old file or the new one, and no temporary files behind."""

import os
from pathlib import Path

import pytest

from serving.files import atomic_write_bytes, atomic_write_text, umasked


def test_replaces_content_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "conf.prototxt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["conf.prototxt"]
    assert target.stat().st_mode & 0o777 == umasked(0o666)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "conf.prototxt"
    atomic_write_text(target, "old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345)  # type: ignore[arg-type]  # fails inside write()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["conf.prototxt"]
