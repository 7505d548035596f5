"""`make serve`'s model step: export the default model once (with its ONNX twin), from the best weights to be had.

    python -m export.default_model --model SqueezeNet1_1 --out models/SqueezeNet1_1 [--weights FILE]

Weights, in order: --weights if given; PaddleClas's published checkpoint if it can be downloaded
within --timeout seconds; otherwise seeded random weights, with a loud warning (also stamped in
the model card, and logged by the service at start).
"""

import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")

from export.__main__ import main as export_main  # noqa: E402
from export.card import CARD_FILE  # noqa: E402

# PaddleClas's published dygraph checkpoints (its model list links these files).
PRETRAINED_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{model}_pretrained.pdparams"
BANNER = "=" * 78


def download(model: str, timeout_s: float, folder: Path) -> Path | None:
    """The published checkpoint in `folder`, or None when it cannot be fetched in time."""
    url = PRETRAINED_URL.format(model=model)
    target = folder / f"{model}_pretrained.pdparams"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer, tempfile.NamedTemporaryFile(
                dir=folder, delete=False) as partial:
            while chunk := answer.read(1 << 20):
                partial.write(chunk)
        os.replace(partial.name, target)
    except (OSError, urllib.error.URLError) as exc:
        print(f"could not download {url}: {exc}", file=sys.stderr)
        return None
    return target


def main(argv: list[str] | None = None) -> int:
    """Export unless `--out` already holds an exported model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SqueezeNet1_1")
    parser.add_argument("--out", type=Path, default=Path("models/SqueezeNet1_1"))
    parser.add_argument("--weights", type=Path, help="a .pdparams checkpoint to use")
    parser.add_argument("--timeout", type=float, default=20.0, help="download timeout, seconds")
    args = parser.parse_args(argv)
    if (args.out / CARD_FILE).is_file():
        print(f"{args.out} already holds an exported model; delete it to export again")
        return 0
    base = ["--model", args.model, "--out", str(args.out), "--onnx"]
    if args.weights is not None:
        return export_main([*base, "--weights", str(args.weights)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as folder:
        weights = download(args.model, args.timeout, Path(folder))
        if weights is not None:
            return export_main([*base, "--weights", str(weights)])
    print(f"{BANNER}\nWARNING: no weights for {args.model}: exporting RANDOM weights (seed 0).\n"
          f"The service will run, but its predictions are meaningless. Pass WEIGHTS=file.pdparams\n"
          f"(make serve WEIGHTS=...) with PaddleClas's {args.model}_pretrained.pdparams.\n{BANNER}", file=sys.stderr)
    return export_main([*base, "--random-init", "0"])


if __name__ == "__main__":
    sys.exit(main())
