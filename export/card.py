"""The model card: what a server and a reader need to know about an exported model."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paddle
import yaml

from export.models import ModelSpec
from serving.files import atomic_write_text

CARD_FILE = "model_card.yaml"
LABELS_FILE = "labels.txt"
TOP_K = 5


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from: a checkpoint, an inference model, or a random-init seed."""

    kind: str
    files: tuple[Path, ...] = ()
    seed: int | None = None

    def as_dict(self) -> dict:
        """The card's `weights` section; files are identified by sha256."""
        if self.kind == "random-init":
            warning = "random weights: predictions are meaningless"
            return {"source": "random-init", "seed": self.seed, "warning": warning}
        return {
            "source": self.kind,
            "files": [{"path": str(path.resolve()), "sha256": sha256_of(path)} for path in self.files],
        }


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so a 460 MB checkpoint does not sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CardFacts:
    """The measured facts that go beside the spec in the card."""

    num_classes: int
    params: int
    flops: int
    fetch_name: str
    parity_max_abs_diff: float
    provenance: Provenance
    onnx: bool = False


def build_card(spec: ModelSpec, facts: CardFacts) -> dict:
    """The card as a plain dict, in the order a reader wants it."""
    size = spec.crop_size
    return {
        "model": spec.name,
        "num_classes": facts.num_classes,
        "input": {"name": "x", "dtype": "float32", "shape": [3, size, size], "layout": "NCHW"},
        "output": {"name": facts.fetch_name, "alias": "prediction", "meaning": "softmax probabilities",
                   "shape": [facts.num_classes]},
        "preprocessing": spec.preprocessing(),
        "postprocessing": {"topk": TOP_K, "score_decimals": 5},
        "labels": LABELS_FILE,
        "engines": ["paddle", "onnxruntime"] if facts.onnx else ["paddle"],
        "params": facts.params,
        "flops": facts.flops,
        "published": {"params_m": spec.published_params_m, "flops_g": spec.published_flops_g},
        "weights": facts.provenance.as_dict(),
        "parity_max_abs_diff": float(facts.parity_max_abs_diff),
        "paddle_version": paddle.__version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_card(card: dict, directory: Path) -> None:
    """Write `model_card.yaml` atomically."""
    atomic_write_text(Path(directory) / CARD_FILE, yaml.safe_dump(card, sort_keys=False))
