"""Run a Paddle Serving service or client script unchanged on the kit.

    python -m serving.compat SCRIPT [ARGS ...]

An import hook, installed only while this runner runs the script, answers Paddle Serving's module names
(`paddle_serving_server.web_service`, `.pipeline`, `paddle_serving_app.reader`, `paddle_serving_client`,
`paddle_serving_client.utils`) with modules holding the kit's objects, from the table `serving.migrate`
rewrites by; nothing is installed under Paddle Serving's names. A name the kit has no equivalent for fails
the import with its line. NumPy 2 removals (binary `np.fromstring`) are reported with their line and the
`migrate` command that rewrites them: at start for every such call, and again when one fails.
"""

import argparse
import importlib
import importlib.abc
import importlib.machinery
import runpy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np

from serving.errors import numpy2_hint, user_frame
from serving.migrate import FROMSTRING, MODULES, NAMES


def _exports(module_name: str) -> dict[str, object]:
    """The kit's objects a Paddle Serving module name stands for."""
    exported: dict[str, object] = {}
    if module_name in MODULES:
        kit_name, names = MODULES[module_name]
        kit_module = importlib.import_module(kit_name)
        wanted = names if names is not None else getattr(kit_module, "__all__", ())
        exported |= {name: getattr(kit_module, name) for name in wanted}
    for (paddle_module, name), kit_name in NAMES.items():
        if paddle_module == module_name:
            exported[name] = getattr(importlib.import_module(kit_name), name)
    return exported


def _package_names() -> set[str]:
    """Every mapped module and each package above it (paddle_serving_server, paddle_serving_app, ...)."""
    names = set(MODULES) | {module for module, _ in NAMES}
    return names | {name.rsplit(".", 1)[0] for name in names if "." in name}


class PaddleServingNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the stand-in modules for Paddle Serving's names."""

    def __init__(self) -> None:
        self.names = _package_names()

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        """A spec for a mapped name (each one a package, so its submodules resolve too); None for the rest."""
        if fullname not in self.names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def exec_module(self, module: ModuleType) -> None:
        """Fill the module with the kit's objects; `__all__` lists them for `import *`."""
        exported = _exports(module.__name__)
        module.__dict__.update(exported)
        module.__all__ = sorted(exported)


@contextmanager
def paddle_serving_names() -> Iterator[None]:
    """The hook, active only inside the block; the stand-in modules leave sys.modules with it."""
    finder = PaddleServingNames()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in sys.modules if name in finder.names]:
            del sys.modules[name]


def fromstring_lines(source: str) -> list[int]:
    """Lines that call binary np.fromstring (NumPy 2 removed it)."""
    return [number for number, line in enumerate(source.splitlines(), 1) if FROMSTRING.search(line)]


def _report_failure(script: Path, exc: BaseException) -> bool:
    """Name the script's line and the fix for a NumPy 2 removal or an unmapped import; False for anything else."""
    frame = user_frame(exc)
    where = f"{frame.filename}:{frame.lineno}" if frame else str(script)
    hint = numpy2_hint(exc, str(script))
    if hint:
        print(f"{where}: {exc}\n{hint}", file=sys.stderr)
        return True
    if isinstance(exc, ImportError) and (exc.name or "").startswith("paddle_serving"):
        print(f"{where}: {exc}; the kit maps only what `python -m serving.migrate` lists (see docs/porting.md)",
              file=sys.stderr)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run SCRIPT as __main__ with ARGS, its folder first on sys.path, under the import hook."""
    parser = argparse.ArgumentParser(prog="python -m serving.compat", description=__doc__.split("\n\n")[0])
    parser.add_argument("script", type=Path, help="a Paddle Serving web_service.py, client or benchmark script")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    args = parser.parse_args(argv)
    script: Path = args.script
    if not script.is_file():
        parser.error(f"{script}: no such script")
    if int(np.__version__.split(".")[0]) >= 2:
        for line in fromstring_lines(script.read_text(encoding="utf-8")):
            print(f"{script}:{line}: binary np.fromstring fails on NumPy 2; `python -m serving.migrate {script} "
                  "--write` rewrites it to np.frombuffer", file=sys.stderr)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        with paddle_serving_names():
            runpy.run_path(str(script), run_name="__main__")
    except Exception as exc:
        if not _report_failure(script, exc):
            raise
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


if __name__ == "__main__":
    sys.exit(main())
