"""The README and docs/ pages: every kit command they show exists, with every flag it is shown with.

Commands are read from the pages' code blocks: `python -m MODULE`, `python SCRIPT.py` (a script of this
repository), `serving-kit COMMAND` and `make TARGET`. Each one's `--help` (its subcommand's, when it has
one) must answer and name every `--flag` the page writes; a renamed flag or a removed tool fails here.
"""

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("README.md"))]
COMMAND = re.compile(r"^(?:\$ )?((?:\.venv/bin/)?(?:python3?|serving-kit|make)\s.*)$")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def shown_commands() -> list[tuple[str, str]]:
    """(page:line, command) for each kit command in a code block, continuation lines joined."""
    found = []
    for page in PAGES:
        fenced, pending, where = False, "", ""
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            if pending:
                pending += " " + line.strip()
            else:
                match = COMMAND.match(line.strip())
                if not match:
                    continue
                pending, where = match.group(1), f"{page.relative_to(ROOT)}:{number}"
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            found.append((where, pending.split("  #")[0].strip()))
            pending = ""
    return found


@functools.cache
def help_text(*prefix: str) -> str:
    """`prefix --help`, which must succeed."""
    done = subprocess.run([*prefix, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(prefix)} --help failed: {done.stderr[-2000:]}"
    return done.stdout


def prefix_of(words: list[str]) -> tuple[list[str], list[str]] | None:
    """(the command to ask for --help, the remaining words); None for a script outside this repository."""
    if words[0].endswith("serving-kit"):
        return [sys.executable, "-m", "kit", words[1]], words[2:]
    if words[1] == "-m":
        return [sys.executable, "-m", words[2]], words[3:]
    if (ROOT / words[1]).is_file():
        return [sys.executable, words[1]], words[2:]
    return None


@pytest.mark.parametrize(("where", "command"), shown_commands())
def test_the_command_exists_with_every_flag_shown(where: str, command: str) -> None:
    words = shlex.split(command.replace("&", "").replace("|", " "))
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
        assert words[1] in targets, f"{where}: make has no target {words[1]!r}"
        return
    split = prefix_of(words)
    if split is None:
        pytest.skip(f"{where}: {words[1]} is the user's own script, not one of this repository")
    prefix, rest = split
    text = help_text(*prefix)
    if rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]) and re.search(rf"[{{,]{rest[0]}[,}}]", text):
        text = help_text(*prefix, rest[0])  # a subcommand, e.g. `bench e2e`: its own flags
    missing = [flag for flag in FLAG.findall(command) if flag not in text]
    assert not missing, f"{where}: {' '.join(prefix[1:])} does not take {missing}"
