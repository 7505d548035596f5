"""Prometheus metrics on prometheus_client: one registry in a single process, merged files across worker processes.

A worker of build_dag_each_worker starts with PROMETHEUS_MULTIPROC_DIR in its environment (WorkerPool sets it
before the worker imports prometheus_client): every metric then lives in per-process files in that directory,
and render() merges the files of all workers, so `/metrics` on a shared port reports the whole pool whichever
worker answers the scrape. A single-process server uses a normal registry with the library's process, platform
and GC collectors.
"""

import os
import threading

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROC_DIR_ENV in os.environ  # as prometheus_client decides, at import
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
PROCESS_SAMPLE_S = 5.0

disable_created_metrics()  # no *_created series: multiprocess files have none, so both modes expose the same names

REGISTRY = CollectorRegistry()
if not MULTIPROCESS:
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        REGISTRY.register(collector)

REQUESTS = Counter("serving_requests_total", "Requests answered, by protocol and err_no.", ("err_no", "protocol"),
                   registry=REGISTRY)
LATENCY = Histogram("serving_request_seconds", "End-to-end request latency in the server, by protocol.",
                    ("protocol",), buckets=LATENCY_BUCKETS, registry=REGISTRY)
STAGE = Histogram("serving_stage_seconds", "Time per op stage (queue, preprocess, process, postprocess), by op.",
                  ("op", "stage"), buckets=LATENCY_BUCKETS, registry=REGISTRY)
BATCH = Histogram("serving_batch_size", "Rows per predictor call, by op.", ("op",), buckets=BATCH_BUCKETS,
                  registry=REGISTRY)
INFLIGHT = Gauge("serving_inflight_requests", "Requests being answered now, by protocol.", ("protocol",),
                 multiprocess_mode="livesum", registry=REGISTRY)
TENSORRT_OPS = Gauge("serving_tensorrt_engine_ops", "Ops of an op's model that run in TensorRT engines (0: TensorRT "
                     "is off by trt_fallback), by op.", ("op",), multiprocess_mode="max", registry=REGISTRY)
QUEUE = Gauge("serving_op_queue_depth", "Requests waiting for a thread of the op, by op.", ("op",),
              multiprocess_mode="livesum", registry=REGISTRY)


class ProcessSampler:
    """Per-worker CPU, memory, file descriptors and GC in multiprocess mode, as `liveall` gauges (one series per pid).

    The library's ProcessCollector and GCCollector run at scrape time in the scraping process only, so in
    multiprocess mode they would describe whichever worker answered (its docs: custom collectors do not work).
    Instead each worker copies their samples into gauges of the same names: a CPU-seconds or RSS sum over workers
    would hide the one worker that spins or leaks, so the mode is `liveall`, which adds the pid label itself and
    drops a worker's series when the supervisor marks it dead. Every worker samples itself every
    PROCESS_SAMPLE_S from a thread (no process can read another's GC counts, and a stuck worker is the one
    that would never answer a scrape), and the answering worker once more at scrape time. Being gauges, the
    *_total names among them are typed gauge here, counter in a single process.
    """

    def __init__(self) -> None:
        self._source = CollectorRegistry()
        self._source.register(PROCESS_COLLECTOR)
        self._source.register(GC_COLLECTOR)
        self._gauges: dict[str, Gauge] = {}
        self._lock = threading.Lock()

    def sample(self) -> None:
        """Copy this process's current process_* and python_gc_* samples into its multiprocess gauges."""
        with self._lock:
            for family in self._source.collect():
                for sample in family.samples:
                    gauge = self._gauges.get(sample.name)
                    if gauge is None:
                        gauge = self._gauges[sample.name] = Gauge(
                            sample.name, family.documentation, tuple(sample.labels), multiprocess_mode="liveall",
                            registry=None)
                    (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    def run(self, stop: threading.Event) -> None:
        """Sample every PROCESS_SAMPLE_S until `stop` is set."""
        while not stop.wait(PROCESS_SAMPLE_S):
            self.sample()


_SAMPLER = ProcessSampler() if MULTIPROCESS else None


def start_process_sampler(stop: threading.Event) -> None:
    """In a multiprocess worker: sample now (so a ready worker already has its series), then periodically."""
    if _SAMPLER is not None:
        _SAMPLER.sample()
        threading.Thread(target=_SAMPLER.run, args=(stop,), name="process-metrics", daemon=True).start()


def render() -> bytes:
    """Every metric in Prometheus text format 0.0.4; in multiprocess mode the merge of all workers' files."""
    if _SAMPLER is None:
        return generate_latest(REGISTRY)
    _SAMPLER.sample()
    registry = CollectorRegistry()  # per scrape, as the library's docs ask: never one with metrics registered
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
