"""Serve the classification pipeline on a Ray cluster until SIGTERM or Ctrl-C, then shut Serve down.

    python -m deploy.rayserve config.yml [--address auto] [--name imagenet] [--model_config DIR]
                              [--http_port N] [--grpc_port N]
"""

import argparse
import signal
import sys
import threading
from pathlib import Path

import ray
from ray import serve

from deploy.rayserve.app import deploy, read
from pipelines.web_service import ImageService
from serving.errors import ConfigError
from serving.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The overrides a deployment most often needs, without editing config.yml."""
    parser = argparse.ArgumentParser(prog="python -m deploy.rayserve", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config.yml path (its ray_serve section sets replicas, autoscaling, ports)")
    parser.add_argument("--address", help="Ray cluster to join (e.g. auto or HOST:6379); default: RAY_ADDRESS, "
                                          "a cluster started on this machine, else a new local one")
    parser.add_argument("--name", default="imagenet", help="service name: the REST path is /{name}/prediction")
    parser.add_argument("--model_config", help="override every op's model_config (same path on every node)")
    parser.add_argument("--http_port", type=int, help="override ray_serve.http_port")
    parser.add_argument("--grpc_port", type=int, help="override ray_serve.grpc_port")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Validate config.yml before joining Ray (one error line, exit 2), deploy, serve until a signal."""
    args = parse_args(argv)
    setup_logging()
    model_config = str(Path(args.model_config).resolve()) if args.model_config else None
    try:
        config, source = read(args.config, {"model_config": model_config, "http_port": args.http_port,
                                            "grpc_port": args.grpc_port})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ray.init(address=args.address)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose own SIGTERM handler aborts the process
        signal.signal(signum, lambda *_: stopped.set())
    try:
        deploy(config, source, ImageService, args.name)
        ray_conf = config.ray_serve
        print(f"serving {args.name!r} on Ray Serve: POST http://{ray_conf.http_host}:{ray_conf.http_port}/"
              f"{args.name}/prediction, gRPC PipelineService on port {ray_conf.grpc_port}", flush=True)
        stopped.wait()
        print("stopping: Serve drains its replicas and shuts down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
