"""Serving settings, read once from the environment when the service starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bento.inference_log import LOG_DIR_ENV
from bento.store import fraud_home


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValueError(f"{name}={raw!r} is not an integer") from err
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(f"{name}={raw!r} is not a number") from err
    if not value > 0:
        raise ValueError(f"{name}={value} must be positive")
    return value


@dataclass(frozen=True)
class ServingConfig:
    """Limits and locations of the serving process (env prefix ``FRAUD_``)."""

    max_batch_records: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024  # /predict_batch
    max_record_bytes: int = 64 * 1024  # /predict
    inference_log_dir: Path = Path(".fraud/inference_log")
    inference_log_enabled: bool = True
    log_flush_interval_s: float = 5.0
    log_flush_records: int = 10_000
    log_requests: bool = False  # one JSON log line per scored request (DEBUG level)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingConfig:
        """Read ``FRAUD_MAX_BATCH_RECORDS``, ``FRAUD_MAX_BODY_BYTES``, ``FRAUD_MAX_RECORD_BYTES``,
        ``FRAUD_INFERENCE_LOG_DIR`` (default ``$FRAUD_HOME/inference_log``),
        ``FRAUD_INFERENCE_LOG`` (``off`` disables it), ``FRAUD_INFERENCE_LOG_FLUSH_S``,
        ``FRAUD_INFERENCE_LOG_FLUSH_RECORDS`` and
        ``FRAUD_LOG_REQUESTS``."""
        env = os.environ if environ is None else environ
        log_dir = env.get(LOG_DIR_ENV) or str(fraud_home(env) / "inference_log")
        return cls(
            max_batch_records=_int(env, "FRAUD_MAX_BATCH_RECORDS", cls.max_batch_records),
            max_body_bytes=_int(env, "FRAUD_MAX_BODY_BYTES", cls.max_body_bytes),
            max_record_bytes=_int(env, "FRAUD_MAX_RECORD_BYTES", cls.max_record_bytes),
            inference_log_dir=Path(log_dir),
            inference_log_enabled=env.get("FRAUD_INFERENCE_LOG", "on").lower()
            not in {"off", "0", "false", "no"},
            log_flush_interval_s=_float(
                env, "FRAUD_INFERENCE_LOG_FLUSH_S", cls.log_flush_interval_s
            ),
            log_flush_records=_int(env, "FRAUD_INFERENCE_LOG_FLUSH_RECORDS", cls.log_flush_records),
            log_requests=env.get("FRAUD_LOG_REQUESTS", "").lower() in {"1", "true", "yes", "on"},
        )
