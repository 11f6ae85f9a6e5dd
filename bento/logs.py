"""JSON log lines: one object per record, with the request id when there is one.

The formatting is python-json-logger's (already in the serving image, as a BentoML dependency);
this module only chooses the field names (``time``, ``level``, ``logger``, ``message``, the
record's extras, ``exception``) and where the lines go.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

# decorations BentoML adds to records for its text format: not extras of ours
_BENTOML_DECORATIONS = ("levelname_bracketed", "trace_msg")


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, extras, exception."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            reserved_attrs=[*RESERVED_ATTRS, *_BENTOML_DECORATIONS],
            json_default=str,
            json_ensure_ascii=True,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Put the record's time first, as ISO 8601 in UTC with milliseconds."""
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)
        for key in [k for k in log_data if k.startswith("_")]:
            del log_data[key]


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
