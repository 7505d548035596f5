"""The files of an exported inference model that the runtime and the exporter both look for."""

from pathlib import Path

from serving.errors import InitError
from serving.files import inside

PROGRAM_PREFIX = "inference"


class ProgramNotFoundError(InitError):
    """A model folder without a usable program + params pair."""


def find_program(directory: Path) -> tuple[Path, Path]:
    """The (program, params) pair of an inference-model folder: Paddle 3 `.json` or legacy `.pdmodel`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProgramNotFoundError(f"inference model folder {directory} does not exist or is not a folder")
    candidates = sorted(directory.glob("*.json")) + sorted(directory.glob("*.pdmodel"))
    preferred = [path for path in candidates if path.stem == PROGRAM_PREFIX] + candidates
    for program in preferred:
        params = program.with_suffix(".pdiparams")
        if params.is_file() and all(inside(directory, path.name) for path in (program, params)):
            return program, params
    raise ProgramNotFoundError(
        f"{directory} holds no inference model: expected inference.json or inference.pdmodel "
        "beside inference.pdiparams"
    )
