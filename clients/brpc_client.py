"""Paddle Serving's brpc `Client` over baidu_std, plus a CLI:

    python clients/brpc_client.py --config serving_client/serving_client_conf.prototxt IMG [IMG ...]
    python clients/brpc_client.py --config ... --bench --concurrency 16 --seconds 10 IMG
    python clients/brpc_client.py --config ... --ca server.crt --token T IMG    # TLS, token auth
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from clients.options import add_security_options
from serving.errors import InputError
from serving.model_card import display_name, label_name
from serving.model_config import ModelConfigError
from serving.protocols.brpc_channel import BrpcError
from serving.protocols.brpc_model_client import COMPRESSIONS, DEFAULT_ENDPOINT, Client, PredictError

__all__ = ["BrpcError", "Client", "PredictError", "main"]


def read_labels(path: Path) -> list[str] | None:
    """Class names from PaddleClas's '<id> <name>' label file, commas removed as PaddleClas does; None if absent."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return [display_name(label_name(line)) for line in lines if line.strip()]


def classify(client: Client, images: list[Path], labels: list[str] | None, log_id: int) -> None:
    """Send every image file in one request (a STRING tensor of base64 texts) and print each top-1 class."""
    alias = client.get_feed_names()[0]
    answer = client.predict(feed={alias: [path.read_bytes() for path in images]}, fetch=["prediction"], batch=True,
                            log_id=log_id)
    for path, row in zip(images, answer["prediction"], strict=True):
        index = int(row.argmax())
        label = labels[index] if labels is not None and index < len(labels) else index
        print(f"image: {path}")
        print(f"label: {[label]}")
        print(f"prob: {[float(row[index])]}")


async def bench(client: Client, image: bytes, concurrency: int, seconds: float) -> tuple[list[float], list[str]]:
    """Keep `concurrency` requests in flight for `seconds`: (latencies of the answered ones in s, error texts)."""
    alias = client.get_feed_names()[0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while (start := time.perf_counter()) < deadline:
            try:
                await client.predict_async(feed={alias: image}, fetch=["prediction"], batch=True)
            except (BrpcError, PredictError) as exc:
                errors.append(str(exc))
                continue
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def report_bench(latencies: list[float], errors: list[str], seconds: float) -> None:
    """requests/s, p50/p99 latency in ms and the error count (with the first error's text)."""
    if latencies:
        p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
        print(f"{len(latencies) / seconds:.1f} requests/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, {len(errors)} errors")
    else:
        print(f"0 requests/s, {len(errors)} errors")
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI's options."""
    parser = argparse.ArgumentParser(description="Classify images through a model server's brpc (baidu_std) port.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--config", required=True, type=Path, help="serving_client_conf.prototxt")
    parser.add_argument("--endpoint", action="append",
                        help=f"host:port (a DNS name or IPv4) or [IPv6]:port, repeatable (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--timeout-ms", type=int, default=20000, help="per-request timeout")
    parser.add_argument("--compress", choices=sorted(COMPRESSIONS), default="none", help="request compression")
    parser.add_argument("--log-id", type=int, default=0, help="log id sent with the request")
    parser.add_argument("--bench", action="store_true", help="send the first image repeatedly and report throughput")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight with --bench")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of --bench")
    add_security_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 1 when the server answered an error, 2 when the inputs are unusable."""
    args = parse_args(argv)
    client = Client(timeout_ms=args.timeout_ms, compress=args.compress)
    try:
        client.load_client_config(args.config)
        client.connect(args.endpoint or [DEFAULT_ENDPOINT], ca_file=args.ca, token=args.token)
        if not args.bench:
            classify(client, args.images, read_labels(args.config.parent.parent / "labels.txt"), args.log_id)
            return 0
        latencies, errors = asyncio.run(bench(client, args.images[0].read_bytes(), args.concurrency, args.seconds))
        report_bench(latencies, errors, args.seconds)
        return 1 if errors else 0
    except (BrpcError, PredictError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (InputError, ModelConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
