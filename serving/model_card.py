"""The exporter's model card and label file, as the serving side reads them."""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from serving.errors import InitError
from serving.files import inside
from serving.preprocess import Transforms

CARD_FILE = "model_card.yaml"


@dataclass(frozen=True)
class ModelCard:
    """What a classification op needs: the model's transforms and class names."""

    model: str
    transforms: Transforms
    labels: list[str]
    weights: dict
    int8: dict  # `python -m export --int8`: calibration set, held-out agreement with FP32, method; empty without

    @cached_property
    def display_labels(self) -> list[str]:
        """The names PaddleClas's serving examples answer with: commas removed (built once: every answer reads it,
        the top-k ones k times, and 1000 replaces a request showed in the serving profile)."""
        return [display_name(label) for label in self.labels]

    @property
    def random_weights(self) -> bool:
        """True for `--random-init` exports, whose predictions mean nothing."""
        return self.weights.get("source") == "random-init"


def label_name(line: str) -> str:
    """PaddleClas's label lines are '<id> <name>'; plain names are accepted too."""
    head, _, rest = line.strip().partition(" ")
    return rest if head.isdigit() and rest else line.strip()


def display_name(label: str) -> str:
    """PaddleClas's serving examples strip commas from class names ("tench, Tinca tinca" -> "tench Tinca tinca")."""
    return label.replace(",", "")


def load_card(server_dir: str | Path) -> ModelCard:
    """Read `model_card.yaml` and its label file from beside the `serving_server` folder."""
    root = Path(server_dir).parent
    try:
        card = yaml.safe_load((root / CARD_FILE).read_text(encoding="utf-8"))
        labels_path = inside(root, card["labels"])
        if labels_path is None:
            raise InitError(f"the model card's labels file {card['labels']!r} is outside the model folder {root}")
        labels_text = labels_path.read_text(encoding="utf-8")
        transforms = Transforms.from_card(card["preprocessing"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise InitError(f"cannot read the model card in {root} ({exc}); "
                        "re-export the model with python -m export") from None
    labels = [label_name(line) for line in labels_text.splitlines() if line.strip()]
    return ModelCard(model=card.get("model", "?"), transforms=transforms, labels=labels,
                     weights=card.get("weights") or {}, int8=card.get("int8") or {})
