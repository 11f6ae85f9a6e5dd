"""JSON log lines: one object per record, with the request id when there is one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# LogRecord attributes that are not user extras
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# decorations BentoML adds for its text format
_STANDARD |= {"levelname_bracketed", "trace_msg"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_json_logging(level: int = logging.INFO) -> logging.Logger:
    """Send the service's logs to stderr as JSON, and re-format BentoML's own handlers as JSON.

    Called from the service's start-up (never at import). Returns the service logger.
    """
    formatter = JsonFormatter()
    service_logger = logging.getLogger("fraud.serving")
    if not any(isinstance(h.formatter, JsonFormatter) for h in service_logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        service_logger.addHandler(handler)
    service_logger.setLevel(level)
    service_logger.propagate = False
    for name in ("", "bentoml", "uvicorn", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
    return service_logger
