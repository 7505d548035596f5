"""SqueezeNet 1.0 and 1.1 with PaddleClas's layer names (fire2..fire9 are `_conv1`..`_conv8`)."""

import paddle
from paddle import nn
from paddle.nn import functional as F

_FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
# Index of the fire module after which a max pool runs, per version.
_POOL_AFTER = {"1.0": (3, 7), "1.1": (2, 4)}


class FireConv(nn.Layer):
    """Conv + ReLU: PaddleClas's `MakeFireConv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self._conv = nn.Conv2D(in_channels, out_channels, kernel, padding=padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu(self._conv(x))


class Fire(nn.Layer):
    """Squeeze 1x1, then expand 1x1 and 3x3 side by side, concatenated on channels."""

    def __init__(self, in_channels: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self._conv = FireConv(in_channels, squeeze, 1)
        self._conv_path1 = FireConv(squeeze, expand, 1)
        self._conv_path2 = FireConv(squeeze, expand, 3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._conv(x)
        return paddle.concat([self._conv_path1(x), self._conv_path2(x)], axis=1)


class SqueezeNet(nn.Layer):
    """SqueezeNet; `version` "1.0" has a 7x7/96 stem, "1.1" a 3x3/64 stem and earlier pools."""

    def __init__(self, version: str, class_num: int = 1000) -> None:
        super().__init__()
        if version not in _POOL_AFTER:
            raise ValueError(f"SqueezeNet version must be one of {sorted(_POOL_AFTER)}, got {version!r}")
        self.version = version
        if version == "1.0":
            self._conv = nn.Conv2D(3, 96, 7, stride=2)
        else:
            self._conv = nn.Conv2D(3, 64, 3, stride=2, padding=1)
        self._pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=0)
        channels = self._conv.weight.shape[0]
        for index, (squeeze, expand) in enumerate(_FIRES, start=1):
            setattr(self, f"_conv{index}", Fire(channels, squeeze, expand))
            channels = 2 * expand
        self._drop = nn.Dropout(p=0.5, mode="downscale_in_infer")
        self._conv9 = nn.Conv2D(channels, class_num, 1)
        self._avg_pool = nn.AdaptiveAvgPool2D(1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._pool(F.relu(self._conv(x)))
        pool_after = _POOL_AFTER[self.version]
        for index in range(1, len(_FIRES) + 1):
            x = getattr(self, f"_conv{index}")(x)
            if index in pool_after:
                x = self._pool(x)
        x = F.relu(self._conv9(self._drop(x)))
        return paddle.squeeze(self._avg_pool(x), axis=[2, 3])


def squeezenet1_0(class_num: int = 1000) -> SqueezeNet:
    """SqueezeNet 1.0."""
    return SqueezeNet("1.0", class_num)


def squeezenet1_1(class_num: int = 1000) -> SqueezeNet:
    """SqueezeNet 1.1."""
    return SqueezeNet("1.1", class_num)
