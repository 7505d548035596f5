"""gRPC client: `python clients/grpc_client.py IMG [IMG ...] [--endpoint HOST:9993] [--ca FILE] [--token T]`."""

import argparse
import base64
import sys
from pathlib import Path

import grpc

from clients.options import add_security_options
from clients.pipeline_client import PipelineClient

DEFAULT_ENDPOINT = "127.0.0.1:9993"


def main(argv: list[str] | None = None) -> int:
    """Print the service's answer; exit 1 when err_no is not 0."""
    parser = argparse.ArgumentParser(description="Classify images through the pipeline's gRPC PipelineService.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--endpoint", action="append",
                        help=f"host:port (a DNS name or IPv4) or [IPv6]:port, repeatable (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--log-id", type=int, default=0, help="log id sent with the request")
    add_security_options(parser)
    args = parser.parse_args(argv)
    keys = ["image"] if len(args.images) == 1 else [f"image_{i}" for i in range(len(args.images))]
    feed = {key: base64.b64encode(path.read_bytes()).decode("ascii") for key, path in zip(keys, args.images,
                                                                                           strict=True)}
    try:
        with PipelineClient() as client:
            client.connect(args.endpoint or [DEFAULT_ENDPOINT], ca_file=args.ca, token=args.token)
            answer = client.predict(feed_dict=feed, fetch=["label", "prob"], log_id=args.log_id)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if answer.err_no != 0:
        print(f"error {answer.err_no}: {answer.err_msg}", file=sys.stderr)
        return 1
    for key, value in zip(answer.key, answer.value, strict=True):
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
