"""/metrics on prometheus_client: escaped label values, and worker processes sharing a port report their sum."""

import os
import signal
import stat
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving import metrics
from serving.pipeline import Op, WebService
from tests.test_web_service import parsed
from tests.test_workers import SleepOp, SleepService, sleep_request, wait_for

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
ODD_OP = 'sl"eep\\op\nline'  # a quote, a backslash and a newline in the op name, hence in the op label
HTTP_OK = frozenset({("err_no", "0"), ("protocol", "http")})


class OddlyNamedService(WebService):
    def get_pipeline_response(self, read_op: Op) -> Op:
        return SleepOp(name=ODD_OP, input_ops=[read_op])


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return answer.read().decode()


def parse(text: str) -> Series:
    """Every sample of an exposition, by name and labels, as Prometheus would read them."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(port: int) -> Series:
    """One scrape over a new connection, so any worker may answer it."""
    return parse(scrape_text(port))


def by_pid(series: Series, name: str, **labels: str) -> dict[int, float]:
    """One per-process metric's value for each pid that reports it."""
    found = {}
    for (sample, sample_labels), value in series.items():
        keyed = dict(sample_labels)
        if sample == name and "pid" in keyed and all(keyed.get(key) == want for key, want in labels.items()):
            found[int(keyed["pid"])] = value
    return found


@pytest.fixture
def pool() -> Iterator[SleepService]:
    svc = SleepService(name="sleep")
    svc.prepare_pipeline_config(yml_dict={"http_port": 0, "worker_num": 2, "build_dag_each_worker": True,
                                          "op": {"sleep": {"concurrency": 4}}})
    svc.start()
    yield svc
    svc.stop()


def test_label_values_with_quotes_backslashes_and_newlines_are_escaped() -> None:
    svc = OddlyNamedService(name="sleep")
    svc.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {ODD_OP: {"concurrency": 1}}})
    svc.start()
    try:
        assert sleep_request(svc.http_port, 0)["err_no"] == 0
        text = scrape_text(svc.http_port)
    finally:
        svc.stop()
    assert 'serving_stage_seconds_count{op="sl\\"eep\\\\op\\nline",stage="preprocess"} 1.0\n' in text
    assert not any(line.startswith('line"') for line in text.splitlines())  # the newline did not break the line
    assert parse(text)[("serving_stage_seconds_count", frozenset({("op", ODD_OP), ("stage", "preprocess")}))] == 1


def test_every_scrape_of_a_shared_port_reports_the_sum_over_workers(pool: SleepService) -> None:
    count, pids = 40, set(pool.worker_pids)
    answers = [sleep_request(pool.http_port, 0) for _ in range(count)]  # a new connection each: spread by the kernel
    assert {answer["err_no"] for answer in answers} == {0}
    assert {parsed(a["key"], a["value"])["pid"] for a in answers} == pids  # both workers answered some
    for _ in range(10):
        series = scrape(pool.http_port)
        assert series[("serving_requests_total", HTTP_OK)] == count
        assert series[("serving_request_seconds_count", frozenset({("protocol", "http")}))] == count
        assert series[("serving_stage_seconds_count", frozenset({("op", "sleep"), ("stage", "preprocess")}))] == count
        assert series[("serving_inflight_requests", frozenset({("protocol", "http")}))] == 0
        rss, cpu = by_pid(series, "process_resident_memory_bytes"), by_pid(series, "process_cpu_seconds_total")
        assert set(rss) == set(cpu) == pids and min(rss.values()) > 10e6 and min(cpu.values()) > 0
        assert set(by_pid(series, "python_gc_collections_total", generation="0")) == pids
        assert set(by_pid(series, "process_open_fds")) == pids


def test_in_flight_is_summed_and_a_dead_worker_keeps_its_counts_but_not_its_gauges(pool: SleepService) -> None:
    port = pool.http_port
    assert all(sleep_request(port, 0)["err_no"] == 0 for _ in range(10))
    slow = threading.Thread(target=sleep_request, args=(port, 3))
    slow.start()
    inflight = ("serving_inflight_requests", frozenset({("protocol", "http")}))
    wait_for(lambda: scrape(port).get(inflight) == 1, 10)  # whichever worker answers the scrape
    slow.join()
    assert scrape(port)[inflight] == 0
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in pool.worker_pids and len(pool.worker_pids) == 2, 30)
    wait_for(lambda: set(by_pid(scrape(port), "process_resident_memory_bytes")) == set(pool.worker_pids), 30)
    series = scrape(port)
    assert series[("serving_requests_total", HTTP_OK)] == 11  # the dead worker's requests still count
    assert victim not in by_pid(series, "process_cpu_seconds_total")
    assert series[inflight] == 0


def test_workers_write_to_a_private_directory_that_stop_removes(pool: SleepService) -> None:
    environ = Path(f"/proc/{pool.worker_pids[0]}/environ").read_bytes().split(b"\0")
    (directory,) = [Path(item.split(b"=", 1)[1].decode()) for item in environ
                    if item.startswith(metrics.MULTIPROC_DIR_ENV.encode() + b"=")]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert metrics.MULTIPROC_DIR_ENV not in os.environ  # the supervisor's own environment is left as it was
    sleep_request(pool.http_port, 0)
    assert {f"gauge_liveall_{pid}.db" for pid in pool.worker_pids} <= {path.name for path in directory.iterdir()}
    pool.stop()
    assert not directory.exists()
