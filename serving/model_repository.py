"""A model repository in Triton's layout, `<repo>/<model>/<version>/` each holding an export: versions chosen by a
policy, reloaded live.

A reload loads and warms the versions the policy newly selects beside those serving, then switches at once.
Each request holds the version it started on until it finishes, so a version that leaves the serving set is
freed only when its last request lets go. A version that fails to load is refused with a log line and the
versions serving keep serving; it is tried again once its files change (or on an explicit load).
"""

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from serving.errors import ConfigError, LoadError, ServiceNotFoundError, ServingError

log = logging.getLogger("serving.repository")

SERVER_DIR = "serving_server"  # in a version folder, as in an export
POLICY_FORMS = "latest:N (the N highest versions, N >= 1), all, or specific:V[,V...] (version numbers >= 1)"
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"  # Triton's index states


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions on disk are served: Triton's latest N, all, or specific versions."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, path: str) -> "VersionPolicy":
        """`latest:N`, `all` or `specific:V,V`; anything else is a ConfigError naming `path`."""
        kind, _, arg = str(text).strip().partition(":")
        numbers = [part.strip() for part in arg.split(",")] if arg else []
        if not all(number.isdigit() and int(number) >= 1 for number in numbers):
            raise ConfigError.invalid(path, text, POLICY_FORMS)
        if kind == "latest" and len(numbers) <= 1:
            return cls("latest", int(numbers[0]) if numbers else 1)
        if kind == "all" and not numbers:
            return cls("all", 0)
        if kind == "specific" and numbers:
            return cls("specific", 0, tuple(sorted({int(number) for number in numbers})))
        raise ConfigError.invalid(path, text, POLICY_FORMS)

    def select(self, available: set[int]) -> set[int]:
        """The versions of `available` this policy serves."""
        if self.kind == "latest":
            return set(sorted(available, reverse=True)[:self.count])
        if self.kind == "all":
            return set(available)
        return available & set(self.versions)

    def __str__(self) -> str:
        return {"latest": f"latest:{self.count}", "all": "all"}.get(self.kind, f"specific:{self.versions}")


def version_folders(model_dir: Path) -> dict[int, Path]:
    """The numerically named subfolders by version (no leading zero, as Triton); others, e.g. a staging folder, are
    not versions."""
    if not model_dir.is_dir():
        return {}
    return {int(child.name): child for child in model_dir.iterdir()
            if child.is_dir() and child.name.isdigit() and not child.name.startswith("0")}


def scan_repository(root: Path) -> dict[str, dict[int, Path]]:
    """Every model folder of the repository (not hidden) with its version folders."""
    return {child.name: version_folders(child) for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(".")}


def fingerprint(folder: Path) -> tuple:
    """Name, size and mtime of every file under `folder`: a copy still in progress changes it between two polls."""
    try:
        return tuple(sorted((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
                            for path in folder.rglob("*") if path.is_file() and (stat := path.stat())))
    except OSError:  # a file removed while listed: not settled
        return ("changing", time.monotonic_ns())


def free_memory() -> None:
    """Collect cycles, then hand freed heap back to the OS (glibc's malloc_trim), so an unload shows in RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the memory is free for reuse, just not returned
        ctypes.CDLL(None).malloc_trim(0)


class Loaded(Protocol):
    """What a loader returns: a loaded, warmed model version that can drop its engine memory."""

    def release(self) -> None:
        """Drop the engine instances (no request holds this version any more)."""


T = TypeVar("T", bound=Loaded)
# A loader takes the model name, the version number and the version folder (an export) and returns it loaded and
# warm; any exception refuses the version.
Loader = Callable[[str, int, Path], T]


class Version(Generic[T]):
    """One loaded version and the requests holding it; retired ones are released when the last lets go."""

    def __init__(self, number: int, folder: Path, value: T) -> None:
        self.number = number
        self.folder = folder
        self.value = value
        self.refs = 0
        self.retired = False


@dataclass
class _Model(Generic[T]):
    """A model's serving versions, and what the repository remembers of its other versions."""

    serving: dict[int, Version[T]] = field(default_factory=dict)
    retiring: dict[int, Version[T]] = field(default_factory=dict)
    refused: dict[int, tuple[tuple, str]] = field(default_factory=dict)  # version -> (fingerprint, reason)
    seen: dict[int, tuple] = field(default_factory=dict)  # fingerprints at the previous poll
    loading: set[int] = field(default_factory=set)
    unloaded_by_api: bool = False


class ModelRepository(Generic[T]):
    """Models by name, each serving the versions its policy selects from `folders()`; requests hold a version.

    `folders` lists {model: {version: folder}}: a repository scan, one model of it, or a single export.
    """

    def __init__(self, folders: Callable[[], dict[str, dict[int, Path]]], policy: VersionPolicy,
                 loader: Loader[T], where: str) -> None:
        self.folders = folders
        self.policy = policy
        self.loader = loader
        self.where = where  # the repository, as messages name it
        self.ready = False  # every model loaded at start
        self._models: dict[str, _Model[T]] = {}
        self._lock = threading.Lock()  # the serving sets and reference counts
        self._reloading = threading.Lock()  # one reload at a time (poll and API)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- requests ------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The models with a version serving, by name."""
        with self._lock:
            return sorted(name for name, model in self._models.items() if model.serving)

    def versions(self, name: str) -> list[str]:
        """The model's serving versions, oldest first; an unknown or unloaded model is ServiceNotFoundError."""
        with self._lock:
            return [str(number) for number in sorted(self._serving(name))]

    def find(self, name: str, version: str = "") -> T:
        """The version asked for (the highest serving one for ""), not held: for metadata and readiness."""
        with self._lock:
            return self._pick(name, version).value

    @contextmanager
    def hold(self, name: str, version: str = "") -> Iterator[T]:
        """The version asked for, held until the block ends so that no reload frees it under the request."""
        with self._lock:
            held = self._pick(name, version)
            held.refs += 1
        try:
            yield held.value
        finally:
            with self._lock:
                held.refs -= 1
                last = held.retired and held.refs == 0
            if last:
                self._release(name, held)

    def _serving(self, name: str) -> dict[int, Version[T]]:
        model = self._models.get(name)
        if model is None or not model.serving:
            known = ", ".join(repr(known) for known, state in sorted(self._models.items()) if state.serving)
            what = f"model {name!r} is not loaded" if model is not None else f"unknown model {name!r}"
            raise ServiceNotFoundError(f"{what}; this server serves {known or 'no model'}")
        return model.serving

    def _pick(self, name: str, version: str) -> Version[T]:
        serving = self._serving(name)
        if not version:
            return serving[max(serving)]
        if not version.isdigit() or int(version) not in serving:
            raise ServiceNotFoundError(f"unknown version {version!r} of model {name!r}; it has version"
                                       f"{'s' if len(serving) > 1 else ''} "
                                       f"{', '.join(repr(str(number)) for number in sorted(serving))}")
        return serving[int(version)]

    # ---- loading and unloading -----------------------------------------------------------------------------------
    def load_all(self) -> None:
        """At start: every model's versions by policy; the first that fails to load fails the start."""
        listing = self.folders()
        if not listing:
            raise ConfigError(f"{self.where} holds no model folder (<model>/<version>/serving_server/...)")
        for name in listing:
            self.load(name, listing)
        self.ready = True

    def load(self, name: str, listing: dict[str, dict[int, Path]] | None = None) -> None:
        """Triton's explicit load (and reload): serve what the policy selects now, retrying refused versions."""
        listing = self.folders() if listing is None else listing
        if name not in listing:
            raise ServiceNotFoundError(f"no model folder {name!r} in {self.where}")
        with self._reloading:
            with self._lock:
                self._models.setdefault(name, _Model()).unloaded_by_api = False
            errors = self._reload(name, listing[name], polled=False)
        with self._lock:
            serving = sorted(self._models[name].serving)
        if errors:
            raise LoadError("; ".join(errors) + f"; serving version{'s' if len(serving) != 1 else ''} "
                            f"{', '.join(map(str, serving)) or 'none'}")
        if not serving:
            raise LoadError(f"model {name!r} in {self.where}: its policy {self.policy} selects none of its versions "
                            f"{sorted(listing[name]) or '(none: add <version>/serving_server/...)'}")

    def unload(self, name: str) -> None:
        """Triton's explicit unload: every version leaves the serving set (each freed once its requests finish)."""
        with self._reloading:
            with self._lock:
                self._serving(name)
                self._models[name].unloaded_by_api = True
            self._switch(name, {})

    def poll(self) -> None:
        """One look at the folders: new models and settled new versions load, versions gone from disk unload."""
        listing = self.folders()
        with self._lock:
            names = sorted(set(listing) | set(self._models))
        for name in names:
            with self._reloading:
                if not self._models.get(name, _Model()).unloaded_by_api:
                    self._reload(name, listing.get(name, {}), polled=True)

    def start_polling(self, interval_s: float) -> None:
        """Poll every `interval_s` seconds in a daemon thread until `stop`."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # a listing that failed (e.g. the folder is being replaced): try again next time
                    log.exception("polling %s failed", self.where)

        self._poller = threading.Thread(target=loop, name="repository-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and unload everything (each version once its requests finish)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._reloading:
            for name in list(self._models):
                self._switch(name, {})

    def index(self) -> list[dict]:
        """Triton's repository index: every model folder and every version it knows, with state and reason."""
        listing = self.folders()
        rows = []
        with self._lock:
            for name in sorted(set(listing) | set(self._models)):
                model = self._models.get(name, _Model())
                idle = "unloaded" if model.unloaded_by_api else f"not selected by the version policy {self.policy}"
                states = {number: (UNAVAILABLE, idle) for number in listing.get(name, {})}
                states |= {number: (UNAVAILABLE, reason) for number, (_, reason) in model.refused.items()}
                states |= {number: (UNLOADING, "finishing the requests that hold it") for number in model.retiring}
                states |= {number: (LOADING, "") for number in model.loading}
                states |= {number: (READY, "") for number in model.serving}
                rows += [{"name": name, "version": str(number), "state": state, "reason": reason}
                         for number, (state, reason) in sorted(states.items())]
                if not states:
                    rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "no version folder"})
        return rows

    def _reload(self, name: str, on_disk: dict[int, Path], polled: bool) -> list[str]:
        """Load what the policy selects and is not serving (newest first), then switch; returns refusals."""
        with self._lock:
            model = self._models.setdefault(name, _Model())
            serving = dict(model.serving)
        prints = {number: fingerprint(folder) for number, folder in on_disk.items()}
        # Polled: a version not serving counts once it looks the same as at the previous poll (a copy has ended).
        settled = {number for number in on_disk
                   if number in serving or not polled or model.seen.get(number) == prints[number]}
        model.seen = prints
        fresh: dict[int, Version[T]] = {}
        errors: list[str] = []
        refused_now: set[int] = set()
        while True:
            # A version refused before is tried again on an explicit load, or when polled once its files changed.
            candidates = {number for number in settled - refused_now
                          if number in serving or not polled or model.refused.get(number, (None,))[0] != prints[number]}
            target = self.policy.select(candidates)
            missing = sorted(target - serving.keys() - fresh.keys(), reverse=True)
            if not missing:
                break
            loaded = self._load_version(name, missing[0], on_disk[missing[0]], prints[missing[0]], model)
            if isinstance(loaded, str):
                errors.append(loaded)
                refused_now.add(missing[0])
            else:
                fresh[missing[0]] = loaded
        self._switch(name, {number: version for number, version in {**serving, **fresh}.items() if number in target})
        return errors

    def _load_version(self, name: str, number: int, folder: Path, print_: tuple,
                      model: _Model[T]) -> "Version[T] | str":
        """One version loaded and warmed, or the reason it was refused (logged, remembered with its files)."""
        started = time.perf_counter()
        with self._lock:
            model.loading.add(number)
        try:
            value = self.loader(name, number, folder)
        except Exception as exc:  # bad files, a failed warm-up: refuse this version, keep serving the others
            reason = f"model {name!r} version {number} ({folder}) refused: {_reason(exc)}"
            with self._lock:
                model.refused[number] = (print_, reason)
                still = sorted(model.serving)
            log.error("%s; still serving version%s %s", reason, "s" if len(still) != 1 else "",
                      ", ".join(map(str, still)) or "none")
            return reason
        finally:
            with self._lock:
                model.loading.discard(number)
        with self._lock:
            model.refused.pop(number, None)
        log.info("model %r version %d loaded and warm in %.1f s from %s", name, number,
                 time.perf_counter() - started, folder)
        return Version(number, folder, value)

    def _switch(self, name: str, serving: dict[int, Version[T]]) -> None:
        """Make `serving` the model's serving set at once; versions leaving it are released when let go."""
        with self._lock:
            model = self._models.setdefault(name, _Model())
            before = model.serving
            model.serving = serving
            leaving = [version for number, version in before.items() if number not in serving]
            for version in leaving:
                version.retired = True
                model.retiring[version.number] = version
            idle = [version for version in leaving if version.refs == 0]
        if before.keys() != serving.keys():
            log.info("model %r now serves version%s %s", name, "s" if len(serving) != 1 else "",
                     ", ".join(map(str, sorted(serving))) or "none")
        for version in idle:
            self._release(name, version)

    def _release(self, name: str, version: Version[T]) -> None:
        """Free a retired version that no request holds: its engines, then the heap."""
        with self._lock:
            self._models[name].retiring.pop(version.number, None)
        version.value.release()
        version.value = None
        free_memory()
        log.info("model %r version %d unloaded", name, version.number)


def _reason(exc: BaseException) -> str:
    """An exception as one line for the refusal log and the API's error."""
    text = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
