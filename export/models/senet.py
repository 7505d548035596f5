"""SENet154_vd (SE-ResNeXt-152, 64x4d, "vd" stem and shortcuts) with PaddleClas's layer names."""

import paddle
from paddle import nn
from paddle.nn import functional as F

_DEPTH = [3, 8, 36, 3]
_IN_CHANNELS = [128, 256, 512, 1024]
_WIDTH = [256, 512, 1024, 2048]
_CARDINALITY = 64
_REDUCTION = 16


class ConvBNLayer(nn.Layer):
    """Optional 2x2 average pool ("vd" shortcut), conv without bias, BatchNorm with optional act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        vd_pool: bool = False,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self._vd_pool = nn.AvgPool2D(kernel_size=2, stride=2, padding=0, ceil_mode=True) if vd_pool else None
        self._conv = nn.Conv2D(
            in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias_attr=False
        )
        self._batch_norm = nn.BatchNorm(out_channels, act=act)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self._vd_pool is not None:
            x = self._vd_pool(x)
        return self._batch_norm(self._conv(x))


class SELayer(nn.Layer):
    """Squeeze-and-excitation: channel gates from a pooled C -> C/16 -> C bottleneck."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self._pool = nn.AdaptiveAvgPool2D(1)
        self.squeeze = nn.Linear(channels, channels // _REDUCTION)
        self.excitation = nn.Linear(channels // _REDUCTION, channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        gate = paddle.squeeze(self._pool(x), axis=[2, 3])
        gate = F.sigmoid(self.excitation(F.relu(self.squeeze(gate))))
        return x * paddle.unsqueeze(gate, axis=[2, 3])


class BottleneckBlock(nn.Layer):
    """1x1, grouped 3x3 (carries the stride), 1x1, SE, plus identity or projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, first_in_stage: bool, first_stage: bool) -> None:
        super().__init__()
        self.conv0 = ConvBNLayer(in_channels, width, 1, act="relu")
        self.conv1 = ConvBNLayer(width, width, 3, stride=stride, groups=_CARDINALITY, act="relu")
        self.conv2 = ConvBNLayer(width, width, 1)
        self.scale = SELayer(width)
        self.short = ConvBNLayer(in_channels, width, 1, vd_pool=not first_stage) if first_in_stage else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.scale(self.conv2(self.conv1(self.conv0(x))))
        short = x if self.short is None else self.short(x)
        return F.relu(paddle.add(short, y))


class SENet154_vd(nn.Layer):  # noqa: N801 - PaddleClas's model name
    """SENet154_vd: three-conv stem, 3/8/36/3 SE bottlenecks, average pool, fc."""

    def __init__(self, class_num: int = 1000) -> None:
        super().__init__()
        self.conv1_1 = ConvBNLayer(3, 64, 3, stride=2, act="relu")
        self.conv1_2 = ConvBNLayer(64, 64, 3, act="relu")
        self.conv1_3 = ConvBNLayer(64, 128, 3, act="relu")
        self._max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self._blocks: list[BottleneckBlock] = []
        for stage, depth in enumerate(_DEPTH):
            for i in range(depth):
                block = BottleneckBlock(
                    in_channels=_IN_CHANNELS[stage] if i == 0 else _WIDTH[stage],
                    width=_WIDTH[stage],
                    stride=2 if i == 0 and stage != 0 else 1,
                    first_in_stage=i == 0,
                    first_stage=stage == 0,
                )
                self._blocks.append(self.add_sublayer(f"bb_{stage}_{i}", block))
        self._avg_pool = nn.AdaptiveAvgPool2D(1)
        self.out = nn.Linear(_WIDTH[-1], class_num)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._max_pool(self.conv1_3(self.conv1_2(self.conv1_1(x))))
        for block in self._blocks:
            x = block(x)
        return self.out(paddle.squeeze(self._avg_pool(x), axis=[2, 3]))
