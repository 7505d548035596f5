"""Weights in: PaddleClas .pdparams checkpoints and inference-model folders, checked against the network."""

import json
import pickle
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from export.errors import ArchitectureMismatchError, WeightsError

PARAM_NAMES_DIR = Path(__file__).parent / "data" / "param_names"
# paddle.save stores this extra entry beside the weights: structured key -> ParamAttr name.
STRUCTURED_NAMES_KEY = "StructuredToParameterName@@"
SHOWN = 5


def param_attr_names(model: str) -> dict[str, str]:
    """Structured key -> the ParamAttr name PaddleClas gives that parameter (older checkpoints' keys)."""
    return json.loads((PARAM_NAMES_DIR / f"{model}.json").read_text())


def checked_file(path: Path) -> Path:
    """`path`, if it is an existing regular file."""
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.is_file():
        raise WeightsError(f"weights path {path} is not a file")
    return path


def load_pdparams(path: Path) -> dict[str, np.ndarray]:
    """Read a `paddle.save` checkpoint into name -> array."""
    path = checked_file(Path(path))
    try:
        state = paddle.load(str(path), return_numpy=True)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError, TypeError, KeyError, AttributeError):
        raise WeightsError(f"{path} is not a Paddle checkpoint (.pdparams written by paddle.save)") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a Paddle checkpoint: it holds a {type(state).__name__}, not a state dict")
    state.pop(STRUCTURED_NAMES_KEY, None)
    arrays = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    if not arrays:
        raise WeightsError(f"{path} is not a Paddle checkpoint: it holds no tensors")
    return arrays


def to_structured_keys(state: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """Rename ParamAttr-named entries (older checkpoints, inference models) to structured keys."""
    by_attr_name = {attr: key for key, attr in param_attr_names(model).items()}
    if any(key in by_attr_name for key in state) and not any(key in by_attr_name.values() for key in state):
        return {by_attr_name.get(key, key): value for key, value in state.items()}
    return state


def _listed(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{title} {len(items)}: {', '.join(items[:SHOWN])}{more}"


def check_state(network: nn.Layer, state: dict[str, np.ndarray], model: str, num_classes: int) -> None:
    """Fail with the first missing, unexpected and mis-shaped keys when `state` does not fit `network`."""
    expected = {key: list(value.shape) for key, value in network.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} {list(state[key].shape)} (want {shape})"
        for key, shape in expected.items()
        if key in state and list(state[key].shape) != shape
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = [_listed(title, items) for title, items in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
    hint = _class_count_hint(network, state, num_classes)
    message = f"weights do not fit {model} with {num_classes} classes: " + "; ".join(parts)
    raise ArchitectureMismatchError(message + hint)


def _class_count_hint(network: nn.Layer, state: dict[str, np.ndarray], num_classes: int) -> str:
    """When only the classifier differs, say which --num-classes the checkpoint wants."""
    last_key = list(network.state_dict())[-1]
    bias = state.get(last_key)
    if bias is not None and bias.ndim == 1 and bias.shape[0] != num_classes:
        return f" (the checkpoint has {bias.shape[0]} classes: pass --num-classes {bias.shape[0]})"
    return ""


def apply_state(network: nn.Layer, state: dict[str, np.ndarray], model: str, num_classes: int) -> None:
    """Check, then load `state` into `network`."""
    check_state(network, state, model, num_classes)
    network.set_state_dict({key: value.astype(np.float32) for key, value in state.items()})
