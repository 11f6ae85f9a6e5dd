"""The train-and-release steps as plain functions; the Prefect flow only wires them together."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from sklearn.pipeline import Pipeline

from data_contracts.schemas import LABEL_INT, ValidationResult, validate_frame
from data_contracts.spec import FeatureSpec, parse_spec
from flows.core.settings import Settings
from flows.delivery import registry
from flows.delivery.locks import promotion_lock_name  # noqa: F401 - re-exported for the flow
from flows.training.gate import ChampionScore, Decision, GatePolicy
from flows.training.onnx_export import (
    ParityReport,
    export_onnx,
    onnx_predict_proba,
    onnx_session,
    parity,
    sha256,
)
from flows.training.reporting import confusion_figure, pr_curve_figure
from flows.training.train import (
    Metrics,
    Splits,
    TrainParams,
    check_label_classes,
    evaluate,
    fit,
    predict_proba,
    tune_threshold,
)


class ChampionMoved(RuntimeError):
    """The champion changed while this run was gating: promoting now would skip the comparison."""


def check_champion_unchanged(current: str | None, compared: str | None, candidate: str) -> None:
    """Refuse to promote when the champion is no longer the one the candidate was gated against."""
    if current != compared:
        raise ChampionMoved(
            f"candidate v{candidate} not promoted: it was compared against champion "
            f"{'v' + compared if compared else '(none)'}, but the champion is now "
            f"{'v' + current if current else '(none)'}; rerun to gate against the new champion"
        )


class ContractViolation(ValueError):
    """The data broke the contract badly enough to stop the run; the message is the report."""


def enforce_contract(result: ValidationResult, policy: GatePolicy) -> None:
    """Raise :class:`ContractViolation` on fatal column errors or too many quarantined rows."""
    problems = list(result.fatal_errors)
    if result.quarantined_share > policy.max_quarantine_share:
        problems.append(
            f"{result.quarantined_rows} of {result.total_rows} rows "
            f"({result.quarantined_share:.2%}) broke the contract, above the limit of "
            f"{policy.max_quarantine_share:.2%}"
        )
    if problems:
        raise ContractViolation(
            "data contract violated:\n- " + "\n- ".join(problems) + "\n\n" + result.summary()
        )


def validate(df: pd.DataFrame, spec: FeatureSpec) -> ValidationResult:
    """Validate labelled training data against the spec (lazy: every failure is reported)."""
    return validate_frame(df, spec, labelled=True)


@dataclass
class TrainedCandidate:
    """A fitted candidate with its tuned threshold and holdout scores."""

    pipeline: Pipeline
    threshold: float
    holdout_scores: np.ndarray
    metrics: Metrics
    validation_metrics: Metrics


def train_candidate(splits: Splits, spec: FeatureSpec, params: TrainParams) -> TrainedCandidate:
    """Fit, tune the F1 threshold on validation data, and score the frozen holdout."""
    check_label_classes(splits.train, spec)
    pipeline = fit(splits.train, spec, params)
    y_val = splits.validation[LABEL_INT].to_numpy(dtype=np.int64)
    val_scores = predict_proba(pipeline, splits.validation, spec)
    threshold = tune_threshold(y_val, val_scores)
    holdout_scores = predict_proba(pipeline, splits.holdout, spec)
    y_hold = splits.holdout[LABEL_INT].to_numpy(dtype=np.int64)
    return TrainedCandidate(
        pipeline=pipeline,
        threshold=threshold,
        holdout_scores=holdout_scores,
        metrics=evaluate(y_hold, holdout_scores, threshold),
        validation_metrics=evaluate(y_val, val_scores, threshold),
    )


@dataclass
class ExportedModel:
    model_bytes: bytes
    sha256: str
    parity: ParityReport


def export_with_parity(
    candidate: TrainedCandidate, holdout: pd.DataFrame, spec: FeatureSpec, tolerance: float
) -> ExportedModel:
    """Export to ONNX and compare ONNX Runtime with scikit-learn on the whole holdout."""
    model_bytes = export_onnx(candidate.pipeline, spec)
    p_onnx = onnx_predict_proba(onnx_session(model_bytes), holdout, spec)
    report = parity(candidate.holdout_scores, p_onnx, candidate.threshold, tolerance)
    return ExportedModel(model_bytes=model_bytes, sha256=sha256(model_bytes), parity=report)


def score_champion(
    version: ModelVersion, holdout: pd.DataFrame, spec: FeatureSpec, work_dir: Path
) -> ChampionScore:
    """Score the champion afresh from its ONNX artifact on the candidate's holdout."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        champion = registry.download_model(version, Path(tmp))
    champion_spec = parse_spec(champion.spec)
    base = {"version": str(version.version), "spec_hash": champion.spec_hash}
    missing = [f for f in champion_spec.feature_names if f not in holdout.columns]
    if champion_spec.label.name != spec.label.name or missing:
        return ChampionScore(
            **base, f1=None, note=f"its spec {champion.spec_hash} needs columns {missing}"
        )
    scores = onnx_predict_proba(onnx_session(champion.model_bytes), holdout, champion_spec)
    y = holdout[LABEL_INT].to_numpy(dtype=np.int64)
    return ChampionScore(**base, f1=evaluate(y, scores, champion.threshold).f1)


@dataclass
class ReleaseRecord:
    """Everything MLflow needs to record one candidate."""

    spec: FeatureSpec
    params: TrainParams
    policy: GatePolicy
    data_path: str
    data_digest: str
    raw_rows: int
    validation: ValidationResult
    quarantine_path: str | None
    splits_sizes: dict[str, int]
    candidate: TrainedCandidate
    exported: ExportedModel
    champion: ChampionScore | None
    decision: Decision
    git_commit: str
    reference: pd.DataFrame | None = None
    flow_run_id: str | None = None
    y_holdout: np.ndarray = field(default_factory=lambda: np.zeros(0))


REFERENCE_ARTIFACT = "reference/reference.parquet"


def reference_snapshot(
    splits: Splits, candidate: TrainedCandidate, spec: FeatureSpec, max_rows: int, seed: int = 0
) -> pd.DataFrame:
    """The drift reference that travels with the model: unseen rows with the model's scores.

    Validation and holdout rows were not used to fit the model, so their score distribution is
    what live traffic should look like. Sampled per class (stratified) down to ``max_rows``.
    """
    val_scores = predict_proba(candidate.pipeline, splits.validation, spec)
    frames = []
    for part, scores in (
        (splits.validation, val_scores),
        (splits.holdout, candidate.holdout_scores),
    ):
        cols = [c for c in [*spec.feature_names, spec.event_time_column, LABEL_INT] if c]
        frame = part[cols].copy()
        frame["score"] = scores.astype(np.float64)
        frames.append(frame)
    ref = pd.concat(frames, ignore_index=True)
    if len(ref) > max_rows:
        share = max_rows / len(ref)
        ref = (
            ref.groupby(LABEL_INT, group_keys=False)
            .sample(frac=share, random_state=seed)
            .reset_index(drop=True)
        )
    return ref


def start_run(settings: Settings, model_name: str, flow_run_id: str | None) -> str:
    """Create the MLflow run of this release (once) and return its id."""
    registry.configure(settings)
    tags = {"model_name": model_name}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    with mlflow.start_run(run_name=f"{model_name}-candidate", tags=tags) as run:
        return run.info.run_id


def track(settings: Settings, run_id: str, record: ReleaseRecord, raw: pd.DataFrame) -> str:
    """Log params, metrics, data set, spec, plots and the ONNX model into the run.

    Returns the logged model's URI. Safe to retry: values are overwritten, not duplicated.
    """
    registry.configure(settings)
    m, v = record.candidate.metrics, record.candidate.validation_metrics
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(
            {f"train.{k}": v_ for k, v_ in record.params.model_dump().items()}
            | {f"gate.{k}": v_ for k, v_ in record.policy.model_dump().items()}
            | {"data.path": record.data_path, "data.digest": record.data_digest}
        )
        mlflow.log_metrics(
            {
                "holdout_f1": m.f1,
                "holdout_precision": m.precision,
                "holdout_recall": m.recall,
                "holdout_pr_auc": m.pr_auc,
                "holdout_roc_auc": m.roc_auc,
                "threshold": record.candidate.threshold,
                "validation_f1": v.f1,
                "parity_max_abs_diff": record.exported.parity.max_abs_diff,
                "parity_decision_flips": record.exported.parity.decision_flips,
                "rows_raw": record.raw_rows,
                "rows_valid": len(record.validation.valid),
                "rows_quarantined": record.validation.quarantined_rows,
                "quarantined_share": record.validation.quarantined_share,
                **{f"rows_{k}": n for k, n in record.splits_sizes.items()},
                **(
                    {"champion_holdout_f1": record.champion.f1}
                    if record.champion and record.champion.f1 is not None
                    else {}
                ),
            }
        )
        mlflow.set_tags(
            {
                "git_commit": record.git_commit,
                "feature_spec_hash": record.spec.spec_hash(),
                "data_digest": record.data_digest,
                "gate.outcome": record.decision.outcome,
                "gate.reasons": "; ".join(record.decision.reasons) or "all checks passed",
                "quarantine.file": record.quarantine_path or "none",
            }
        )
        dataset = mlflow.data.from_pandas(
            raw.head(1000),
            source=record.data_path,
            name=Path(record.data_path).name,
            targets=record.spec.label.name,
            digest=record.data_digest,
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict(record.spec.model_dump(mode="json"), "feature_spec.json")
        mlflow.log_dict(
            {
                "summary": record.validation.summary(),
                "fatal_errors": record.validation.fatal_errors,
                "failures_by_check": record.validation.failures_by_check,
            },
            "validation_report.json",
        )
        mlflow.log_dict(json.loads(record.decision.model_dump_json()), "gate_decision.json")
        if record.reference is not None:
            with tempfile.TemporaryDirectory() as tmp:
                ref_path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
                record.reference.to_parquet(ref_path, index=False)
                mlflow.log_artifact(str(ref_path), Path(REFERENCE_ARTIFACT).parent.as_posix())
            mlflow.log_metric("reference_rows", len(record.reference))
        for name, fig in (
            ("pr_curve.png", pr_curve_figure(record.y_holdout, record.candidate.holdout_scores, m)),
            ("confusion_matrix.png", confusion_figure(m)),
        ):
            mlflow.log_figure(fig, name)
            plt.close(fig)
        return registry.log_onnx_model(
            record.exported.model_bytes,
            record.spec,
            record.candidate.threshold,
            settings.work_dir / run_id,
            {
                "data_digest": record.data_digest,
                "git_commit": record.git_commit,
                "run_id": run_id,
                "holdout_f1": m.f1,
            },
        )


def release_key(record: ReleaseRecord) -> str:
    """Identity of a candidate: what it was trained from (data digest, spec, hyper-parameters,
    split sizes), the gate policy it faces and what the fitted model does (its holdout scores
    and threshold).

    A rerun of the same release maps to the version it registered before. Neither the ONNX
    bytes (the converter's node order varies with Python's string hashing) nor the git commit
    (an unrelated commit does not change the model) are part of the key.
    """
    scores = np.round(np.asarray(record.candidate.holdout_scores, dtype=np.float64), 6)
    parts = {
        "data_digest": record.data_digest,
        "spec_hash": record.spec.spec_hash(),
        "params": record.params.model_dump(mode="json"),
        "splits": record.splits_sizes,
        "policy": record.policy.model_dump(mode="json"),
        "threshold": f"{record.candidate.threshold:.9f}",
        "holdout_scores": hashlib.sha256(scores.tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def version_tags(record: ReleaseRecord, run_id: str) -> dict[str, str]:
    """Tags that make a registered version self-describing (including why it was blocked)."""
    return {
        registry.KEY_TAG: release_key(record),
        "gate.outcome": record.decision.outcome,
        "gate.reasons": "; ".join(record.decision.reasons) or "all checks passed",
        "holdout_f1": f"{record.candidate.metrics.f1:.6f}",
        "threshold": repr(record.candidate.threshold),
        "onnx_sha256": record.exported.sha256,
        "feature_spec_hash": record.spec.spec_hash(),
        "data_digest": record.data_digest,
        "git_commit": record.git_commit,
        "run_id": run_id,
    }


def register(
    client: MlflowClient, model_name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> ModelVersion:
    """Register the candidate (idempotent per run); blocked candidates are registered too."""
    return registry.register_version(client, model_name, model_uri, run_id, tags)


def summary_facts(
    record: ReleaseRecord, version: str, run_id: str, settings: Settings
) -> dict[str, Any]:
    """The facts printed at the end of a run and shown in the Prefect artifact."""
    return {
        "version": version,
        "mlflow run": run_id,
        "tracking URI": settings.tracking_uri,
        "data": f"{record.data_path} (digest {record.data_digest})",
        "rows raw / valid / quarantined": f"{record.raw_rows:,} / {len(record.validation.valid):,}"
        f" / {record.validation.quarantined_rows:,}",
        "quarantine file": record.quarantine_path or "none",
        "feature spec": f"{record.spec.name} v{record.spec.version} ({record.spec.spec_hash()})",
        "onnx sha256": record.exported.sha256,
        "git commit": record.git_commit,
    }
