"""The ``train-and-release`` Prefect flow: thin wiring over plain, unit-tested steps.

load -> validate (quarantine) -> split (id hash or time) -> data checks -> train -> evaluate
-> ONNX + parity -> score champion -> F1 gate -> track in MLflow -> register -> package
(bento, image, smoke test) -> move ``champion`` (:func:`flows.promotion.champion.move_champion`)
only when every gate passed.
Training steps are in :mod:`flows.training.release`, MLflow tracking in
:mod:`flows.registry.tracking`, packaging in :mod:`flows.packaging.package`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from data_contracts.schemas import ValidationResult
from data_contracts.spec import FeatureSpec
from flows.alerting.alerts import alert_on_failure
from flows.core.settings import Settings, check_pipeline_commit
from flows.core.tables import file_digest, load_table
from flows.packaging.errors import PackagingError
from flows.packaging.package import PackagedVersion, package_version
from flows.promotion import audit, champion, outcome
from flows.promotion.locks import promotion_lock_name
from flows.registry import registry, tracking, version_record
from flows.serving.rollout import RolloutFailed
from flows.training import data_checks, release
from flows.training.gate import ChampionScore, Decision, GatePolicy, gate_release
from flows.training.quarantine import write_quarantine
from flows.training.reporting import release_markdown
from flows.training.search import (
    Preset,
    SearchError,
    SearchSettings,
    search_settings,
    splits_by_time,
)
from flows.training.slices import resolve_slice_features
from flows.training.splitting import SplitError, SplitPolicy, Splits, apply_split, describe
from flows.training.train import TrainParams

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}


@task(name="load-data", cache_policy=NO_CACHE, **IO_RETRIES)
def load_data(path: Path) -> tuple[pd.DataFrame, str]:
    return load_table(path), file_digest(path)


@task(name="validate-contract", cache_policy=NO_CACHE)
def validate_data(df: pd.DataFrame, spec: FeatureSpec) -> ValidationResult:
    return release.validate(df, spec)


@task(name="write-quarantine", cache_policy=NO_CACHE, **IO_RETRIES)
def save_quarantine(result: ValidationResult, folder: Path, digest: str) -> Path | None:
    return write_quarantine(result, folder, digest)


@task(name="split", cache_policy=NO_CACHE)
def split_data(df: pd.DataFrame, spec: FeatureSpec, policy: SplitPolicy) -> Splits:
    return apply_split(df, spec, policy)


@task(name="check-training-data", cache_policy=NO_CACHE)
def check_data(splits: Splits, spec: FeatureSpec) -> data_checks.DataCheckReport:
    return data_checks.check_training_data(splits, spec)


@task(name="train", cache_policy=NO_CACHE)
def train(splits: Splits, spec: FeatureSpec, params: TrainParams, search: SearchSettings,
          policy: GatePolicy) -> release.TrainedCandidate:  # fmt: skip
    return release.train_candidate(splits, spec, params, search=search,
                                   time_ordered=splits_by_time(splits),
                                   objective=policy.objective())  # fmt: skip


@task(name="export-onnx-and-parity", cache_policy=NO_CACHE)
def export(
    candidate: release.TrainedCandidate, holdout: pd.DataFrame, spec: FeatureSpec, tol: float
) -> release.ExportedModel:
    return release.export_with_parity(candidate, holdout, spec, tol)


@task(name="reference-snapshot", cache_policy=NO_CACHE)
def snapshot(
    splits: Splits, candidate: release.TrainedCandidate, spec: FeatureSpec, max_rows: int
) -> pd.DataFrame:
    return release.reference_snapshot(splits, candidate, spec, max_rows)


@task(name="score-champion", cache_policy=NO_CACHE, **IO_RETRIES)
def champion_score(
    settings: Settings, model_name: str, holdout: pd.DataFrame, spec: FeatureSpec
) -> ChampionScore | None:
    champion = registry.fetch_champion(settings, model_name)
    if champion is None:
        return None
    return release.score_champion(
        str(champion.version.version), champion.model_bytes, champion.threshold,
        champion.spec, champion.spec_hash, holdout, spec, dict(champion.version.tags or {}),
    )  # fmt: skip


@task(name="f1-gate", cache_policy=NO_CACHE)
def gate(
    candidate: release.TrainedCandidate,
    exported: release.ExportedModel,
    champion: ChampionScore | None,
    holdout: pd.DataFrame,
    spec: FeatureSpec,
    policy: GatePolicy,
) -> Decision:
    return gate_release(candidate.metrics, candidate.holdout_scores, exported.parity, champion,
                        holdout, spec, policy, f1_threshold=candidate.f1_threshold,
                        calibration=candidate.calibration_text())  # fmt: skip


@task(name="start-mlflow-run", cache_policy=NO_CACHE, **IO_RETRIES)
def start_run(settings: Settings, model_name: str) -> str:
    return tracking.start_run(settings, model_name, str(runtime.flow_run.id or "") or None)


@task(name="track-in-mlflow", cache_policy=NO_CACHE, **IO_RETRIES)
def track(
    settings: Settings, run_id: str, record: tracking.ReleaseRecord, raw: pd.DataFrame
) -> str:
    return tracking.track(settings, run_id, record, raw)


@task(name="register-version", cache_policy=NO_CACHE, **IO_RETRIES)
def register(
    settings: Settings, model_name: str, model_uri: str, run_id: str, record: tracking.ReleaseRecord
) -> str:
    """Register the candidate with the tags and descriptions that make it self-describing."""
    tags = version_record.version_tags(record, run_id)
    described = version_record.descriptions(record)
    return tracking.register_release(settings, model_name, model_uri, run_id, tags, described)


@task(name="tag-version", cache_policy=NO_CACHE, **IO_RETRIES)
def tag_version(settings: Settings, model_name: str, version: str, tags: dict[str, str]) -> None:
    registry.set_version_tags(settings, model_name, version, tags)


@task(name="package-bento-and-image", cache_policy=NO_CACHE)
def package(
    settings: Settings,
    model_name: str,
    version: str,
    reference: pd.DataFrame,
    spec: FeatureSpec,
    build_image: bool,
) -> PackagedVersion:
    """Import into the bento store, build, containerize and smoke-test (retries inside)."""
    return package_version(
        settings,
        model_name,
        version,
        reference,
        spec,
        build_image=build_image,
        repository=settings.image_repository(model_name),
    )


@task(
    name="promote",
    cache_policy=NO_CACHE,
    retry_condition_fn=champion.retry_unless_refused,
    **IO_RETRIES,
)
def promote(
    settings: Settings,
    model_name: str,
    version: str,
    compared: str | None,
    reason: str,
    packaged: PackagedVersion,
) -> str:
    """Move ``champion`` to the version through the one champion move (lock, re-read, publish,
    roll the fleet, move, audit, undo on failure; a retry after the alias moved finishes the
    move). Returns what happened to the serving fleet."""
    get_run_logger().info("waiting for the promotion lock %s", promotion_lock_name(model_name))
    actor = f"flow-run:{runtime.flow_run.id}" if runtime.flow_run.id else audit.default_actor()
    moved = champion.promote_release(
        settings,
        model_name,
        version,
        compared=compared,
        reason=reason,
        actor=actor,
        image=packaged.image is not None,
    )
    get_run_logger().info("fleet: %s", moved.fleet)
    return moved.fleet


def _decision_artifact(name: str, description: str, **markdown: Any) -> None:
    """The run's ``release-decision`` artifact."""
    create_markdown_artifact(
        key="release-decision",
        markdown=release_markdown(model_name=name, **markdown),
        description=description,
    )


def _deliver(
    settings: Settings,
    name: str,
    version: str,
    splits: Splits,
    spec: FeatureSpec,
    build_image: bool,
    decision: Decision,
    champion_now: ChampionScore | None,
    report: Callable[..., None],
    step: Callable[[str], None],
) -> tuple[str | None, dict[str, str]]:
    """Package and promote a version that passed its gates; the refusal (if any) and facts."""
    step(f"packaging {name} v{version}: bento store, bentoml build"
         + (", containerize, smoke test" if build_image else " (IMAGE SKIPPED)"))  # fmt: skip
    try:
        packaged = package(settings, name, version, splits.holdout, spec, build_image)
    except PackagingError as err:
        tag_version(settings, name, version, {"release.outcome": "packaging_failed",
                                              "release.error": str(err)[:4900]})  # fmt: skip
        report("packaging failed", refused="packaging failed; the champion and its image are "
               f"untouched:\n\n```\n{err}\n```")  # fmt: skip
        raise
    if packaged.image is None:
        get_run_logger().warning("IMAGE NOT BUILT for %s: %s", packaged.tag, packaged.skipped)
    compared = champion_now.version if champion_now else None
    why = "; ".join(c.detail for c in decision.checks)
    promoted = promote(settings, name, version, compared, why, packaged, return_state=True)
    if not promoted.is_failed():
        tag_version(settings, name, version, {"release.outcome": "released"})
        return None, packaged.summary() | {"fleet": promoted.result()}
    try:
        promoted.result()
    except RolloutFailed as err:
        tag_version(settings, name, version, {"release.outcome": "rollout_failed",
                                              "release.error": str(err)[:4900]})  # fmt: skip
        why = "the serving fleet refused this version; the champion alias did not move and "
        report("rollout failed", refused=f"{why}the old replicas kept serving:\n\n```\n{err}\n```")
        raise
    except champion.ChampionMoved as err:
        tag_version(settings, name, version, {"release.outcome": "refused",
                                              "release.refusal": str(err)})  # fmt: skip
        return str(err), packaged.summary()
    raise AssertionError("a failed promotion raises")  # pragma: no cover - result() raised


def _stopped_artifact(name: str, path: Path, quarantine: Path | None, err: Exception) -> None:
    """The release-decision artifact of a run the data contract or the data checks stopped."""
    facts = {"data": str(path), "quarantine file": str(quarantine or "none")}
    by = (
        "the data contract"
        if isinstance(err, release.ContractViolation)
        else "the model search"
        if isinstance(err, SearchError)
        else "the data checks"
    )
    _decision_artifact(name, f"{name}: stopped by {by}", decision=None, metrics=None,
                       champion=None, facts=facts, stopped=f"```\n{err}\n```")  # fmt: skip


@flow(
    name="train-and-release",
    log_prints=True,
    result_serializer="json",
    on_failure=[alert_on_failure],
    on_crashed=[alert_on_failure],
)
def train_and_release(
    data_path: str | None = None,
    spec_path: str | None = None,
    model_name: str | None = None,
    params: TrainParams = TrainParams(),  # noqa: B008 - pydantic models are immutable
    policy: GatePolicy = GatePolicy(),  # noqa: B008
    split: SplitPolicy = SplitPolicy(),  # noqa: B008
    reference_rows: int = 200_000,
    build_image: bool = True,
    search: Preset = "quick",
    search_budget_seconds: float | None = None,
) -> State:
    """Train a candidate on contract-validated data and promote it only if every gate passes.

    Args:
        data_path: CSV or Parquet with labelled rows; default: the generated data set.
        spec_path: YAML or JSON feature spec; default: the card-fraud spec.
        model_name: registered model name; default: the spec's ``name``.
        params: classifier hyper-parameters (``cripple`` trains a deliberately bad model).
        policy: gate thresholds (F1 floor, champion tolerance, parity, quarantine limit,
            ``block_on_leakage``).
        split: how rows are divided (``kind`` auto/hash/time, ``holdout_fraction``,
            ``validation_fraction``, ``holdout_after``); auto holds out the most recent period
            when the spec has an event-time column.
        reference_rows: size of the drift reference snapshot logged with the model.
        build_image: containerize and smoke-test the bento before promotion; switch off only
            on machines without Docker (the run summary then says IMAGE NOT BUILT).
        search: model search preset: ``off`` trains the fixed model of ``params``; ``quick``
            and ``thorough`` rank logistic regression and boosted trees by cross-validated
            average precision and refit the winner (``params`` then gives class weights, seed
            and each family's default configuration).
        search_budget_seconds: wall-time budget of the search (default: the preset's);
            candidates not started within it are listed as skipped.
    """
    logger, settings, started = get_run_logger(), Settings(), time.perf_counter()
    if commit := check_pipeline_commit():  # a flow container: its code must be the pool's
        logger.info("pipeline image of commit %s", commit[:12])
    searching = search_settings(search, search_budget_seconds)
    path, spec = release.resolve_inputs(settings.default_data_path, data_path, spec_path)
    name = model_name or spec.name
    resolve_slice_features(spec, policy.slice_features)  # a misnamed feature stops the run now

    def step(msg: str) -> None:
        logger.info("[%6.1fs] %s", time.perf_counter() - started, msg)

    step(f"loading {path} (spec {spec.name} {spec.spec_hash()})")
    raw, digest = load_data(path)
    step(f"validating {len(raw):,} rows against the contract")
    result = validate_data(raw, spec)
    quarantine = save_quarantine(result, settings.quarantine_dir, digest)
    step(result.summary() + (f"\nquarantine file: {quarantine}" if quarantine else ""))

    try:
        release.enforce_contract(result, policy)
        data_checks.check_label_varies(result.valid, spec)
        splits = split_data(result.valid, spec, split)
        checked = check_data(splits, spec)
        data_checks.enforce_leakage(checked, policy.block_on_leakage)
    except (release.ContractViolation, SplitError, data_checks.TrainingDataError) as err:
        _stopped_artifact(name, path, quarantine, err)
        raise
    for warning in checked.warnings:
        logger.warning(warning)
    what = params.classifier if not searching.enabled else f"model search {search}"
    step(f"{describe(splits)}; training {what}")
    try:
        candidate = train(splits, spec, params, searching, policy)
    except SearchError as err:  # e.g. an early time fold without a fraud: say so, stop cleanly
        _stopped_artifact(name, path, quarantine, err)
        raise
    if candidate.search is not None:
        step(f"search: {candidate.search.winner.name} won ({candidate.search.seconds:.1f} s)")
    step(f"holdout F1 {candidate.metrics.f1:.4f} at threshold {candidate.threshold:.4f}")
    exported = export(candidate, splits.holdout, spec, policy.parity_tolerance)
    step(f"ONNX parity: {exported.parity.max_abs_diff:.2e}, {exported.parity.decision_flips} flips")
    champion_now = champion_score(settings, name, splits.holdout, spec)
    decision = gate(candidate, exported, champion_now, splits.holdout, spec, policy)
    interval = decision.evidence.f1.candidate_text() if decision.evidence else "n/a"
    step(f"gate: {decision.outcome}, holdout F1 interval {interval} {decision.reasons or ''}")
    record = tracking.build_record(
        spec=spec, params=params, policy=policy, data_path=path, data_digest=digest,
        raw_rows=len(raw), validation=result, quarantine=quarantine, splits=splits,
        candidate=candidate, exported=exported, champion=champion_now, decision=decision,
        reference=snapshot(splits, candidate, spec, reference_rows),
        split_policy=split, data_report=checked,
    )  # fmt: skip
    run_id = start_run(settings, name)
    model_uri = track(settings, run_id, record, raw)
    version = register(settings, name, model_uri, run_id, record)
    facts = tracking.summary_facts(record, version, run_id, settings)

    def report(outcome_text: str, refused: str | None = None) -> None:
        _decision_artifact(name, f"{name} v{version}: {outcome_text}", decision=decision,
                           metrics=candidate.metrics, champion=champion_now, facts=facts,
                           refused=refused, splits=splits, warnings=checked.warnings,
                           search=candidate.search,
                           threshold_from=candidate.threshold_from)  # fmt: skip

    unchanged = decision.promote and champion_now is not None and champion_now.version == version
    refused = None
    if unchanged:  # a rerun found the version it registered before, already the champion
        step(f"{name} v{version} is already the champion (same data digest and model)")
    elif decision.promote:
        refused, packaged_facts = _deliver(settings, name, version, splits, spec, build_image,
                                           decision, champion_now, report, step)  # fmt: skip
        facts.update(packaged_facts)
    result_data = outcome.outcome_data(
        model_name=name, version=version, run_id=run_id, decision=decision,
        holdout_f1=candidate.metrics.f1, champion=champion_now, refused=refused,
        unchanged=unchanged,
    )  # fmt: skip
    report(result_data["outcome"], refused)
    step(f"{name} v{version}: {result_data['outcome']}")
    return outcome.final_state(result_data, decision)
