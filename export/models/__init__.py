"""The model zoo: the five PaddleClas classifiers, their input sizes and eval transforms."""

from collections.abc import Callable
from dataclasses import dataclass

from paddle import nn

from .alexnet import AlexNet
from .darknet import DarkNet53
from .senet import SENet154_vd
from .squeezenet import squeezenet1_0, squeezenet1_1

# PaddleClas's NormalizeImage settings, shared by all five configs.
SCALE = 1.0 / 255.0
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What the exporter needs to know of one architecture.

    `residual_branch_norm` names (by suffix) the BatchNorm closing each residual branch,
    which random-init calibration damps.
    """

    name: str
    builder: Callable[[int], nn.Layer]
    resize_short: int
    crop_size: int
    published_params_m: float
    published_flops_g: float
    residual_branch_norm: str = ""

    def build(self, num_classes: int) -> nn.Layer:
        """A fresh network in eval mode."""
        network = self.builder(num_classes)
        network.eval()
        return network

    def preprocessing(self) -> dict:
        """PaddleClas's eval transforms for this model, as written into the model card."""
        return {
            "decode": {"backend": "cv2", "to_rgb": True},
            "resize_short": {"size": self.resize_short, "interpolation": "INTER_LINEAR"},
            "center_crop": {"size": self.crop_size},
            "normalize": {"scale": SCALE, "mean": list(MEAN), "std": list(STD), "order": "hwc"},
            "to_chw": True,
            "channel_order": "RGB",
        }


# Published params (M) and FLOPs (G) are PaddleClas's model-table figures.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("AlexNet", AlexNet, 256, 224, 61.090, 1.370),
        ModelSpec("SqueezeNet1_0", squeezenet1_0, 256, 224, 1.240, 1.550),
        ModelSpec("SqueezeNet1_1", squeezenet1_1, 256, 224, 1.230, 0.690),
        ModelSpec("DarkNet53", DarkNet53, 292, 256, 41.600, 18.580, "._conv2._bn"),
        ModelSpec("SENet154_vd", SENet154_vd, 256, 224, 114.290, 45.830, ".conv2._batch_norm"),
    )
}


class UnknownModelError(ValueError):
    """The requested architecture is not in the zoo."""


def get_spec(name: str) -> ModelSpec:
    """Look a model up by its PaddleClas name."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None
