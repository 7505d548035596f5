"""End to end: export each network, load it with paddle.inference, and compare with the dygraph network."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from google.protobuf import text_format

from export import inference_io
from export.calibration import random_network
from export.card import CARD_FILE
from export.errors import ParityError
from export.exporter import ExportRequest, WithSoftmax, export, logprob_excess, self_check
from export.models import get_spec
from export.onnx_export import ONNX_FILE, run_onnx
from serving.model_config import CLIENT_CONF, SERVER_CONF, stream_path
from serving.preprocess import Transforms
from serving.proto.general_model_config_pb2 import GeneralModelConfig
from tests.conftest import MODEL_NAMES, photo_bytes

ROOT = Path(__file__).parent.parent


def photos(model: str) -> np.ndarray:
    transforms = Transforms.from_card(get_spec(model).preprocessing())
    return np.stack([transforms(data) for data in photo_bytes()])


def predict(directory: Path, batch: np.ndarray) -> np.ndarray:
    return inference_io.run(inference_io.create_predictor(directory), batch)[0]


def dygraph(network: paddle.nn.Layer, batch: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return network(paddle.to_tensor(batch)).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def leftovers(parent: Path) -> list[str]:
    """Staging or moved-aside folders the exporter must never leave behind."""
    return [path.name for path in parent.iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_export_parity_through_paddle_inference(model: str, tmp_path: Path) -> None:
    """Batch 1 and 2: probabilities within 1e-4, logits within 1e-5 of their scale; ONNX Runtime agrees to 1e-5."""
    out = tmp_path / model
    result = export(ExportRequest(model=model, out=out, random_init=0, onnx=True))
    assert result.parity_max_abs_diff <= 1e-4 and result.card["engines"] == ["paddle", "onnxruntime"]
    network = random_network(get_spec(model), 1000, seed=0)
    batch = photos(model)
    for size in (1, 2):
        served = predict(out / "serving_server", batch[:size])
        assert served.shape == (size, 1000)
        np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
        assert np.abs(served - softmax(dygraph(network, batch[:size]))).max() <= 1e-4
        assert np.abs(run_onnx(out / "serving_server" / ONNX_FILE, batch[:size]) - served).max() <= 1e-5
    logits_dir = tmp_path / "logits"
    inference_io.save_program(network, logits_dir, get_spec(model).crop_size)
    served_logits, expected_logits = predict(logits_dir, batch), dygraph(network, batch)
    assert np.abs(served_logits - expected_logits).max() <= 1e-5 * np.abs(expected_logits).max()
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def squeezenet_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("layout") / "SqueezeNet1_1"
    return out, export(ExportRequest(model="SqueezeNet1_1", out=out, random_init=0))


def test_layout_configs_and_card(squeezenet_export: tuple[Path, object]) -> None:
    out, _ = squeezenet_export
    server = text_format.Parse((out / "serving_server" / SERVER_CONF).read_text(), GeneralModelConfig())
    client = text_format.Parse((out / "serving_client" / CLIENT_CONF).read_text(), GeneralModelConfig())
    assert server == client
    for path in (out / "serving_server" / SERVER_CONF, out / "serving_client" / CLIENT_CONF):
        assert GeneralModelConfig.FromString(stream_path(path).read_bytes()) == server
    feed, fetch = server.feed_var[0], server.fetch_var[0]
    assert (feed.name, feed.feed_type, list(feed.shape)) == ("x", 1, [3, 224, 224])
    assert (fetch.alias_name, fetch.fetch_type, list(fetch.shape)) == ("prediction", 1, [1000])
    predictor = inference_io.create_predictor(out / "serving_server")
    assert predictor.get_input_names() == ["x"] and predictor.get_output_names() == [fetch.name]
    card = yaml.safe_load((out / CARD_FILE).read_text())
    assert card["model"] == "SqueezeNet1_1" and card["num_classes"] == 1000
    assert card["params"] == 1_235_496 and abs(card["flops"] / 1e9 - 0.699) < 0.001
    assert card["preprocessing"]["resize_short"]["size"] == 256
    assert card["weights"] == {"source": "random-init", "seed": 0,
                               "warning": "random weights: predictions are meaningless"}
    assert card["paddle_version"] == paddle.__version__ and card["parity_max_abs_diff"] <= 1e-4
    assert len((out / card["labels"]).read_text().splitlines()) == 1000



def save_checkpoint(path: Path, network: paddle.nn.Layer, attr_names: bool = False) -> Path:
    """Write a .pdparams the way PaddleClas does (paddle.save), keyed by structured or ParamAttr names."""
    state = network.state_dict()
    if attr_names:
        from export.checkpoint import param_attr_names

        names = param_attr_names("SqueezeNet1_1")
        state = {names[key]: value for key, value in state.items()}
    paddle.save(state, str(path))
    return path


@pytest.mark.parametrize("attr_names", [False, True])
def test_weights_checkpoint_changes_the_outputs(
    tmp_path: Path, squeezenet_export: tuple[Path, object], attr_names: bool
) -> None:
    trained = random_network(get_spec("SqueezeNet1_1"), 1000, seed=7)
    weights = save_checkpoint(tmp_path / "SqueezeNet1_1_pretrained.pdparams", trained, attr_names)
    out = tmp_path / "from_weights"
    export(ExportRequest(model="SqueezeNet1_1", out=out, weights=weights))
    batch = photos("SqueezeNet1_1")
    served = predict(out / "serving_server", batch)
    assert np.abs(served - softmax(dygraph(trained, batch))).max() <= 1e-4
    seed0 = predict(squeezenet_export[0] / "serving_server", batch)
    assert np.abs(served - seed0).max() > 1e-3, "other weights must give other outputs"
    card = yaml.safe_load((out / CARD_FILE).read_text())
    assert card["weights"]["source"] == "checkpoint"
    assert card["weights"]["files"][0]["path"] == str(weights.resolve())
    assert len(card["weights"]["files"][0]["sha256"]) == 64


def test_fine_tuned_class_count_with_its_labels(tmp_path: Path) -> None:
    tuned = random_network(get_spec("SqueezeNet1_1"), 5, seed=2)
    weights = save_checkpoint(tmp_path / "flowers.pdparams", tuned)
    labels = tmp_path / "flowers.txt"
    labels.write_text("".join(f"{i} {name}\n" for i, name in enumerate(["daisy", "rose", "tulip", "iris", "lily"])))
    out = tmp_path / "flowers"
    result = export(ExportRequest(model="SqueezeNet1_1", out=out, weights=weights, num_classes=5, labels=labels))
    assert result.card["num_classes"] == 5 and result.card["output"]["shape"] == [5]
    assert predict(out / "serving_server", photos("SqueezeNet1_1")).shape == (2, 5)
    assert (out / "labels.txt").read_text() == labels.read_text()


PIR_SAVE = """
import sys, paddle
sys.path.insert(0, {root!r})
from export.calibration import random_network
from export.checkpoint import param_attr_names
from export.exporter import WithSoftmax
from export.inference_io import save_program
from export.models import get_spec
network = random_network(get_spec("SqueezeNet1_1"), 1000, seed=11)
names = param_attr_names("SqueezeNet1_1")
for key, param in network.state_dict().items():
    param.name = names[key]  # PaddleClas's models name every parameter with ParamAttr
layer = WithSoftmax(network) if {softmax} else network
layer.eval()
save_program(layer, {out!r}, 224)
"""


def paddleclas_inference_model(directory: Path, legacy: bool, softmax: bool = True) -> Path:
    """An inference model as PaddleClas exports it: Paddle 3 `.json`, or legacy `.pdmodel` (old IR)."""
    env = dict(os.environ, FLAGS_enable_pir_api="0" if legacy else "1", GLOG_minloglevel="2")
    script = PIR_SAVE.format(root=str(ROOT), out=str(directory), softmax=softmax)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    return directory


@pytest.mark.parametrize(("legacy", "softmax_in_source"), [(False, True), (True, True), (False, False)])
def test_inference_model_folder(tmp_path: Path, legacy: bool, softmax_in_source: bool) -> None:
    source = paddleclas_inference_model(tmp_path / "SqueezeNet1_1_infer", legacy, softmax_in_source)
    assert (source / ("inference.pdmodel" if legacy else "inference.json")).is_file()
    out = tmp_path / "served"
    result = export(ExportRequest(model="SqueezeNet1_1", out=out, inference_model=source))
    assert result.parity_max_abs_diff <= 1e-4
    batch = photos("SqueezeNet1_1")
    expected = predict(source, batch)
    served = predict(out / "serving_server", batch)
    assert np.abs(served - (expected if softmax_in_source else softmax(expected))).max() <= 1e-4
    assert result.card["weights"]["source"] == "inference-model"



def test_self_check_judges_log_probabilities_relative_to_the_logits_scale() -> None:
    """Near-tied saturated logits may flip the one-hot softmax on float32 rounding: that passes; other logits fail."""
    logits = np.array([[4.0e6, 4.0e6 + 20.0, -3.0e6], [10.0, 1.0, -2.0]], dtype=np.float32)
    rounded = logits.copy()
    rounded[0, 0] += 40.0  # 1e-5 of the logits' scale: float32 sums in another order
    served = softmax(rounded.astype(np.float64)).astype(np.float32)
    assert np.abs(served - softmax(logits.astype(np.float64))).max() > 0.99, "the probability bound would fail it"
    assert logprob_excess(served, logits) <= 0
    wrong = softmax(np.array([[4.0e6, 3.9e6, -3.0e6], [1.0, 10.0, -2.0]]))
    assert logprob_excess(wrong, logits) > 0
    slightly_wrong = softmax(np.array([[4.0e6, 4.0e6 + 20.0, -3.0e6], [10.0, 1.1, -2.0]]))
    assert logprob_excess(slightly_wrong, logits) > 0, "small logits keep a tight absolute bound"


def test_saturated_export_passes_and_a_wrong_program_fails(tmp_path: Path,
                                                          squeezenet_root: Path) -> None:
    """A checkpoint whose logits are huge (one-hot softmax) exports; a program of other weights is refused."""
    spec = get_spec("SqueezeNet1_1")
    network = random_network(spec, 1000, seed=5)
    state = network.state_dict()
    classifier = next(key for key in state if key.endswith("weight") and state[key].shape[0] == 1000)
    state[classifier] = state[classifier] * 1e4
    network.set_state_dict(state)
    weights = save_checkpoint(tmp_path / "saturated.pdparams", network)
    out = tmp_path / "saturated"
    export(ExportRequest(model="SqueezeNet1_1", out=out, weights=weights))
    served = predict(out / "serving_server", photos("SqueezeNet1_1"))
    assert served.max(axis=-1).min() > 0.999, "the test needs a saturated softmax"
    other = WithSoftmax(random_network(spec, 1000, seed=7))
    other.eval()
    with pytest.raises(ParityError, match="the exported program differs from the network"):
        self_check(other, squeezenet_root / "serving_server", spec, None)
