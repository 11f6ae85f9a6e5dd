"""Redaction: what a failure alert may show of parameters, errors and URLs.

Secret-looking parameter names are masked, database URLs and credentials inside URLs are
removed, and the given secret values (the SMTP password) are replaced wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

ERROR_LIMIT = 4000

_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|api[_-]?key|credential|private[_-]?key|dsn|"
    r"connection|(^|_)(uri|url)$)",
    re.IGNORECASE,
)
_DB_URL = re.compile(
    r"\b(?:postgres(?:ql)?|mysql|mariadb|sqlite|mssql|oracle|cockroachdb|redshift|snowflake)"
    r"(?:\+\w+)?://[^\s'\"<>)]*",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"\b([a-z][\w+.-]*://)[^/\s:@'\"]+:[^@\s/'\"]+@", re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove database URLs, credentials in URLs and the given secret values from ``text``."""
    out = _DB_URL.sub("<database URL removed>", text)
    out = _USERINFO.sub(r"\1***@", out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def redact_parameters(params: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Parameters as shown in the alert: secret-looking keys masked, URLs and secrets scrubbed."""
    secrets = tuple(secrets)

    def clean(key: str, value: Any) -> Any:
        if _SECRET_KEY.search(key):
            return "***"
        if isinstance(value, Mapping):
            return {str(k): clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(key, v) for v in value]
        if isinstance(value, str):
            return scrub(value, secrets)
        return value

    return {str(k): clean(str(k), v) for k, v in params.items()}


def truncate(text: str, limit: int = ERROR_LIMIT) -> str:
    """Keep the head and the tail of a long text (the cause is often at either end)."""
    if len(text) <= limit:
        return text
    tail = limit // 5
    head = limit - tail
    cut = len(text) - head - tail
    return f"{text[:head]}\n… [{cut} characters cut] …\n{text[-tail:]}"
