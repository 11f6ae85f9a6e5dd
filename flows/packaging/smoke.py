"""The image smoke test: frozen request records must get exactly the offline ONNX answers.

:func:`request_records` (rows as typed JSON request bodies) lives here and is also used by the
traffic sender: both must send what the bento's request model accepts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.artifacts import (
    DECISION_FIELD,
    PREDICTIONS_FIELD,
    RECORDS_FIELD,
    SCORE_FIELD,
    VERSION_FIELD,
)
from data_contracts.spec import FeatureKind, FeatureSpec
from flows.core.files import write_atomic
from flows.core.http import http_json
from flows.core.settings import Settings
from flows.packaging.build import release_log_dir
from flows.packaging.container import require_docker, run_container
from flows.packaging.errors import SmokeTestError
from flows.training.onnx_export import onnx_predict_proba, onnx_session


@dataclass(frozen=True)
class SmokeCase:
    """A frozen set of request records with the offline ONNX predictions they must get back."""

    records: list[dict[str, Any]]
    probabilities: list[float]
    threshold: float

    @property
    def decisions(self) -> list[int]:
        return [int(p >= self.threshold) for p in self.probabilities]

    def to_json(self) -> str:
        return json.dumps(
            {
                "threshold": self.threshold,
                "probabilities": self.probabilities,
                "records": self.records,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> SmokeCase:
        data = json.loads(text)
        return cls(
            records=list(data["records"]),
            probabilities=[float(p) for p in data["probabilities"]],
            threshold=float(data["threshold"]),
        )


def smoke_case_path(settings: Settings, image: str) -> Path:
    """Where the smoke test of ``image`` (``<repository>:v<N>``) saved its reference records."""
    name, _, version = image.rpartition("/")[2].partition(":")
    return release_log_dir(settings, name, version[1:]) / "smoke-case.json"


def load_smoke_case(settings: Settings, image: str) -> SmokeCase:
    """The reference records ``image`` passed its smoke test with; a clear error without them."""
    path = smoke_case_path(settings, image)
    try:
        return SmokeCase.from_json(path.read_text())
    except FileNotFoundError as err:
        raise SmokeTestError(
            image,
            f"no reference records at {path}: the image never passed a smoke test here "
            "(release it with the image step so that it is verified before serving)",
        ) from err


def _json_value(value: Any, kind: FeatureKind) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if kind == FeatureKind.CATEGORICAL:
        return str(value)
    if kind == FeatureKind.BOOLEAN:
        return bool(value)
    if kind == FeatureKind.INTEGER:
        return int(value)
    return float(value)


def request_records(frame: pd.DataFrame, spec: FeatureSpec) -> list[dict[str, Any]]:
    """Rows as JSON objects keyed by feature name, with values typed as the spec says."""
    records = []
    for row in frame[spec.feature_names].itertuples(index=False, name=None):
        records.append(
            {
                feature.name: _json_value(value, feature.kind)
                for feature, value in zip(spec.features, row, strict=True)
            }
        )
    return records


def make_smoke_case(
    model_bytes: bytes,
    spec: FeatureSpec,
    frame: pd.DataFrame,
    threshold: float,
    *,
    rows: int = 64,
    seed: int = 20240601,
) -> SmokeCase:
    """Pick a deterministic set of rows and score them offline with the ONNX model.

    Half are a seeded sample, the rest the highest-scoring rows, so both decisions are covered.
    """
    if len(frame) == 0:
        raise ValueError("smoke test: no reference rows to send")
    features = frame[spec.feature_names].reset_index(drop=True)
    session = onnx_session(model_bytes)
    scores = onnx_predict_proba(session, features, spec)
    sampled = features.sample(n=min(rows // 2, len(features)), random_state=seed).index
    top = pd.Index(np.argsort(-scores, kind="stable")[: rows - len(sampled)])
    chosen = sampled.append(top.difference(sampled))
    picked = features.loc[chosen]
    return SmokeCase(
        records=request_records(picked, spec),
        probabilities=[float(p) for p in scores[chosen.to_numpy()]],
        threshold=float(threshold),
    )


@dataclass(frozen=True)
class SmokeComparison:
    """How the served answers compare with the offline ones."""

    records: int
    max_abs_diff: float
    mismatches: list[str]

    @property
    def passed(self) -> bool:
        return not self.mismatches


def compare_replies(
    case: SmokeCase,
    replies: Sequence[Mapping[str, Any]],
    *,
    tolerance: float = 1e-6,
    model_version: str | None = None,
) -> SmokeComparison:
    """Compare each reply's probability and decision with the offline prediction."""
    mismatches: list[str] = []
    if len(replies) != len(case.records):
        mismatches.append(f"{len(replies)} replies for {len(case.records)} records")
    max_diff = 0.0
    for i, (reply, expected_p, expected_d) in enumerate(
        zip(replies, case.probabilities, case.decisions, strict=False)
    ):
        try:
            served_p = float(reply[SCORE_FIELD])
            served_d = int(reply[DECISION_FIELD])
        except (KeyError, TypeError, ValueError) as err:
            mismatches.append(f"record {i}: unreadable reply {reply!r} ({err})")
            continue
        diff = abs(served_p - expected_p) if math.isfinite(served_p) else math.inf
        max_diff = max(max_diff, diff)
        if diff > tolerance:
            mismatches.append(f"record {i}: probability {served_p!r} != offline {expected_p!r}")
        if served_d != expected_d:
            mismatches.append(f"record {i}: decision {served_d} != offline {expected_d}")
        if model_version is not None and str(reply.get(VERSION_FIELD)) != model_version:
            mismatches.append(
                f"record {i}: model_version {reply.get(VERSION_FIELD)!r} != {model_version!r}"
            )
    return SmokeComparison(records=len(replies), max_abs_diff=max_diff, mismatches=mismatches)


def compare_batch_reply(
    case: SmokeCase, reply: Mapping[str, Any], *, tolerance: float = 1e-6
) -> SmokeComparison:
    """Compare a ``/predict_batch`` reply (``predictions`` in record order) with the case."""
    predictions = reply.get(PREDICTIONS_FIELD)
    if not isinstance(predictions, list):
        return SmokeComparison(0, 0.0, [f"no 'predictions' list in {str(reply)[:200]!r}"])
    return compare_replies(case, predictions, tolerance=tolerance)


@dataclass(frozen=True)
class SmokeReport:
    """Outcome of a passed smoke test, with the figures worth printing."""

    image: str
    records: int
    max_abs_diff: float
    start_to_ready_s: float
    log_path: Path


def check_reference(
    base_url: str,
    image: str,
    case: SmokeCase,
    *,
    model_version: str,
    tolerance: float = 1e-6,
    batch: bool = True,
) -> SmokeComparison:
    """POST every record to ``base_url``'s ``/predict`` (and all at once to ``/predict_batch``)
    and compare with the offline predictions; :class:`SmokeTestError` naming the first problems.

    The one reference-record check: the smoke test runs it on a throw-away container, a
    rollout on each new replica before it gets traffic.
    """
    replies: list[Any] = []
    for i, record in enumerate(case.records):
        status, reply = http_json("POST", f"{base_url}/predict", record)
        if status != 200:
            raise SmokeTestError(image, f"record {i}: HTTP {status}: {reply!r}")
        replies.append(reply)
    comparison = compare_replies(case, replies, tolerance=tolerance, model_version=model_version)
    mismatches = [f"/predict {m}" for m in comparison.mismatches]
    if batch:
        status, batch_reply = http_json(
            "POST", f"{base_url}/predict_batch", {RECORDS_FIELD: case.records}
        )
        if status != 200 or not isinstance(batch_reply, dict):
            raise SmokeTestError(image, f"/predict_batch: HTTP {status}: {batch_reply!r}")
        batch_cmp = compare_batch_reply(case, batch_reply, tolerance=tolerance)
        mismatches += [f"/predict_batch {m}" for m in batch_cmp.mismatches]
        if str(batch_reply.get(VERSION_FIELD)) != model_version:
            mismatches.append(
                f"/predict_batch model_version {batch_reply.get(VERSION_FIELD)!r} "
                f"!= {model_version!r}"
            )
    if mismatches:
        shown = "; ".join(mismatches[:10])
        more = len(mismatches) - 10
        reason = f"{len(mismatches)} mismatches with the offline ONNX predictions: {shown}" + (
            f" (+{more} more)" if more > 0 else ""
        )
        raise SmokeTestError(image, reason)
    return comparison


def smoke_test(
    settings: Settings,
    image: str,
    case: SmokeCase,
    *,
    model_version: str,
    ready_timeout: float = 60,
    tolerance: float = 1e-6,
    batch: bool = True,
) -> SmokeReport:
    """Start the image, wait for ``/readyz``, POST every record to ``/predict`` (and all of
    them at once to ``/predict_batch``), compare with the offline predictions.

    Passes only when every reply matches its offline ONNX prediction (probability within
    ``tolerance``, identical decision, the expected model version). The container is always
    stopped and removed; its log stays in the version's packaging folder.
    """
    name, _, version = image.rpartition("/")[2].partition(":")
    folder = release_log_dir(settings, name, version[1:])
    log_path = folder / "smoke-container.log"
    write_atomic(folder / "smoke-case.json", case.to_json())
    require_docker()
    # a path inside the throw-away smoke-test container, not on this host
    env = {"FRAUD_INFERENCE_LOG_DIR": "/tmp/inference_log"}  # nosec B108
    with run_container(image, log_path, env=env) as container:
        try:
            ready_s = container.wait_ready(ready_timeout)
            comparison = check_reference(
                container.base_url, image, case, model_version=model_version,
                tolerance=tolerance, batch=batch,
            )  # fmt: skip
        except SmokeTestError as err:
            failure: SmokeTestError | None = err
        else:
            failure = None
    if failure is not None:
        raise SmokeTestError(image, failure.reason, log_path) from failure
    return SmokeReport(
        image=image,
        records=comparison.records,
        max_abs_diff=comparison.max_abs_diff,
        start_to_ready_s=ready_s,
        log_path=log_path,
    )
