"""Top-1/top-5 of a served model on a labelled image list, checked image by image against local prediction.

    python -m bench.eval --model models/SqueezeNet1_1 --images DIR --list val_list.txt \\
        --via local|http|grpc|brpc [--url ...] [--endpoint host:port]
    python -m bench.eval --model models/SqueezeNet1_1 --images DIR [--list val_list.txt] --precision int8


`val_list.txt` is PaddleClas's format: `relative/path label` per line. http and grpc go to the
pipeline (which must answer top-5: set `topk: 5` on its op); brpc goes to the model server.
`--precision int8` compares the INT8 twin with the FP32 ONNX twin image by image (every image under DIR when no
list is given) and exits 1 when their top-1 agreement is below --min-agreement.
"""

import argparse
import ast
import base64
import json
import sys
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.int8 import DEFAULT_MIN_AGREEMENT, IMAGE_SUFFIXES, INT8_FILE, agreement
from export.onnx_export import ONNX_FILE
from serving.classify import Prediction, local_predictor, top_k
from serving.model_card import display_name, load_card
from serving.model_config import CLIENT_CONF

PROB_TOLERANCE = 1e-4


@dataclass
class Tally:
    """Running counts for the metric table and the local-vs-served check."""

    images: int = 0
    top1: int = 0
    top5: int = 0
    mismatches: list[str] = field(default_factory=list)


def read_list(path: Path) -> list[tuple[str, int]]:
    """PaddleClas's val_list.txt: `relative/path label` per line."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            name, _, label = line.rpartition(" ")
            if not name or not label.strip().isdigit():
                raise ValueError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
            entries.append((name.strip(), int(label)))
    return entries


def pipeline_answer(keys: list[str], values: list[str]) -> Prediction:
    """The pipeline's top-k fields (op setting `topk: 5`) for one image."""
    result = dict(zip(keys, values, strict=True))
    if "topk_label" not in result:
        raise SystemExit("error: the pipeline answers top-1 only; set `topk: 5` on its op in config.yml")
    return ast.literal_eval(result["topk_label"])[0], ast.literal_eval(result["topk_prob"])[0]


def http_predictor(url: str) -> Callable[[bytes], Prediction]:
    """The pipeline's RESTful API."""
    def predict(data: bytes) -> Prediction:
        body = json.dumps({"key": ["image"], "value": [base64.b64encode(data).decode()]}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as answer:
            reply = json.loads(answer.read())
        if reply["err_no"] != 0:
            raise RuntimeError(f"err_no {reply['err_no']}: {reply['err_msg']}")
        return pipeline_answer(reply["key"], reply["value"])

    return predict


def grpc_predictor(endpoint: str) -> Callable[[bytes], Prediction]:
    """The pipeline's gRPC PipelineService."""
    from clients import PipelineClient

    client = PipelineClient()
    client.connect([endpoint])

    def predict(data: bytes) -> Prediction:
        reply = client.predict({"image": base64.b64encode(data).decode()})
        if reply.err_no != 0:
            raise RuntimeError(f"err_no {reply.err_no}: {reply.err_msg}")
        return pipeline_answer(list(reply.key), list(reply.value))

    return predict


def brpc_predictor(endpoint: str, model_root: Path) -> Callable[[bytes], Prediction]:
    """The model server's GeneralModelService: the full probability vector comes back."""
    from clients.brpc_client import Client

    labels = load_card(model_root / "serving_server").labels
    client = Client()
    client.load_client_config(model_root / "serving_client" / CLIENT_CONF)
    client.connect([endpoint])
    return lambda data: top_k(client.predict(feed={"x": data}, fetch=["prediction"])["prediction"][0], labels)


def same(local: Prediction, served: Prediction) -> bool:
    """Same top-1 label and top-1 probability within tolerance (rounding of the wire format aside)."""
    return local[0][0] == served[0][0] and abs(local[1][0] - served[1][0]) <= PROB_TOLERANCE


def evaluate(entries: list[tuple[str, int]], images: Path, labels: list[str], local: Callable[[bytes], Prediction],
             served: Callable[[bytes], Prediction] | None) -> Tally:
    """Score every image; compare the served answer with the local one when serving."""
    tally = Tally()
    for name, label in tqdm(entries, desc="evaluating", unit="img", file=sys.stderr):
        data = (images / name).read_bytes()
        expected = local(data)
        answer = expected if served is None else served(data)
        if served is not None and not same(expected, answer):
            tally.mismatches.append(f"{name}: local {expected[0][0]} {expected[1][0]:.5f}, "
                                    f"served {answer[0][0]} {answer[1][0]:.5f}")
        truth = display_name(labels[label])
        tally.images += 1
        tally.top1 += answer[0][0] == truth
        tally.top5 += truth in answer[0]
    return tally


def table(model: str, tally: Tally) -> str:
    """The seed's metric-table layout."""
    top1, top5 = tally.top1 / max(tally.images, 1), tally.top5 / max(tally.images, 1)
    return f"| Model | Top1 | Top5 |\n|---|---|---|\n| {model} | {top1:.3f} | {top5:.3f} |"


def unlabelled(images: Path) -> list[tuple[str, None]]:
    """Every image under `images`, sorted, when there is no list: agreement needs no labels."""
    return [(path.relative_to(images).as_posix(), None) for path in sorted(images.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES]


def compare_int8(model_root: Path, images: Path, entries: list[tuple[str, int | None]]) -> tuple[str, list[str], float]:
    """INT8 against FP32 (both ONNX Runtime): the metric table, the images whose top-1 differs, the agreement."""
    import onnxruntime

    server = model_root / "serving_server"
    card = load_card(server)
    sessions = {name: onnxruntime.InferenceSession(str(server / file), providers=["CPUExecutionProvider"])
                for name, file in (("FP32", ONNX_FILE), ("INT8", INT8_FILE))}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for name, _ in tqdm(entries, desc="fp32 vs int8", unit="img", file=sys.stderr):
        batch = card.transforms((images / name).read_bytes())[None]
        for precision, session in sessions.items():
            probs[precision].append(session.run(None, {session.get_inputs()[0].name: batch})[0][0])
    fp32, int8 = np.stack(probs["FP32"]), np.stack(probs["INT8"])
    figures = agreement(fp32, int8)
    labels = [label for _, label in entries]
    lines = [] if None in labels else ["| Model | precision | Top1 | Top5 |", "|---|---|---|---|"]
    for precision, rows in () if None in labels else (("FP32", fp32), ("INT8", int8)):
        ranked = np.argsort(-rows, axis=-1)[:, :5]
        top1 = np.mean(ranked[:, 0] == labels)
        top5 = np.mean([label in row for label, row in zip(labels, ranked, strict=True)])
        lines.append(f"| {card.model} | {precision} | {top1:.3f} | {top5:.3f} |")
    lines.append(f"{figures['count']} images: INT8 top-1 agrees with FP32 on {figures['top1_agreement']:.3f}, "
                 f"top-5 overlap {figures['top5_overlap']:.3f}, |prob diff| max {figures['max_abs_diff']:.4f} "
                 f"mean {figures['mean_abs_diff']:.6f}")
    differ = [f"{name}: FP32 {display_name(card.labels[a.argmax()])} {a.max():.5f}, "
              f"INT8 {display_name(card.labels[b.argmax()])} {b.max():.5f}"
              for (name, _), a, b in zip(entries, fp32, int8, strict=True) if a.argmax() != b.argmax()]
    return "\n".join(lines), differ, figures["top1_agreement"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Where the images are, and which path to evaluate."""
    parser = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model folder (holds serving_server/)")
    parser.add_argument("--images", type=Path, required=True, help="image root the list is relative to")
    parser.add_argument("--list", type=Path, help="val_list.txt: 'relative/path label' per line (optional with int8)")
    parser.add_argument("--via", choices=("local", "http", "grpc", "brpc"), default="local")
    parser.add_argument("--url", default="http://127.0.0.1:18080/imagenet/prediction", help="pipeline REST URL")
    parser.add_argument("--endpoint", help="host:port (default 127.0.0.1:9993 for grpc, 127.0.0.1:9292 for brpc)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="int8: compare the exported INT8 twin with FP32, image by image (local only)")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        help="int8: the top-1 agreement with FP32 below which the exit status is 1")
    args = parser.parse_args(argv)
    if args.list is None and args.precision == "fp32":
        parser.error("--list is required unless --precision int8")
    if args.precision == "int8" and args.via != "local":
        parser.error("--precision int8 compares local models; leave --via at local")
    return args


def main(argv: list[str] | None = None) -> int:
    """Print the metric table and every local/served mismatch; exit 1 if there is any."""
    warnings.filterwarnings("ignore", message="No ccache found")
    args = parse_args(argv)
    if args.precision == "int8":
        entries = read_list(args.list) if args.list else unlabelled(args.images)
        metrics, differ, top1_agreement = compare_int8(args.model, args.images, entries)
        print(metrics)
        for line in differ:
            print(f"  top-1 differs: {line}")
        return 1 if top1_agreement < args.min_agreement else 0
    local = local_predictor(args.model)
    served = {"local": lambda: None, "http": lambda: http_predictor(args.url),
              "grpc": lambda: grpc_predictor(args.endpoint or "127.0.0.1:9993"),
              "brpc": lambda: brpc_predictor(args.endpoint or "127.0.0.1:9292", args.model)}[args.via]()
    card = load_card(args.model / "serving_server")
    tally = evaluate(read_list(args.list), args.images, card.labels, local, served)
    print(table(card.model, tally))
    print(f"{tally.images} images via {args.via}; {len(tally.mismatches)} differ from local prediction")
    for line in tally.mismatches:
        print(f"  mismatch: {line}")
    return 1 if tally.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
