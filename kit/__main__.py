"""`serving-kit COMMAND [ARGS...]` (or `python -m kit`): the kit's tools behind one installed command.

Each command hands ARGS unchanged to that tool's own main(), so `serving-kit export --help` shows the exporter's
options; a tool's module is imported only when its command runs, so serving never loads the exporter's Paddle.
"""

import argparse
import importlib
import sys
from dataclasses import dataclass

DISTRIBUTION = "pipeline-serving-kit"
KIT_PACKAGES = {"bench", "clients", "export", "kit", "pipelines", "serving"}


@dataclass(frozen=True)
class Command:
    """Where a command's main(argv) lives, and the install extra that brings the libraries it needs, if any."""

    module: str
    summary: str
    extra: str | None = None
    prefix: tuple[str, ...] = ()  # put before the user's arguments


COMMANDS = {
    "export": Command("export.__main__", "export a PaddleClas classifier to a served model folder", "export"),
    "serve": Command("pipelines.web_service", "run the classification pipeline (REST, gRPC): --config FILE, or the "
                                              "default config with --model_config DIR"),
    "stop": Command("pipelines.web_service", "stop the pipeline whose web_service.pid is in this folder",
                    prefix=("stop",)),
    "model-server": Command("serving.model_server", "run the model server (brpc, HTTP, gRPC) on one model folder"),
    "predict": Command("kit.predict", "classify image files in process, no server: label and prob per image"),
    "bench": Command("bench.__main__", "benchmarks: docs/performance.md's tables", "bench"),
    "eval": Command("bench.eval", "top-1/top-5 on a labelled image list, in process or through a server", "bench"),
    "migrate": Command("serving.migrate", "rewrite a Paddle Serving script's imports to the kit's"),
    "compat": Command("serving.compat", "run a Paddle Serving service, client or benchmark script unchanged"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Only the command name: everything after it belongs to the command."""
    parser = argparse.ArgumentParser(
        prog="serving-kit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Paddle Serving-compatible serving for PaddleClas classifiers.",
        epilog="commands:\n" + "\n".join(f"  {name:<13} {command.summary}" for name, command in COMMANDS.items())
        + "\n\n`serving-kit COMMAND --help` lists a command's options.")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return parser.parse_args(argv)


def missing_extra(exc: ModuleNotFoundError, name: str, command: Command) -> bool:
    """Print which extra to install when a command's third-party library is absent; False for anything else."""
    missing = (exc.name or "").split(".")[0]
    if command.extra is None or not missing or missing in KIT_PACKAGES:
        return False
    print(f"error: serving-kit {name} needs {missing}, which is not installed: "
          f"pip install '{DISTRIBUTION}[{command.extra}]'", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    command = COMMANDS[args.command]
    try:
        return importlib.import_module(command.module).main([*command.prefix, *args.args])
    except ModuleNotFoundError as exc:
        if missing_extra(exc, args.command, command):
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
