"""/metrics on prometheus_client: label values come out escaped."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from serving.pipeline import Op, WebService
from tests.test_workers import SleepOp, sleep_request

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
ODD_OP = 'sl"eep\\op\nline'  # a quote, a backslash and a newline in the op name, hence in the op label


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
