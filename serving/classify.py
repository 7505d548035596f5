"""In-process classification of image bytes with an exported model: the services' preprocessing and engine choice,
without a server (`serving-kit predict`, and `bench.eval --via local` as the reference served answers must equal)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from serving.config import LocalServiceConf
from serving.model_card import display_name, load_card
from serving.model_config import SERVER_CONF, read_config

TOP_K = 5
# One prediction: the top-5 label names and their probabilities, best first.
Prediction = tuple[list[str], list[float]]


def local_predictor(model_root: Path) -> Callable[[bytes], Prediction]:
    """Load the model folder (holding serving_server/) once; the callable classifies one encoded image."""
    from serving.predictor import LocalPredictor, settings_from_conf

    server = Path(model_root) / "serving_server"
    card, model_config = load_card(server), read_config(server / SERVER_CONF)
    predictor = LocalPredictor(settings_from_conf(LocalServiceConf(model_config=str(server)), model_config),
                               model_config)

    def predict(data: bytes) -> Prediction:
        probs = predictor.predict({"x": card.transforms(data)[None]})["prediction"][0]
        return top_k(probs, card.labels)

    return predict


def top_k(probs: np.ndarray, labels: list[str]) -> Prediction:
    """PaddleClas's ranking (argsort, best first) with its comma-free label names."""
    order = np.argsort(probs)[::-1][:TOP_K]
    return [display_name(labels[i]) for i in order], [float(probs[i]) for i in order]
