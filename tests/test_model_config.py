"""serving_*_conf.prototxt files: written in Paddle Serving's format and read back identically."""

from pathlib import Path

import pytest
from google.protobuf import text_format

from serving.model_config import (
    FLOAT32,
    STRING,
    ModelConfigError,
    VarSpec,
    build_config,
    read_config,
    stream_path,
    write_config,
)
from serving.proto.general_model_config_pb2 import GeneralModelConfig


def test_text_and_stream_twins_parse_to_the_same_message(tmp_path: Path) -> None:
    config = build_config([VarSpec("x", "x", FLOAT32, (3, 224, 224))], [VarSpec("out", "prediction", FLOAT32, (1000,))])
    path = tmp_path / "serving_server_conf.prototxt"
    write_config(config, path)
    from_text = text_format.Parse(path.read_text(), GeneralModelConfig())
    from_stream = GeneralModelConfig.FromString(stream_path(path).read_bytes())
    assert from_text == from_stream == config
    assert stream_path(path).name == "serving_server_conf.stream.prototxt"
    assert list(from_text.feed_var[0].shape) == [3, 224, 224]
    assert from_text.fetch_var[0].alias_name == "prediction"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "serving_server_conf.prototxt", "serving_server_conf.stream.prototxt"]


def test_reads_paddle_serving_files() -> None:
    text = (
        'feed_var { name: "inputs" alias_name: "inputs" is_lod_tensor: false feed_type: 20 shape: 1 }\n'
        'fetch_var { name: "save_infer_model/scale_0.tmp_1" alias_name: "prediction" fetch_type: 1 shape: 1000 }\n'
    )
    config = text_format.Parse(text, GeneralModelConfig())
    assert config.feed_var[0].feed_type == STRING
    assert config.fetch_var[0].is_lod_tensor is False


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"cannot read model config .*missing\.prototxt"):
        read_config(tmp_path / "missing.prototxt")
    bad = tmp_path / "bad.prototxt"
    bad.write_text("feed_var { nonsense: 1 }")
    with pytest.raises(ModelConfigError, match=r"bad\.prototxt is not a valid GeneralModelConfig"):
        read_config(bad)
