"""Paddle Serving's model config files: `serving_{server,client}_conf.prototxt` and their binary twins."""

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from serving.files import atomic_write_bytes, atomic_write_text
from serving.proto.general_model_config_pb2 import GeneralModelConfig
from serving.tensors import ElemType

SERVER_CONF = "serving_server_conf.prototxt"
CLIENT_CONF = "serving_client_conf.prototxt"

FLOAT32 = ElemType.FP32  # the feed and fetch type of every exported classifier
STRING = 20


@dataclass(frozen=True)
class VarSpec:
    """One feed or fetch variable: program name, alias clients use, element type, shape without batch."""

    name: str
    alias: str
    elem_type: int
    shape: tuple[int, ...]


def build_config(feeds: list[VarSpec], fetches: list[VarSpec]) -> GeneralModelConfig:
    """The GeneralModelConfig message for these variables."""
    config = GeneralModelConfig()
    for spec in feeds:
        var = config.feed_var.add(name=spec.name, alias_name=spec.alias, is_lod_tensor=False)
        var.feed_type = spec.elem_type
        var.shape.extend(spec.shape)
    for spec in fetches:
        var = config.fetch_var.add(name=spec.name, alias_name=spec.alias, is_lod_tensor=False)
        var.fetch_type = spec.elem_type
        var.shape.extend(spec.shape)
    return config


def stream_path(path: Path) -> Path:
    """`x.prototxt` -> `x.stream.prototxt`, Paddle Serving's name for the binary twin."""
    return path.with_name(path.name.replace(".prototxt", ".stream.prototxt"))


def write_config(config: GeneralModelConfig, path: Path) -> None:
    """Write the text file and its binary twin."""
    atomic_write_text(path, text_format.MessageToString(config))
    atomic_write_bytes(stream_path(path), config.SerializeToString())


class ModelConfigError(ValueError):
    """A model config file is missing or does not parse."""


def read_config(path: Path) -> GeneralModelConfig:
    """Parse a text-format model config, naming the file in any error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"cannot read model config {path}: {exc.strerror}") from None
    try:
        return text_format.Parse(text, GeneralModelConfig())
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{path} is not a valid GeneralModelConfig: {exc}") from None
