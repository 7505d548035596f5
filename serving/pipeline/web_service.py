"""Paddle Serving's WebService: build the DAG from `get_pipeline_response`, serve it over HTTP and gRPC."""

import dataclasses
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import yaml

from serving.config import ServiceConfig, apply_overrides, load_config, parse_config
from serving.dataplane import DataPlane, PipelineEndpoint
from serving.errors import ConfigError
from serving.files import atomic_write_text, raise_open_file_limit
from serving.model_config import SERVER_CONF, read_config
from serving.pipeline.dag import Dag
from serving.pipeline.op import Op, RequestOp
from serving.pipeline.workers import WorkerPool, WorkerSpec, reserve_port
from serving.protocols.grpc_server import start_grpc_server
from serving.protocols.http_server import start_http_server
from serving.protocols.oip import OipEndpoint, OipService, OneModel, Signature
from serving.protocols.oip_models import PipelineModel

log = logging.getLogger("serving.pipeline")


def build_predictor(op: Op, config: ServiceConfig) -> Any:
    """The op's predictor: model servers over brpc/gRPC, or in-process Paddle Inference."""
    from serving.predictor import LocalPredictor, RemotePredictor, settings_from_conf

    if op.remote:
        timeout_ms = op.config.timeout if op.config.timeout > 0 else config.limits.request_timeout_ms
        return RemotePredictor(op.config.remote_protocol(config.dag), op.config.server_endpoints,
                               op.config.client_config, timeout_ms / 1000, config.limits.max_body_bytes,
                               config.security)
    conf = op.config.local_service_conf
    if conf.repository_model:
        from serving.predictor.repository import RepositoryPredictor

        return RepositoryPredictor(conf, op.dynamic_shape_info or None, op.config.concurrency,
                                   f"op.{op.name}.local_service_conf")
    model_config = read_config(Path(conf.model_config) / SERVER_CONF)
    settings = settings_from_conf(conf, model_config, op.dynamic_shape_info or None,
                                  path=f"op.{op.name}.local_service_conf")
    return LocalPredictor(settings, model_config, pool_size=op.config.concurrency)


def _warn_inert_settings(config: ServiceConfig, dag: Dag) -> None:
    """Accepted Paddle Serving keys that change nothing here are named at start, not silently dropped."""
    unknown = sorted(set(config.op) - {op.name for op in dag.ops})
    if unknown:
        log.warning("config.yml op entries %s match no op in the pipeline", unknown)
    if not config.dag.is_thread_op:
        log.info("ops run as threads (is_thread_op: false is accepted for compatibility; concurrency sets each "
                 "op's threads; for processes use build_dag_each_worker: true with worker_num > 1)")
    unbatched = [op.name for op in dag.ops if op.config.batch_size > 1 and not op.batching]
    if unbatched:
        log.warning("ops %s: batch_size > 1 without auto_batching_timeout > 0 merges nothing (Paddle Serving's "
                    "rule); set auto_batching_timeout in ms", unbatched)


class WebService:
    """Subclass it, return your last op from `get_pipeline_response`, then prepare config and run."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.config: ServiceConfig | None = None
        self.dag: Dag | None = None
        self.http_port: int | None = None
        self.rpc_port: int | None = None
        self._servers: list[Any] = []
        self._dataplane: DataPlane | None = None
        self._stopped = threading.Event()
        self._pool: WorkerPool | None = None
        self._reserved: list[socket.socket] = []

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids (build_dag_each_worker); empty when the service runs in this process."""
        return self._pool.pids if self._pool is not None else []

    def get_pipeline_response(self, read_op: Op) -> Op | list[Op]:
        """Build the ops on top of `read_op` and return the last one."""
        raise NotImplementedError("override get_pipeline_response(self, read_op) to return your last op")

    def get_tensor_signature(self) -> Signature | None:
        """The service as a model of the Open Inference Protocol (inputs and outputs, typed); None: not offered.

        Called once the DAG is up (its ops configured); this kit's, not Paddle Serving's.
        """
        return None

    def prepare_pipeline_config(self, yml_file: str | None = None, yml_dict: dict | None = None,
                                overrides: dict[str, object] | None = None) -> ServiceConfig:
        """Load and validate config.yml (or a dict); overrides: http_port, rpc_port, model_config."""
        if yml_file is not None:
            self.config = load_config(Path(yml_file), overrides)
        else:
            data = yaml.safe_load(yaml.safe_dump(yml_dict or {}))
            self.config = parse_config(apply_overrides(data, overrides or {}), Path.cwd())
        return self.config

    def start(self) -> "WebService":
        """Serve in this process, or in worker_num processes when build_dag_each_worker; returns once ready."""
        if self.config is None:
            raise ConfigError("call prepare_pipeline_config(...) before run_service()")
        if not (self.config.build_dag_each_worker and self.config.worker_num > 1):
            return self.start_in_process()
        ports = {}
        for key in ("http_port", "rpc_port"):
            if getattr(self.config, key) is not None:
                sock, ports[key] = reserve_port(getattr(self.config, key))
                self._reserved.append(sock)
        self.config = dataclasses.replace(self.config, **ports)
        self.http_port, self.rpc_port = self.config.http_port, self.config.rpc_port
        self._pool = WorkerPool(WorkerSpec(type(self), self.name, self.config), self.config.worker_num)
        try:
            self._pool.start()
        except BaseException:
            self.stop()
            raise
        log.info("service %r ready in %d worker processes %s: http_port %s, rpc_port %s", self.name,
                 self.config.worker_num, self._pool.pids, self.http_port, self.rpc_port)
        return self

    def start_in_process(self, reuse_port: bool = False) -> "WebService":
        """Listen at once (live), then load and warm the models (ready); ports are known on return.

        A worker process sharing the ports (reuse_port) listens only once ready, so the kernel never hands
        a connection to a worker that is still loading.
        """
        dataplane, oip, model = self._new_dataplane()
        if not reuse_port:
            self._start_front_ends(dataplane, oip, reuse_port)
        try:
            self._load(dataplane, model)
            if reuse_port:
                self._start_front_ends(dataplane, oip, reuse_port)
        except BaseException:
            self.stop()
            raise
        log.info("service %r ready: http_port %s, rpc_port %s", self.name, self.http_port, self.rpc_port)
        return self

    def start_dataplane(self) -> tuple[DataPlane, OipService]:
        """The loaded, warm data plane (and its Open Inference Protocol service) without servers, for hosts with
        front ends of their own (Ray Serve replicas)."""
        dataplane, oip, model = self._new_dataplane()
        try:
            self._load(dataplane, model)
        except BaseException:
            self.stop()
            raise
        log.info("service %r ready (data plane only)", self.name)
        return dataplane, oip

    def _new_dataplane(self) -> tuple[DataPlane, OipService, PipelineModel]:
        """The DAG, the data plane in front of it and its Open Inference Protocol service; requests get err_no
        3003 until `_load` is done."""
        self.dag = Dag(self.get_pipeline_response(RequestOp()), self.config)
        endpoint = PipelineEndpoint(self.name)
        limits = self.config.limits
        dataplane = self._dataplane = DataPlane(endpoint, limits.max_inflight, limits.request_timeout_ms)
        model = PipelineModel(self.name, endpoint)
        oip = OipService(dataplane, OipEndpoint(OneModel(model, endpoint)),
                         repository_off="the pipeline reloads repository models by polling "
                                        "(op.<name>.local_service_conf.repository_poll_s)")
        return dataplane, oip, model

    def _load(self, dataplane: DataPlane, model: PipelineModel) -> None:
        """Load and warm the ops' models, then let the data plane answer."""
        _warn_inert_settings(self.config, self.dag)
        self.dag.start(lambda op: build_predictor(op, self.config))
        model.attach(self.get_tensor_signature())
        dataplane.endpoint.attach(self.dag.run, lambda: {"service": self.name, "ops": self.dag.metadata()})
        dataplane.depend_on(self.dag.waiting_for, watch=any(op.remote for op in self.dag.ops))
        dataplane.announce()

    def _start_front_ends(self, dataplane: DataPlane, oip: OipService, reuse_port: bool) -> None:
        """HTTP and gRPC on the configured ports, each with the Open Inference Protocol; workers share them."""
        limits = self.config.limits
        if self.config.http_port is not None:
            server, self.http_port = start_http_server(dataplane, oip, self.config.http_port, limits, reuse_port,
                                                       self.config.security)
            self._servers.append(server)
        if self.config.rpc_port is not None:
            server, self.rpc_port = start_grpc_server(dataplane, oip, self.config.rpc_port, self.config.worker_num,
                                                      limits, reuse_port, self.config.security)
            self._servers.append(server)

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within limits.drain_timeout_ms, release the predictors."""
        drain_s = self.config.limits.drain_timeout_ms / 1000 if self.config else 0.0
        if self._pool is not None:
            self._pool.stop(drain_s)
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()
        if self._dataplane is not None:
            self._dataplane.close()
        for server in self._servers:
            if hasattr(server, "shutdown"):
                server.shutdown()
            else:
                server.stop(grace=drain_s)
        if self._dataplane is not None and not self._dataplane.drain(drain_s):
            log.warning("stopping with requests still running after %.1f s", drain_s)
        for server in self._servers:
            if hasattr(server, "server_close"):
                server.server_close()
        self._servers.clear()
        if self.dag is not None:
            self.dag.stop()
        self._stopped.set()

    def run_service(self, pid_file: Path | None = None) -> None:
        """Start, then serve until SIGINT or SIGTERM (or `stop` via the pid file); then drain and stop."""
        raise_open_file_limit()
        if pid_file is not None:  # before /ready answers 200, so whoever sees the service ready finds its pid
            atomic_write_text(pid_file, f"{os.getpid()}\n")
        try:
            self.start()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: self._stopped.set())
            self._stopped.wait()
            log.info("stopping: draining in-flight requests")
            self.stop()
        finally:
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
