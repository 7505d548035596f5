"""Rewrite a Paddle Serving script for the kit: its imports, and NumPy 2's removed binary `np.fromstring`.

    python -m serving.migrate SCRIPT [SCRIPT ...] [--write]

Prints a unified diff; only `--write` changes the file (keeping SCRIPT.bak). Imports with no kit
equivalent (OCR, NLP and video readers, detection post-processing) are reported with their line, and left
as they are. The same table tells `python -m serving.compat` which kit module answers each Paddle Serving name.
"""

import argparse
import ast
import difflib
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Paddle Serving module -> (kit module, the names it has; None: every name).
MODULES: dict[str, tuple[str, frozenset[str] | None]] = {
    "paddle_serving_server.web_service": ("serving.pipeline", frozenset({"WebService", "Op", "RequestOp",
                                                                         "ResponseOp"})),
    "paddle_serving_server.pipeline": ("serving.pipeline", frozenset({"Op", "RequestOp", "ResponseOp",
                                                                     "WebService"})),
    "paddle_serving_app.reader": ("serving.reader", frozenset({
        "Sequential", "String2Image", "Base64ToImage", "File2Image", "URL2Image", "Resize", "CenterCrop",
        "RGB2BGR", "BGR2RGB", "Transpose", "Div", "Normalize", "Lambda", "ResizeByFactor", "PadStride",
        "DetectionSequential", "DetectionFile2Image", "DetectionResize", "DetectionNormalize", "DetectionTranspose",
        "DetectionBGR2RGB", "DetectionDiv", "DetectionPadStride"})),
    "paddle_serving_client": ("clients.brpc_client", frozenset({"Client"})),
    "paddle_serving_client.utils": ("clients.benchmark", frozenset({"MultiThreadRunner", "benchmark_args",
                                                                    "show_latency"})),
}
# Names that live in another kit module than the rest of their Paddle Serving module.
NAMES: dict[tuple[str, str], str] = {("paddle_serving_server.pipeline", "PipelineClient"): "clients"}
# Binary np.fromstring(data, dtype): a call with no `sep` argument (NumPy 2 removed that mode).
FROMSTRING = re.compile(r"\b(np|numpy)\.fromstring\((?![^)]*\bsep\s*=)")


@dataclass
class Migration:
    """The rewritten text and what could not be mapped, by line."""

    text: str
    unmapped: list[str] = field(default_factory=list)


def migrate_text(source: str, name: str = "<script>") -> Migration:
    """Rewrite the imports the kit maps and binary np.fromstring; list the rest."""
    lines = source.splitlines(keepends=True)
    unmapped: list[str] = []
    for node in sorted(_serving_imports(ast.parse(source, name)), key=lambda item: -item.lineno):
        replacement = _rewrite(node, unmapped, name)
        if replacement is not None:
            indent = lines[node.lineno - 1][: node.col_offset]
            lines[node.lineno - 1 : node.end_lineno] = [indent + line + "\n" for line in replacement]
    text = FROMSTRING.sub(lambda match: f"{match.group(1)}.frombuffer(", "".join(lines))
    return Migration(text, sorted(unmapped, key=lambda line: int(line.split(":")[1])))


def _serving_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import of a paddle_serving_* module."""
    return [node for node in ast.walk(tree)
            if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("paddle_serving"))
            or (isinstance(node, ast.Import) and any(alias.name.startswith("paddle_serving") for alias in node.names))]


def _rewrite(node: ast.Import | ast.ImportFrom, unmapped: list[str], name: str) -> list[str] | None:
    """The kit's import lines for `node`, or None (with a report) when some name has no kit equivalent."""
    where = f"{name}:{node.lineno}"
    if isinstance(node, ast.Import):
        unmapped.append(f"{where}: `import {', '.join(alias.name for alias in node.names)}`: import the names "
                        "you use from the kit's modules instead (serving.pipeline, serving.reader, clients)")
        return None
    module = node.module or ""
    target, known = MODULES.get(module, ("", frozenset()))
    by_module: dict[str, list[str]] = {}
    missing = []
    for alias in node.names:
        star = alias.name == "*" and bool(target)  # the kit module's __all__ stands for Paddle Serving's names
        kit_module = NAMES.get((module, alias.name)) or (target if star or known is None or alias.name in known
                                                         else "")
        if not kit_module:
            missing.append(alias.name)
            continue
        by_module.setdefault(kit_module, []).append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
    if missing:
        unmapped.append(f"{where}: {module}: no kit equivalent for {', '.join(missing)}")
        return None
    return [f"from {kit_module} import {', '.join(names)}" for kit_module, names in by_module.items()]


def main(argv: list[str] | None = None) -> int:
    """Print each script's diff and what was not mapped; with --write, save it (and SCRIPT.bak)."""
    parser = argparse.ArgumentParser(prog="python -m serving.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="write the result (the original goes to SCRIPT.bak)")
    args = parser.parse_args(argv)
    unmapped = 0
    for script in args.scripts:
        source = script.read_text(encoding="utf-8")
        migration = migrate_text(source, str(script))
        sys.stdout.writelines(difflib.unified_diff(source.splitlines(keepends=True),
                                                   migration.text.splitlines(keepends=True),
                                                   str(script), f"{script} (migrated)"))
        for line in migration.unmapped:
            print(f"not mapped: {line}", file=sys.stderr)
        unmapped += len(migration.unmapped)
        if args.write and migration.text != source:
            shutil.copy2(script, script.with_name(script.name + ".bak"))
            script.write_text(migration.text, encoding="utf-8")
    return 1 if unmapped else 0


if __name__ == "__main__":
    sys.exit(main())
