"""build_dag_each_worker: worker_num processes, each with its own DAG, sharing the ports; a dead one is restarted.

The supervisor reserves each port with a bound, never-listening SO_REUSEPORT socket (so port 0 resolves
once for all workers), spawns the workers, and waits until every one reports ready. The kernel spreads
new connections over the workers' listening sockets; when a worker dies its connections are reset at
once (clients see an error, never a hang), the kernel stops routing to it, and the supervisor starts a
replacement.

The workers' metrics live in a private directory that the supervisor creates at start and removes at stop:
each worker finds it in PROMETHEUS_MULTIPROC_DIR from its first instruction, so its prometheus_client writes
per-process files there and `/metrics` on the shared port merges every worker's. A dead worker is marked
dead there, which drops its live gauges (in flight, queue depth, process metrics) while its counters stay in
the sums.
"""

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from prometheus_client import multiprocess

from serving import metrics
from serving.config import ServiceConfig
from serving.errors import InitError
from serving.logs import setup_logging
from serving.protocols.sockets import bound_socket

if TYPE_CHECKING:
    from serving.pipeline.web_service import WebService

log = logging.getLogger("serving.workers")

START_TIMEOUT_S = 600.0
MAX_BACKOFF_S = 30.0
_SPAWN_ENV = threading.Lock()  # the workers' environment is this process's while it spawns: one spawn at a time


def reserve_port(port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT: holds the port for the workers; 0 picks a free one."""
    sock = bound_socket(port, reuse_port=True)
    return sock, sock.getsockname()[1]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its own copy of the service: a picklable class, its name, the config."""

    service_class: type["WebService"]
    name: str
    config: ServiceConfig

    def build(self) -> "WebService":
        """A fresh service, configured like the supervisor's, with nothing running yet."""
        service = self.service_class(name=self.name)
        service.config = self.config
        return service


def _worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """A worker: serve on the shared ports until SIGTERM/SIGINT or the supervisor's pipe closes."""
    setup_logging(prefix=f"worker-{os.getpid()} ")
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        service = spec.build()
        service.start_in_process(reuse_port=True)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(2) from None
    metrics.start_process_sampler(stopped)
    conn.send(("ready", os.getpid()))
    threading.Thread(target=_watch_supervisor, args=(conn, stopped), daemon=True).start()
    stopped.wait()
    service.stop()


def _watch_supervisor(conn: Connection, stopped: threading.Event) -> None:
    """The pipe reaches EOF when the supervisor exits, even by SIGKILL: then this worker stops too."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    stopped.set()


@dataclass
class _Worker:
    """One slot: its current process and pipe, when it was started, and its restart backoff."""

    slot: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    started: float = 0.0
    ready: bool = False
    backoff_s: float = 0.0
    restart_at: float | None = None
    restarts: int = 0


class WorkerPool:
    """Starts `count` copies of a service in processes and keeps `count` of them running until stopped."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self.spec = spec
        self.workers = [_Worker(slot) for slot in range(count)]
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.metrics_dir: str | None = None

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.process.pid for w in self.workers if w.process is not None and w.process.is_alive()]

    def start(self) -> None:
        """Spawn every worker and wait until all are ready; a worker that fails to start fails the whole start."""
        self.metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
        for worker in self.workers:
            self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in self.workers:
            message = self._first_message(worker, deadline)
            if message[0] != "ready":
                self.stop(0.0)
                raise InitError(f"worker {worker.slot} failed to start: {message[1]}")
            worker.ready = True
        self._watcher = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._watcher.start()

    def _spawn(self, worker: _Worker) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(self.spec, child),
                                        name=f"pipeline-worker-{worker.slot}", daemon=False)
        with _SPAWN_ENV:  # a spawned child inherits os.environ as it is now, and reads the variable at import
            previous = os.environ.get(metrics.MULTIPROC_DIR_ENV)
            os.environ[metrics.MULTIPROC_DIR_ENV] = self.metrics_dir
            try:
                process.start()
            finally:
                if previous is None:
                    del os.environ[metrics.MULTIPROC_DIR_ENV]
                else:
                    os.environ[metrics.MULTIPROC_DIR_ENV] = previous
        child.close()
        worker.process, worker.conn, worker.started, worker.ready = process, parent, time.monotonic(), False
        worker.restart_at = None

    def _first_message(self, worker: _Worker, deadline: float) -> tuple[str, object]:
        """The worker's ("ready", pid) or ("failed", reason); a worker that dies silently is a failure too."""
        if not worker.conn.poll(max(deadline - time.monotonic(), 0.0)):
            return "failed", f"not ready within {START_TIMEOUT_S:.0f} s"
        try:
            return worker.conn.recv()
        except EOFError:
            worker.process.join()
            return "failed", f"exited with code {worker.process.exitcode}"

    def _watch(self) -> None:
        """Restart dead workers (with backoff when they die young) and log when replacements are ready."""
        while not self._stopping.is_set():
            waitables = [w.process.sentinel for w in self.workers if w.process is not None]
            waitables += [w.conn for w in self.workers if w.conn is not None and not w.ready]
            wait(waitables, timeout=0.2)
            now = time.monotonic()
            for worker in self.workers:
                if self._stopping.is_set():
                    return
                self._check(worker, now)

    def _check(self, worker: _Worker, now: float) -> None:
        """One slot's state machine: running -> dead (schedule a restart) -> spawned -> ready."""
        if worker.process is not None and not worker.process.is_alive():
            worker.process.join()
            multiprocess.mark_process_dead(worker.process.pid, self.metrics_dir)
            crashed_at_start = not worker.ready  # a crash loop backs off; a worker that served restarts at once
            worker.backoff_s = min(max(worker.backoff_s * 2, 1.0), MAX_BACKOFF_S) if crashed_at_start else 0.0
            log.error("worker %d (pid %s) died with exit code %s; restarting in %.1f s", worker.slot,
                      worker.process.pid, worker.process.exitcode, worker.backoff_s)
            worker.process, worker.restart_at = None, now + worker.backoff_s
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None
        elif worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
            worker.restarts += 1
            self._spawn(worker)
        elif worker.process is not None and not worker.ready and worker.conn.poll():
            try:
                worker.ready = worker.conn.recv()[0] == "ready"
            except EOFError:
                return
            if worker.ready:
                log.info("worker %d back in service (pid %s) %.1f s after its restart (restart %d of this slot)",
                         worker.slot, worker.process.pid, now - worker.started, worker.restarts)

    def stop(self, drain_s: float) -> None:
        """SIGTERM every worker (each drains its in-flight requests), wait for them, SIGKILL stragglers."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + drain_s + 10.0
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(max(deadline - time.monotonic(), 0.0))
            if worker.process.is_alive():
                log.warning("worker %d did not stop within the drain timeout; killing it", worker.slot)
                worker.process.kill()
                worker.process.join()
            if worker.conn is not None:
                worker.conn.close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None
