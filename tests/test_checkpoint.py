"""Checkpoints in: PaddleClas .pdparams load by structured or ParamAttr names; bad ones fail clearly."""

import pickle
from pathlib import Path

import numpy as np
import paddle
import pytest

from export.checkpoint import (
    STRUCTURED_NAMES_KEY,
    apply_state,
    check_state,
    load_pdparams,
    param_attr_names,
    to_structured_keys,
)
from export.errors import ArchitectureMismatchError, WeightsError
from export.models import get_spec


def saved_state(tmp_path: Path, model: str = "SqueezeNet1_1", num_classes: int = 1000) -> Path:
    path = tmp_path / f"{model}_pretrained.pdparams"
    paddle.save(get_spec(model).build(num_classes).state_dict(), str(path))
    return path


def test_loads_paddle_save_file_and_drops_the_name_map(tmp_path: Path) -> None:
    state = load_pdparams(saved_state(tmp_path))
    assert STRUCTURED_NAMES_KEY not in state
    assert list(state) == list(get_spec("SqueezeNet1_1").build(1000).state_dict())
    assert all(isinstance(value, np.ndarray) for value in state.values())


def test_missing_directory_truncated_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_pdparams(tmp_path / "nope.pdparams")
    with pytest.raises(WeightsError, match="is not a file"):
        load_pdparams(tmp_path)
    good = saved_state(tmp_path)
    truncated = tmp_path / "truncated.pdparams"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a Paddle checkpoint"):
        load_pdparams(truncated)
    listing = tmp_path / "list.pdparams"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_pdparams(listing)
    text = tmp_path / "notes.pdparams"
    text.write_text("these are not weights")
    with pytest.raises(WeightsError, match="not a Paddle checkpoint"):
        load_pdparams(text)


def test_paramattr_named_checkpoints_are_renamed() -> None:
    names = param_attr_names("SqueezeNet1_1")
    state = {attr: np.zeros(1, np.float32) for attr in names.values()}
    assert list(to_structured_keys(state, "SqueezeNet1_1")) == list(names)
    structured = {key: np.zeros(1, np.float32) for key in names}
    assert to_structured_keys(structured, "SqueezeNet1_1") is structured


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = load_pdparams(saved_state(tmp_path, "AlexNet"))
    with pytest.raises(ArchitectureMismatchError) as error:
        check_state(get_spec("SqueezeNet1_1").build(1000), state, "SqueezeNet1_1", 1000)
    message = str(error.value)
    assert "weights do not fit SqueezeNet1_1" in message
    assert "missing 52: _conv.weight" in message and "unexpected 16: _conv1._conv.weight" in message


def test_other_class_count_says_which_flag_to_pass(tmp_path: Path) -> None:
    state = load_pdparams(saved_state(tmp_path, num_classes=102))
    with pytest.raises(ArchitectureMismatchError, match=r"mis-shaped 2: _conv9.weight \[102, 512, 1, 1\].*"
                       r"pass --num-classes 102"):
        check_state(get_spec("SqueezeNet1_1").build(1000), state, "SqueezeNet1_1", 1000)
    network = get_spec("SqueezeNet1_1").build(102)
    apply_state(network, state, "SqueezeNet1_1", 102)
    np.testing.assert_array_equal(network.state_dict()["_conv9.bias"].numpy(), state["_conv9.bias"])
