"""Seeded random weights that behave: activations of unit scale and logits of a chosen spread.

Plain random init saturates (DarkNet53's logits reach ~1e5 with default BatchNorm
statistics), so every image gets a one-hot softmax and parity checks prove nothing.
"""

import cv2
import numpy as np
import paddle
from paddle import nn

from export import SAMPLE_IMAGES
from export.models import MEAN, STD, ModelSpec
from serving.preprocess import Transforms

LOGIT_STD = 2.0
SYNTHETIC_IMAGES = 2
VARIANCE_FLOOR = 0.1
RESIDUAL_GAMMA = 0.2


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    """Photo-like normalized NCHW inputs: colour fields at several scales, so edges and texture both occur."""
    rng = np.random.RandomState(seed)
    batch = []
    for _ in range(count):
        image = np.zeros((size, size, 3), dtype=np.float32)
        for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
            field = rng.uniform(0.0, 1.0, size=(cells, cells, 3)).astype(np.float32)
            image += weight * cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image, 0.0, 1.0)
        batch.append(((image - MEAN) / STD).transpose(2, 0, 1))
    return np.ascontiguousarray(batch, dtype=np.float32)


def calibration_batch(spec: ModelSpec, seed: int) -> np.ndarray:
    """The shipped sample photos, flipped and not, plus seeded synthetic images, preprocessed for `spec`."""
    transforms = Transforms.from_card(spec.preprocessing())
    photos = [transforms(path.read_bytes()) for path in sorted(SAMPLE_IMAGES.iterdir())]
    flipped = [np.ascontiguousarray(photo[:, :, ::-1]) for photo in photos]
    synthetic = list(synthetic_images(SYNTHETIC_IMAGES, spec.crop_size, seed))
    return np.stack(photos + flipped + synthetic)


def _rescale(layer: nn.Layer, factor: float) -> None:
    """Multiply a conv or fc layer's weight and bias in place."""
    layer.weight.set_value(layer.weight * factor)
    if layer.bias is not None:
        layer.bias.set_value(layer.bias * factor)


def _unit_output_hook(layer: nn.Layer, inputs: tuple, output: paddle.Tensor) -> paddle.Tensor:
    """Scale the layer so this output has unit standard deviation, and pass the scaled output on."""
    factor = 1.0 / max(float(output.std()), 1e-6)
    _rescale(layer, factor)
    return output * factor


def _batch_stats_hook(layer: nn.BatchNorm, inputs: tuple) -> None:
    """Set the running statistics to this input's per-channel mean and (floored) variance.

    A channel that is nearly constant on the calibration batch (a group of dead ReLUs
    feeding a grouped conv) would otherwise be amplified ~300x on any other input.
    """
    x = inputs[0]
    variance = x.var(axis=[0, 2, 3], unbiased=False)
    layer._mean.set_value(x.mean(axis=[0, 2, 3]))
    layer._variance.set_value(paddle.maximum(variance, VARIANCE_FLOOR * variance.mean() + 1e-6))


def _damp_residual_branches(network: nn.Layer, spec: ModelSpec) -> None:
    """Shrink the last BatchNorm of each residual branch, keeping a deep random net out of chaos.

    Without this, 50 SE blocks of random weights amplify any input that differs from
    the calibration batch until logits reach ~1e2 and engines disagree in the 4th digit.
    """
    if not spec.residual_branch_norm:
        return
    for name, layer in network.named_sublayers():
        if isinstance(layer, nn.BatchNorm) and name.endswith(spec.residual_branch_norm):
            layer.weight.set_value(paddle.full_like(layer.weight, RESIDUAL_GAMMA))


def calibrate(network: nn.Layer, spec: ModelSpec, seed: int) -> None:
    """Fit BatchNorm statistics and layer scales in one forward pass, then set the logits' spread."""
    _damp_residual_branches(network, spec)
    handles = []
    for layer in network.sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Linear)):
            handles.append(layer.register_forward_post_hook(_unit_output_hook))
        elif isinstance(layer, nn.BatchNorm):
            handles.append(layer.register_forward_pre_hook(_batch_stats_hook))
    images = paddle.to_tensor(calibration_batch(spec, seed))
    try:
        with paddle.no_grad():
            network(images)
    finally:
        for handle in handles:
            handle.remove()
    with paddle.no_grad():
        logits = network(images)
    classifier = [layer for layer in network.sublayers() if isinstance(layer, (nn.Conv2D, nn.Linear))][-1]
    _rescale(classifier, LOGIT_STD / max(float(logits.std()), 1e-6))


def random_network(spec: ModelSpec, num_classes: int, seed: int) -> nn.Layer:
    """A calibrated, seeded random network: for demos and tests only, its predictions mean nothing."""
    paddle.seed(seed)
    network = spec.build(num_classes)
    calibrate(network, spec, seed)
    return network
