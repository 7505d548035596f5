"""Parameter and FLOPs counts, by the convention of PaddleClas's model table."""

import numpy as np
import paddle
from paddle import nn


def count_params(network: nn.Layer) -> int:
    """All state, BatchNorm statistics included: what a .pdparams file holds."""
    return sum(int(np.prod(value.shape)) for value in network.state_dict().values())


def _macs(layer: nn.Layer, inputs: tuple, output: paddle.Tensor) -> int:
    """Multiply-accumulates of one conv or fc call, per sample."""
    per_sample = int(np.prod(output.shape[1:]))
    if isinstance(layer, nn.Conv2D):
        in_channels, kernel_h, kernel_w = layer.weight.shape[1:]
        return per_sample * in_channels * kernel_h * kernel_w
    return per_sample * layer.weight.shape[0]


def count_flops(network: nn.Layer, input_size: int) -> int:
    """2 x the multiply-accumulates of conv and fc layers for one image of `input_size`."""
    total = [0]

    def hook(layer: nn.Layer, inputs: tuple, output: paddle.Tensor) -> None:
        total[0] += _macs(layer, inputs, output)

    handles = [
        layer.register_forward_post_hook(hook)
        for layer in network.sublayers()
        if isinstance(layer, (nn.Conv2D, nn.Linear))
    ]
    try:
        with paddle.no_grad():
            network(paddle.zeros([1, 3, input_size, input_size], dtype="float32"))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * total[0]
