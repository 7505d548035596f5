"""Log lines: text for people, JSON lines with the request's fields for log shippers."""

import json
import logging
import os

import pytest

from serving.logs import FORMAT_ENV, JsonFormatter, request_line, setup_logging


def test_request_line_as_json_carries_the_request_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("serving.test")
    with caplog.at_level(logging.INFO, logger="serving.test"):
        request_line(logger, 42, "grpc", 5000, 0.01234)
    (record,) = caplog.records
    assert record.getMessage() == "logid 42 grpc err_no 5000 12.3 ms"
    line = json.loads(JsonFormatter().format(record))
    assert {key: line[key] for key in ("log_id", "protocol", "err_no", "latency_ms", "level", "logger")} == {
        "log_id": 42, "protocol": "grpc", "err_no": 5000, "latency_ms": 12.34, "level": "INFO",
        "logger": "serving.test"}
    assert line["time"].endswith("Z") and line["pid"] == os.getpid()


def test_format_is_chosen_once_and_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv(FORMAT_ENV, "json")
        setup_logging()
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("text", prefix="worker-1 ")
        assert os.environ[FORMAT_ENV] == "text" and "worker-1 %(name)s" in root.handlers[0].formatter._fmt
        with pytest.raises(ValueError, match="use one of text, json"):
            setup_logging("yaml")
    finally:
        root.handlers[:], root.level = saved
