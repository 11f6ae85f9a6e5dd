"""MLflow side of a release: the run (params, metrics, data set, plots, reference snapshot,
ONNX model) and the registration; what the registered version says about itself (key, tags,
descriptions) is :mod:`flows.registry.version_record`.

:class:`ReleaseRecord` gathers what one candidate's run records; the flow builds it from the
training steps (:mod:`flows.training.release`) and passes it here.
"""

from __future__ import annotations

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

from data_contracts.artifacts import (
    REFERENCE_ARTIFACT,
    SPEC_FILE,
)
from data_contracts.schemas import LABEL_INT, ValidationResult
from data_contracts.spec import FeatureSpec
from flows.core.settings import Settings
from flows.registry import registry
from flows.registry.search_runs import log_search_runs, search_metrics, search_params
from flows.training.calibration_report import reliability_figure
from flows.training.data_checks import DataCheckReport
from flows.training.explain import feature_importance
from flows.training.gate import ChampionScore, Decision, GatePolicy
from flows.training.release import ExportedModel, TrainedCandidate
from flows.training.reporting import (
    calibration_figure,
    confusion_figure,
    importance_figure,
    pr_curve_figure,
    roc_figure,
    threshold_figure,
)
from flows.training.slices import slice_metrics
from flows.training.splitting import SplitPolicy, split_tags
from flows.training.train import Splits, TrainParams


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
    split_policy: SplitPolicy | None = None
    split_tags: dict[str, str] = field(default_factory=dict)
    data_checks: DataCheckReport | None = None
    importance: pd.DataFrame | None = None
    input_example: pd.DataFrame | None = None


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
        search = record.candidate.search
        mlflow.log_params(
            {f"train.{k}": v_ for k, v_ in record.params.model_dump().items()}
            | {f"gate.{k}": v_ for k, v_ in record.policy.model_dump().items()}
            | {"data.path": record.data_path, "data.digest": record.data_digest}
            | split_params(record.split_policy)
            | search_params(search)
        )
        metrics = {
            **model_metrics(record),  # the run shows the logged model's holdout scores too
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
            **search_metrics(search),
            **evidence_metrics(record.decision),
        }
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "git_commit": record.git_commit,
                "feature_spec_hash": record.spec.spec_hash(),
                "data_digest": record.data_digest,
                "gate.outcome": record.decision.outcome,
                "gate.reasons": "; ".join(record.decision.reasons) or "all checks passed",
                "quarantine.file": record.quarantine_path or "none",
                "calibration": record.candidate.calibration_text(),
                "threshold.objective": record.candidate.objective,
                **record.split_tags,
                **data_check_tags(record.data_checks),
            }
        )
        if record.data_checks is not None:
            mlflow.log_dict(
                {
                    "single_feature_roc_auc": record.data_checks.separation,
                    "leakage_threshold": record.data_checks.threshold,
                    "likely_leaks": list(record.data_checks.leaky),
                    "warnings": record.data_checks.warnings,
                },
                "data_checks.json",
            )
        dataset = mlflow.data.from_pandas(
            raw.head(1000),
            source=record.data_path,
            name=Path(record.data_path).name,
            targets=record.spec.label.name,
            digest=record.data_digest,
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict(record.spec.model_dump(mode="json"), SPEC_FILE)
        mlflow.log_dict(
            {
                "summary": record.validation.summary(),
                "fatal_errors": record.validation.fatal_errors,
                "failures_by_check": record.validation.failures_by_check,
            },
            "validation_report.json",
        )
        mlflow.log_dict(json.loads(record.decision.model_dump_json()), "gate_decision.json")
        if record.candidate.calibrator is not None:
            mlflow.log_dict(record.candidate.calibrator.model_dump(mode="json"), "calibration.json")
        if record.reference is not None:
            with tempfile.TemporaryDirectory() as tmp:
                ref_path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
                record.reference.to_parquet(ref_path, index=False)
                mlflow.log_artifact(str(ref_path), Path(REFERENCE_ARTIFACT).parent.as_posix())
            mlflow.log_metric("reference_rows", len(record.reference))
        _log_figures(record)
        if search is not None:
            log_search_runs(run_id, search)
        info = registry.log_onnx_model_info(
            record.exported.model_bytes,
            record.spec,
            record.candidate.threshold,
            settings.work_dir / run_id,
            {
                "data_digest": record.data_digest,
                "git_commit": record.git_commit,
                "run_id": run_id,
                "holdout_f1": m.f1,
                "calibration": record.candidate.calibration_text(),
            },
            input_example=record.input_example,
        )
        # the holdout scores belong to the logged model too: the registry shows them with it
        mlflow.log_metrics(model_metrics(record), model_id=info.model_id)
        return info.model_uri


def model_metrics(record: ReleaseRecord) -> dict[str, float]:
    """The holdout scores linked to the logged model (the model page and registry show them)."""
    m = record.candidate.metrics
    out = {
        "holdout_f1": m.f1,
        "holdout_precision": m.precision,
        "holdout_recall": m.recall,
        "holdout_pr_auc": m.pr_auc,
        "holdout_roc_auc": m.roc_auc,
        "threshold": record.candidate.threshold,
    }
    evidence = record.decision.evidence
    if evidence is not None and evidence.probability is not None:
        quality = evidence.probability.calibration.candidate
        out |= {"holdout_brier": quality.brier.estimate, "holdout_ece": quality.ece.estimate}
    return out


def _log_figures(record: ReleaseRecord) -> None:
    """PR curve, ROC, threshold trade-off, calibration, confusion matrix, importance."""
    m, y, scores = record.candidate.metrics, record.y_holdout, record.candidate.holdout_scores
    figures = {
        "pr_curve.png": lambda: pr_curve_figure(y, scores, m),
        "roc_curve.png": lambda: roc_figure(y, scores, m),
        "threshold_curves.png": lambda: threshold_figure(y, scores, m),
        "calibration.png": lambda: calibration_figure(y, scores),
        "confusion_matrix.png": lambda: confusion_figure(m),
    }
    evidence = record.decision.evidence
    if evidence is not None and evidence.probability is not None:
        paired = evidence.probability.paired_calibration
        champion = f"v{record.champion.version}" if record.champion else None
        figures["reliability.png"] = lambda: reliability_figure(paired, champion)
    if record.importance is not None:
        importance = record.importance
        figures["permutation_importance.png"] = lambda: importance_figure(importance)
        mlflow.log_table(importance, "permutation_importance.json")
    for name, make in figures.items():
        fig = make()
        mlflow.log_figure(fig, name)
        plt.close(fig)


def split_params(policy: SplitPolicy | None) -> dict[str, str]:
    """MLflow params of the split policy as asked (``split.kind`` may be ``auto``)."""
    if policy is None:
        return {}
    return {
        f"split.{k}": "none" if v is None else str(v)
        for k, v in policy.model_dump(mode="json").items()
    }


def data_check_tags(report: DataCheckReport | None) -> dict[str, str]:
    """MLflow tags of the data checks: the features that likely leak the label."""
    if report is None:
        return {}
    return {"data_checks.likely_leaks": ", ".join(report.leaky) or "none"}


def evidence_metrics(decision: Decision) -> dict[str, float]:
    """The gate's intervals and per-segment F1 as MLflow metrics (none without evidence)."""
    if decision.evidence is None:
        return {}
    out = decision.evidence.metrics()
    if decision.evidence.slices is not None:
        out |= slice_metrics(decision.evidence.slices)
    return out


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


def build_record(
    *,
    spec: FeatureSpec,
    params: TrainParams,
    policy: GatePolicy,
    data_path: Path,
    data_digest: str,
    raw_rows: int,
    validation: ValidationResult,
    quarantine: Path | None,
    splits: Splits,
    candidate: TrainedCandidate,
    exported: ExportedModel,
    champion: ChampionScore | None,
    decision: Decision,
    reference: pd.DataFrame | None,
    split_policy: SplitPolicy | None = None,
    data_report: DataCheckReport | None = None,
) -> ReleaseRecord:
    """The :class:`ReleaseRecord` of a run, with the split sizes, kind and periods, the holdout
    labels and the commit."""
    return ReleaseRecord(
        spec=spec,
        params=candidate.params or params,
        policy=policy,
        data_path=str(data_path.resolve()),
        data_digest=data_digest,
        raw_rows=raw_rows,
        validation=validation,
        quarantine_path=str(quarantine) if quarantine else None,
        splits_sizes=split_sizes(splits),
        candidate=candidate,
        exported=exported,
        champion=champion,
        decision=decision,
        git_commit=registry.git_commit(),
        y_holdout=splits.holdout[LABEL_INT].to_numpy(dtype=np.int64),
        reference=reference,
        split_policy=split_policy,
        split_tags=split_tags(splits),
        data_checks=data_report,
        importance=feature_importance(candidate.pipeline, splits.holdout, spec),
        input_example=splits.holdout[spec.feature_names].head(5),
    )


def split_sizes(splits: Splits) -> dict[str, int]:
    """Rows in each split, by name."""
    return {k: len(getattr(splits, k)) for k in ("train", "validation", "holdout")}


def register_release(
    settings: Settings,
    model_name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    descriptions: tuple[str, str] | None = None,
) -> str:
    """Register the run's model (idempotent, see :func:`register`); returns the version.

    ``descriptions`` (the registered model's, the version's; see :func:`descriptions`) are set
    on the registry entries when given.
    """
    client = registry.configure(settings)
    version = str(register(client, model_name, model_uri, run_id, tags).version)
    if descriptions is not None:
        registry.describe(client, model_name, version, *descriptions)
    return version
