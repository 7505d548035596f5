"""AlexNet with PaddleClas's layer names, so its pretrained .pdparams load unchanged."""

import paddle
from paddle import nn
from paddle.nn import functional as F


class ConvPoolLayer(nn.Layer):
    """Conv, optional ReLU, then a 3/2 max pool: PaddleClas's `ConvPoolLayer`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, relu: bool = True
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU() if relu else None
        self._conv = nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self._pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=0)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._conv(x)
        if self.relu is not None:
            x = self.relu(x)
        return self._pool(x)


class AlexNet(nn.Layer):
    """The 5-conv, 3-fc AlexNet (no LRN); needs a 224x224 input because fc6 is 9216 wide."""

    def __init__(self, class_num: int = 1000) -> None:
        super().__init__()
        self._conv1 = ConvPoolLayer(3, 64, 11, 4, 2)
        self._conv2 = ConvPoolLayer(64, 192, 5, 1, 2)
        self._conv3 = nn.Conv2D(192, 384, 3, stride=1, padding=1)
        self._conv4 = nn.Conv2D(384, 256, 3, stride=1, padding=1)
        self._conv5 = ConvPoolLayer(256, 256, 3, 1, 1)
        self._drop1 = nn.Dropout(p=0.5, mode="downscale_in_infer")
        self._fc6 = nn.Linear(256 * 6 * 6, 4096)
        self._drop2 = nn.Dropout(p=0.5, mode="downscale_in_infer")
        self._fc7 = nn.Linear(4096, 4096)
        self._fc8 = nn.Linear(4096, class_num)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self._conv2(self._conv1(x))
        x = F.relu(self._conv3(x))
        x = F.relu(self._conv4(x))
        x = paddle.flatten(self._conv5(x), start_axis=1, stop_axis=-1)
        x = F.relu(self._fc6(self._drop1(x)))
        x = F.relu(self._fc7(self._drop2(x)))
        return self._fc8(x)
