"""The image-classification pipeline service, written against Paddle Serving's Op/WebService API.

    python pipelines/web_service.py [--config config.yml] [--http_port N] [--rpc_port N] [--model_config DIR]
    python pipelines/web_service.py stop [--pid_file FILE]     # like Paddle Serving's `serve stop`

(or `serving-kit serve ...` and `serving-kit stop` once installed). Without --config the service reads the
default config.yml with its relative paths taken from the working directory, so `models/SqueezeNet1_1` is the
one beside you; the pid file is `web_service.pid` there too, as Paddle Serving keeps its own in the working
directory.
"""

import argparse
import base64
import binascii
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from serving.errors import ConfigError, InputError, ServingError
from serving.logs import FORMATS, setup_logging
from serving.model_card import load_card
from serving.pipeline import Op, WebService
from serving.protocols.oip import Signature, TensorSpec

log = logging.getLogger("pipelines.imagenet")
# An installed package holds config.yml (setup.py copies the top-level file in at build time); a checkout has
# only the top-level file, one folder up.
_PACKAGED_CONFIG = Path(__file__).with_name("config.yml")
DEFAULT_CONFIG = _PACKAGED_CONFIG if _PACKAGED_CONFIG.is_file() else Path(__file__).resolve().parents[1] / "config.yml"
PID_FILE = "web_service.pid"


class ImagenetOp(Op):
    """Decode and preprocess every image of a request as one batch; answer PaddleClas's label/prob."""

    def init_op(self) -> None:
        """Read the model card: transforms, labels, weights provenance."""
        self.card = load_card(self.model_config)
        if self.card.random_weights:
            log.warning("model %s has RANDOM weights (seed %s): its predictions are meaningless",
                        self.card.model, self.card.weights.get("seed"))

    def preprocess(self, input_dicts: dict, data_id: int = 0, log_id: int = 0) -> tuple:
        """Every `image*` value (base64 of the file bytes) -> one float32 NCHW batch."""
        ((_, input_dict),) = input_dicts.items()
        keys = [key for key in input_dict if key.startswith("image")]
        if not keys:
            raise InputError(f"request has no image: send key 'image' (or image_0, image_1, ...); got keys "
                             f"{sorted(input_dict)}")
        self.check_image_count(len(keys))
        images = [_b64decode(key, input_dict[key]) for key in keys]
        return {"x": self.card.transforms.batch(images, self.limits.max_image_pixels,
                                                self.limits.max_request_pixels)}, False, None, ""

    def postprocess(self, input_dicts: dict, fetch_dict: dict, data_id: int = 0, log_id: int = 0) -> tuple:
        """PaddleClas's response: str() of the per-image top-1 labels and probabilities (plus top-k if set)."""
        probabilities = fetch_dict["prediction"]
        labels = [self.card.display_labels[int(row.argmax())] for row in probabilities]
        result = {"label": str(labels), "prob": str([float(row.max()) for row in probabilities])}
        if self.config.topk > 1:
            top = [np.argsort(row)[::-1][: self.config.topk] for row in probabilities]
            result["topk_label"] = str([[self.card.display_labels[i] for i in idx] for idx in top])
            result["topk_prob"] = str([[round(float(row[i]), 5) for i in idx] for row, idx in zip(probabilities, top,
                                                                                                   strict=True)])
        return result, None, ""


def _b64decode(key: str, value: object) -> bytes:
    """Strict base64 (the classic clients send base64 text of the file bytes)."""
    if not isinstance(value, str) or not value:
        raise InputError(f"value of {key!r} is empty; send the base64 of the image file")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"value of {key!r} is not valid base64 ({len(value)} characters)") from None


class ImageService(WebService):
    """One op on top of the request: read -> imagenet."""

    def get_pipeline_response(self, read_op: Op) -> Op:
        """The classification op, named `imagenet` as in config.yml."""
        return ImagenetOp(name="imagenet", input_ops=[read_op])

    def get_tensor_signature(self) -> Signature:
        """Over the Open Inference Protocol: image files in; label and prob per image out, with top-k if set."""
        op = next(op for op in self.dag.ops if isinstance(op, ImagenetOp))
        outputs = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("prob", "FP32", (-1,))]
        if op.config.topk > 1:
            k = min(op.config.topk, len(op.card.labels))
            outputs += [TensorSpec("topk_label", "BYTES", (-1, k)), TensorSpec("topk_prob", "FP32", (-1, k))]
        return Signature((TensorSpec("image", "BYTES", (-1,)),), tuple(outputs))


def _quiet_paddle_import() -> None:
    """Paddle warns about a missing ccache (a compiler cache for C++ extensions) at import: irrelevant here."""
    warnings.filterwarnings("ignore", message="No ccache found")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The overrides a deployment most often needs, without editing config.yml."""
    parser = argparse.ArgumentParser(description="Image classification pipeline service (Paddle Serving API).")
    parser.add_argument("--config", help="config.yml path (default: the kit's config.yml, its relative paths taken "
                                          "from the working directory)")
    parser.add_argument("--http_port", type=int, help="override http_port")
    parser.add_argument("--rpc_port", type=int, help="override rpc_port")
    parser.add_argument("--model_config", help="override op.imagenet.local_service_conf.model_config")
    parser.add_argument("--log_format", choices=FORMATS, help="text (default) or json lines; or $SERVING_LOG_FORMAT")
    parser.add_argument("--name", default="imagenet", help="service name: the REST path is /{name}/prediction")
    parser.add_argument("--pid_file", type=Path, default=Path.cwd() / PID_FILE,
                        help=f"where the running service's pid is kept (for `stop`; default ./{PID_FILE})")
    parser.add_argument("command", nargs="?", choices=("run", "stop"), default="run",
                        help="run (default) or stop the service running under --pid_file")
    return parser.parse_args(argv)


def _alive(pid: int) -> bool:
    """Running, and not an exited zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def stop(pid_file: Path, timeout_s: float = 60.0) -> int:
    """SIGTERM the service whose pid is in `pid_file` and wait until it has drained and exited."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        print(f"error: no running service (no readable pid file at {pid_file})", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        print(f"process {pid} was not running; removed the stale {pid_file}")
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"stopped service {pid}")
            return 0
        time.sleep(0.1)
    print(f"error: service {pid} still running after {timeout_s:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Load config, start, serve until Ctrl-C; config errors are one line and exit code 2."""
    _quiet_paddle_import()
    args = parse_args(argv)
    setup_logging(args.log_format)
    if args.command == "stop":
        return stop(args.pid_file)
    model_config = str(Path(args.model_config).resolve()) if args.model_config else None
    service = ImageService(name=args.name)
    overrides = {"http_port": args.http_port, "rpc_port": args.rpc_port, "model_config": model_config}
    try:
        if args.config is None:  # a dict's relative paths resolve against the working directory
            service.prepare_pipeline_config(yml_dict=yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")),
                                            overrides=overrides)
        else:
            service.prepare_pipeline_config(args.config, overrides=overrides)
        service.run_service(pid_file=args.pid_file)
    except (ConfigError, ServingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
