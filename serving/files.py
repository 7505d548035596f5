"""Files: crash-safe writes (readers see the old file or the new one, never half) and paths kept inside a folder."""

import os
import resource
import tempfile
from pathlib import Path


def umasked(mode: int) -> int:
    """`mode` as the process umask would leave it: mkstemp/mkdtemp create private files, we want normal ones."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, umasked(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text flavour of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def inside(folder: Path, name: str | Path) -> Path | None:
    """`folder / name` with links resolved, or None when that lands outside `folder` (`../x`, `/etc/x`, a link out)."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) else None


def raise_open_file_limit() -> int:
    """Lift this process's soft limit on open files to the hard limit (each client connection is a file); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
