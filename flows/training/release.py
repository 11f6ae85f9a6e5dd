"""The training steps of a release as plain functions: contract, fit, ONNX export with parity,
the champion's fresh score and the drift reference snapshot. The Prefect flow wires them; MLflow
tracking and registration are in :mod:`flows.registry.tracking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from data_contracts.artifacts import TAG_CALIBRATION
from data_contracts.schemas import LABEL_INT, ValidationResult, validate_frame
from data_contracts.spec import FeatureSpec, default_spec, load_spec, parse_spec
from flows.training.calibration import Calibrator, calibrate, calibrated, calibrator_of
from flows.training.gate import ChampionScore, GatePolicy
from flows.training.onnx_export import (
    ParityReport,
    export_onnx,
    onnx_predict_proba,
    onnx_session,
    parity,
    sha256,
)
from flows.training.search import (
    SearchResult,
    SearchSettings,
    refit,
    run_search,
    search_settings,
)
from flows.training.splitting import rows_learned_from
from flows.training.thresholds import (
    CostError,
    ThresholdObjective,
    check_costs,
    choose_threshold,
)
from flows.training.train import (
    Metrics,
    Splits,
    TrainParams,
    check_label_classes,
    evaluate,
    fit,
    predict_proba,
)


class ContractViolation(ValueError):
    """The data broke the contract badly enough to stop the run; the message is the report."""


def enforce_contract(result: ValidationResult, policy: GatePolicy) -> None:
    """Raise :class:`ContractViolation` on fatal column errors, too many quarantined rows, or
    costs the policy names that the data cannot give (a missing cost column)."""
    problems = list(result.fatal_errors)
    try:
        check_costs(result.valid, policy.objective())
    except CostError as err:
        problems.append(str(err))
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
    """A fitted candidate with its tuned threshold and holdout scores.

    ``pipeline`` is the served model: the fitted pipeline followed by its calibrator
    (:class:`flows.training.calibration.CalibratedModel`), or the bare pipeline when
    calibration is off. ``params`` are the hyper-parameters of the fitted model (the search's
    winner when a search ran); ``search`` holds the ranking of every configuration tried, None
    without a search. ``objective`` is what the threshold optimises; ``f1_threshold`` the one
    F1 would have chosen on the same rows (the threshold itself under the F1 objective).
    """

    pipeline: Pipeline | Any
    threshold: float
    holdout_scores: np.ndarray
    metrics: Metrics
    validation_metrics: Metrics
    params: TrainParams | None = None
    search: SearchResult | None = None
    threshold_from: str = "validation"
    objective: str = "f1"
    f1_threshold: float | None = None

    @property
    def calibrator(self) -> Calibrator | None:
        """How the served scores are calibrated (None: they are not)."""
        return calibrator_of(self.pipeline)

    def calibration_text(self) -> str:
        """How the scores were calibrated, in one line."""
        c = self.calibrator
        return c.describe() if c else "none: the class-weighted scores are served as they are"


def train_candidate(
    splits: Splits,
    spec: FeatureSpec,
    params: TrainParams,
    *,
    search: SearchSettings | str = "off",
    time_ordered: bool = False,
    objective: ThresholdObjective | None = None,
) -> TrainedCandidate:
    """Fit a candidate, calibrate it, tune its threshold and score the frozen holdout.

    With ``search="off"`` (or ``params.cripple``, which shuffles the fixed model's labels) the
    fixed model of ``params`` is fitted on the training rows and its threshold tuned on the
    validation rows. Otherwise the model search (:func:`run_search`) ranks the families on the
    training rows by cross-validated average precision (time-ordered folds when
    ``time_ordered``) and the winner is refitted on all training rows. Its threshold comes from
    its out-of-fold scores when the folds covered every training row; when the search ran on a
    sample, the folds' models learned from far fewer rows than the refitted one and score on
    another scale (on 1M rows their threshold cost the refit 1.9 points of holdout F1), so the
    threshold is tuned on the validation rows when they are at least as many as the out-of-fold
    scores. ``threshold_from`` names the source.

    The fitted model is calibrated as ``params.calibration`` says
    (:func:`flows.training.calibration.calibrate`: cross-fitted on the training rows), and the
    threshold is chosen on the calibrated scale (the out-of-fold scores are mapped through the
    calibrator) for ``objective`` (:func:`flows.training.thresholds.choose_threshold`; F1 by
    default).
    """
    check_label_classes(splits.train, spec)
    settings = search_settings(search) if isinstance(search, str) else search
    result = None
    if settings.enabled and not params.cripple:
        result = run_search(splits.train, spec, params, settings, time_ordered=time_ordered)
        pipeline, params = refit(splits.train, spec, result.params)
    else:
        pipeline = fit(splits.train, spec, params)
    model = calibrate(pipeline, splits.train, spec, params)
    y_val = splits.validation[LABEL_INT].to_numpy(dtype=np.int64)
    val_scores = predict_proba(model, splits.validation, spec)
    # the folds' threshold fits the refit when they covered every training row, or when the
    # validation part is too small to do better
    if (
        result is not None
        and result.oof_scores is not None
        and (result.search_rows >= result.train_rows or len(y_val) < result.oof_rows)
    ):
        y_src, s_src = result.oof_labels, calibrated(model, result.oof_scores)
        frame = splits.train.iloc[result.oof_positions]
        source = f"{result.oof_rows:,} out-of-fold scores"
    else:
        y_src, s_src, frame = y_val, val_scores, splits.validation
        source = f"{len(y_val):,} validation rows"
    choice = choose_threshold(objective or ThresholdObjective(), y_src, s_src, frame)
    threshold = choice.threshold
    holdout_scores = predict_proba(model, splits.holdout, spec)
    y_hold = splits.holdout[LABEL_INT].to_numpy(dtype=np.int64)
    return TrainedCandidate(
        pipeline=model,
        threshold=threshold,
        holdout_scores=holdout_scores,
        metrics=evaluate(y_hold, holdout_scores, threshold),
        validation_metrics=evaluate(y_val, val_scores, threshold),
        params=params,
        search=result,
        threshold_from=source,
        objective=choice.objective,
        f1_threshold=choice.f1_threshold,
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
    version: str,
    model_bytes: bytes,
    threshold: float,
    champion_spec: dict[str, Any],
    spec_hash: str,
    holdout: pd.DataFrame,
    spec: FeatureSpec,
    tags: dict[str, str] | None = None,
) -> ChampionScore:
    """Score the champion afresh, from its ONNX bytes, on the candidate's holdout.

    The delivery side fetches the champion from the registry; this step only scores it, with
    the champion's own spec and threshold. Its per-row scores travel with the result (not
    serialised) for the gate's paired bootstrap and segments, with the rows it may have learned
    from as its version ``tags`` record its split (:func:`rows_learned_from`). A champion whose
    spec needs columns the holdout lacks (or another label) gets no F1 and a note saying why.
    """
    parsed = parse_spec(champion_spec)
    base = {"version": str(version), "spec_hash": spec_hash, "threshold": float(threshold)}
    missing = [f for f in parsed.feature_names if f not in holdout.columns]
    if parsed.label.name != spec.label.name or missing:
        return ChampionScore(**base, f1=None, note=f"its spec {spec_hash} needs columns {missing}")
    scores = onnx_predict_proba(onnx_session(model_bytes), holdout, parsed).astype(np.float64)
    y = holdout[LABEL_INT].to_numpy(dtype=np.int64)
    overlap = rows_learned_from(
        tags or {}, holdout, id_column=parsed.row_id_column,
        event_time_column=parsed.event_time_column,
        # derived ids hash the row's content as the spec reads it: another spec, other ids
        same_ids=parsed.id_column is not None or spec_hash == spec.spec_hash(),
    )  # fmt: skip
    return ChampionScore(**base, f1=evaluate(y, scores, threshold).f1, scores=scores,
                         seen=overlap.seen, overlap=overlap.basis,
                         calibration=(tags or {}).get(TAG_CALIBRATION, ""))  # fmt: skip


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


def resolve_inputs(
    default_data: Path, data_path: str | None, spec_path: str | None
) -> tuple[Path, FeatureSpec]:
    """The data file and spec of a run: the given ones, else the generated set and shipped spec."""
    spec = load_spec(spec_path) if spec_path else default_spec()
    path = Path(data_path) if data_path else default_data
    if not path.exists():
        hint = " (generate it with `make data`)" if not data_path else ""
        raise FileNotFoundError(f"data file {path} does not exist{hint}")
    return path, spec
