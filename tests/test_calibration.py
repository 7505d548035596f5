"""Seeded random weights stay in a sane range, so different photos get different probabilities."""

from functools import cache

import numpy as np
import paddle
import pytest

from export.calibration import random_network, synthetic_images
from export.models import get_spec
from serving.preprocess import Transforms
from tests.conftest import photo_bytes


def photo_batch(model: str, rotate: bool = False) -> paddle.Tensor:
    """The two photos; rotated 90 degrees they are inputs the calibration never saw."""
    transforms = Transforms.from_card(get_spec(model).preprocessing())
    batch = np.stack([transforms(data) for data in photo_bytes()])
    return paddle.to_tensor(np.ascontiguousarray(np.rot90(batch, axes=(2, 3))) if rotate else batch)


@cache
def calibrated(model: str) -> paddle.nn.Layer:
    return random_network(get_spec(model), 1000, seed=0)


@pytest.mark.parametrize("model", ["SqueezeNet1_1", "DarkNet53"])
@pytest.mark.parametrize("rotate", [False, True])
def test_logits_sane_and_photos_differ(model: str, rotate: bool) -> None:
    with paddle.no_grad():
        logits = calibrated(model)(photo_batch(model, rotate)).numpy()
    probs = paddle.nn.functional.softmax(paddle.to_tensor(logits)).numpy()
    assert np.isfinite(logits).all() and np.abs(logits).max() < 50
    assert probs.max() < 0.9, "softmax should not be one-hot"
    assert np.abs(probs[0] - probs[1]).max() > 1e-3, "the daisy and the tench must get different probabilities"


def test_uncalibrated_darknet_saturates() -> None:
    """Why calibration exists: default BatchNorm statistics blow DarkNet53's logits up."""
    paddle.seed(0)
    network = get_spec("DarkNet53").build(1000)
    with paddle.no_grad():
        logits = network(photo_batch("DarkNet53")).numpy()
    assert np.abs(logits).max() > 1e3


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    spec = get_spec("SqueezeNet1_1")
    first, again, other = (random_network(spec, 1000, seed).state_dict() for seed in (3, 3, 4))
    key = "_conv9.weight"
    np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    assert not np.array_equal(first[key].numpy(), other[key].numpy())


def test_synthetic_images_are_normalized_and_seeded() -> None:
    batch = synthetic_images(2, 64, seed=1)
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, synthetic_images(2, 64, seed=1))
    assert batch.min() > -2.2 and batch.max() < 2.7
