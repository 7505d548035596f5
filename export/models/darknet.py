"""DarkNet53 (the ImageNet classifier, ReLU activations) with PaddleClas's layer names."""

import paddle
from paddle import nn

# (stage, number of residual blocks, block input channels); block attribute names are
# `_basic_block_{stage}{i}`, except stage 0 whose single block is `_basic_block_01`.
_STAGES = [(0, 1, 64), (1, 2, 128), (2, 8, 256), (3, 8, 512), (4, 4, 1024)]


class ConvBNLayer(nn.Layer):
    """Conv without bias, then BatchNorm fused with ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self._conv = nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding, bias_attr=False)
        self._bn = nn.BatchNorm(out_channels, act="relu")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self._bn(self._conv(x))


class BasicBlock(nn.Layer):
    """1x1 halving conv, 3x3 restoring conv, residual add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self._conv1 = ConvBNLayer(channels, channels // 2, 1, 1, 0)
        self._conv2 = ConvBNLayer(channels // 2, channels, 3, 1, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.add(x, self._conv2(self._conv1(x)))


class DarkNet53(nn.Layer):
    """DarkNet53 backbone + global average pool + fc; trained at 256x256."""

    def __init__(self, class_num: int = 1000) -> None:
        super().__init__()
        self._conv1 = ConvBNLayer(3, 32, 3, 1, 1)
        self._conv2 = ConvBNLayer(32, 64, 3, 2, 1)
        self._sequence: list[str] = []
        for stage, blocks, channels in _STAGES:
            for i in range(blocks):
                name = f"_basic_block_{stage}{i + 1}" if stage else "_basic_block_01"
                setattr(self, name, BasicBlock(channels))
                self._sequence.append(name)
            if stage < 4:
                name = f"_downsample_{stage}"
                setattr(self, name, ConvBNLayer(channels, channels * 2, 3, 2, 1))
                self._sequence.append(name)
        self._pool = nn.AdaptiveAvgPool2D(1)
        self._out = nn.Linear(1024, class_num)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._conv2(self._conv1(x))
        for name in self._sequence:
            x = getattr(self, name)(x)
        return self._out(paddle.squeeze(self._pool(x), axis=[2, 3]))
