"""Log setup shared by every server: text lines for people, or JSON lines for log shippers.

The format comes from `--log_format` or the SERVING_LOG_FORMAT environment variable (which worker
processes inherit). Per-request lines carry log_id, protocol, err_no, latency_ms and the caller's timeout_ms as fields.
"""

import json
import logging
import os
import time

FORMAT_ENV = "SERVING_LOG_FORMAT"
FORMATS = ("text", "json")
REQUEST_FIELDS = ("log_id", "protocol", "err_no", "latency_ms", "timeout_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, and the request fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{record.msecs:03.0f}Z",
                "level": record.levelname, "logger": record.name, "pid": record.process,
                "message": record.getMessage()}
        line.update({key: getattr(record, key) for key in REQUEST_FIELDS if hasattr(record, key)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(log_format: str | None = None, prefix: str = "") -> None:
    """Root logger at INFO in `log_format` (else $SERVING_LOG_FORMAT, else text), remembered for worker processes."""
    log_format = log_format or os.environ.get(FORMAT_ENV) or "text"
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(FORMATS)}")
    os.environ[FORMAT_ENV] = log_format
    handler = logging.StreamHandler()
    text = TEXT_FORMAT.replace("%(name)s", f"{prefix}%(name)s")
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def request_line(logger: logging.Logger, log_id: int, protocol: str, err_no: int, seconds: float,
                 timeout_ms: float | None = None) -> None:
    """The one INFO line per request, with its fields attached for JSON output; timeout_ms: what the caller left."""
    latency_ms = round(seconds * 1e3, 2)
    budget = "" if timeout_ms is None else f" (caller's timeout {timeout_ms:.0f} ms)"
    logger.info("logid %s %s err_no %s %.1f ms%s", log_id, protocol, err_no, latency_ms, budget,
                extra={"log_id": log_id, "protocol": protocol, "err_no": err_no, "latency_ms": latency_ms,
                       "timeout_ms": timeout_ms})
