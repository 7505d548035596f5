"""Atomic writes leave the old file or the new one, and no temporary files behind; paths stay inside."""

import os
from pathlib import Path

import pytest

from serving.errors import InitError
from serving.files import atomic_write_bytes, atomic_write_text, inside, umasked
from serving.model_card import CARD_FILE, load_card


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


def test_inside_keeps_paths_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a")
    (tmp_path / "out").symlink_to("/etc")
    assert inside(tmp_path, "labels.txt") == (tmp_path / "labels.txt").resolve()
    assert inside(tmp_path, "sub/../labels.txt") == (tmp_path / "labels.txt").resolve()
    for escape in ("../labels.txt", "/etc/passwd", "out/passwd"):
        assert inside(tmp_path, escape) is None


def test_a_model_card_cannot_point_outside_its_folder(squeezenet_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "model"
    (root / "serving_server").mkdir(parents=True)
    card = (squeezenet_root / CARD_FILE).read_text().replace("labels: labels.txt", "labels: ../secret.txt")
    assert "../secret.txt" in card
    (root / CARD_FILE).write_text(card)
    (tmp_path / "secret.txt").write_text("password\n")
    with pytest.raises(InitError, match="outside the model folder"):
        load_card(root / "serving_server")
