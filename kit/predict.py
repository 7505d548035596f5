"""`serving-kit predict IMG...`: classify image files in process, PaddleClas's quick experience without a server.

Prints what the pipeline answers for each image (its top-1 label and probability), through the same model card
preprocessing and engine choice (`auto`: ONNX Runtime when the export has inference.onnx, else Paddle Inference).
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

from serving.classify import local_predictor
from serving.errors import InputError, ServingError
from serving.model_card import load_card
from serving.model_config import ModelConfigError

DEFAULT_MODEL = Path("models/SqueezeNet1_1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The images, and the exported model folder to classify them with."""
    parser = argparse.ArgumentParser(prog="serving-kit predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, ...)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"exported model folder, the one holding serving_server/ (default: {DEFAULT_MODEL})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every image was classified, 1 when one was unreadable, 2 when the model is unusable."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    args = parse_args(argv)
    try:
        card = load_card(args.model / "serving_server")
        predict = local_predictor(args.model)
    except (ServingError, ModelConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if card.random_weights:
        print(f"warning: {args.model} holds RANDOM weights (seed {card.weights.get('seed')}): the labels are "
              "meaningless", file=sys.stderr)
    failed = 0
    for path in args.images:
        try:
            labels, probs = predict(path.read_bytes())
        except (InputError, OSError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"image: {path}")
        print(f"label: {labels[:1]}")
        print(f"prob: {probs[:1]}")
    return 1 if failed else 0
