"""The zoo's networks have PaddleClas's exact state_dict, parameter counts and FLOPs."""

import pytest

from export.models import MODELS, UnknownModelError, get_spec
from export.stats import count_flops, count_params
from tests.conftest import MODEL_NAMES, reference_params

PARAMS = {
    "AlexNet": 61_100_840,
    "SqueezeNet1_0": 1_248_424,
    "SqueezeNet1_1": 1_235_496,
    "DarkNet53": 41_645_640,
    "SENet154_vd": 122_032_472,
}
# 2 x conv+fc MACs measured on PaddleClas's own code (shared/reference/models.md).
FLOPS_G = {"AlexNet": 1.429, "SqueezeNet1_0": 1.554, "SqueezeNet1_1": 0.699, "DarkNet53": 18.570, "SENet154_vd": 48.680}


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_state_dict_matches_paddleclas_and_counts(model: str) -> None:
    network = get_spec(model).build(1000)
    ours = [[key, list(value.shape), str(value.dtype).removeprefix("paddle.")]
            for key, value in network.state_dict().items()]
    assert ours == reference_params(model)
    assert count_params(network) == PARAMS[model]
    assert count_flops(network, get_spec(model).crop_size) / 1e9 == pytest.approx(FLOPS_G[model], abs=0.006)


def test_class_count_is_a_parameter() -> None:
    network = get_spec("SqueezeNet1_1").build(10)
    assert list(network.state_dict()["_conv9.weight"].shape) == [10, 512, 1, 1]


def test_input_sizes_follow_the_paddleclas_configs() -> None:
    sizes = {name: (spec.resize_short, spec.crop_size) for name, spec in MODELS.items()}
    assert sizes["DarkNet53"] == (292, 256)
    assert {sizes[name] for name in MODEL_NAMES if name != "DarkNet53"} == {(256, 224)}


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(UnknownModelError, match="AlexNet, SqueezeNet1_0, SqueezeNet1_1, DarkNet53, SENet154_vd"):
        get_spec("ResNet50")
