"""The ``train-and-release`` Prefect flow: thin wiring over the steps in ``flows.training.release``.

load -> validate (quarantine) -> split -> train -> evaluate -> ONNX + parity -> score champion
-> F1 gate -> track in MLflow -> register -> move ``champion`` only when every gate passed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.states import Completed, State

from data_contracts.schemas import LABEL_INT, ValidationResult
from data_contracts.spec import FeatureSpec, default_spec, load_spec
from flows.alerting.alerts import alert_on_failure
from flows.core.settings import Settings
from flows.delivery import audit, packaging, registry
from flows.delivery.locks import ensure_lock
from flows.training import release
from flows.training.data_io import file_digest, load_table, write_quarantine
from flows.training.gate import ChampionScore, Decision, GatePolicy, decide_promotion
from flows.training.reporting import release_markdown
from flows.training.train import Splits, TrainParams, split

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
def split_data(df: pd.DataFrame, spec: FeatureSpec, holdout: float, validation: float) -> Splits:
    return split(df, spec, holdout, validation)


@task(name="train", cache_policy=NO_CACHE)
def train(splits: Splits, spec: FeatureSpec, params: TrainParams) -> release.TrainedCandidate:
    return release.train_candidate(splits, spec, params)


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
    client = registry.configure(settings)
    version = registry.current_champion(client, model_name, settings.champion_alias)
    if version is None:
        return None
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return release.score_champion(version, holdout, spec, settings.work_dir)


@task(name="f1-gate", cache_policy=NO_CACHE)
def gate(
    candidate: release.TrainedCandidate,
    exported: release.ExportedModel,
    champion: ChampionScore | None,
    policy: GatePolicy,
) -> Decision:
    return decide_promotion(candidate.metrics, exported.parity, champion, policy)


@task(name="start-mlflow-run", cache_policy=NO_CACHE, **IO_RETRIES)
def start_run(settings: Settings, model_name: str) -> str:
    return release.start_run(settings, model_name, str(runtime.flow_run.id or "") or None)


@task(name="track-in-mlflow", cache_policy=NO_CACHE, **IO_RETRIES)
def track(settings: Settings, run_id: str, record: release.ReleaseRecord, raw: pd.DataFrame) -> str:
    return release.track(settings, run_id, record, raw)


@task(name="register-version", cache_policy=NO_CACHE, **IO_RETRIES)
def register(
    settings: Settings, model_name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> str:
    client = registry.configure(settings)
    return str(release.register(client, model_name, model_uri, run_id, tags).version)


@task(name="tag-version", cache_policy=NO_CACHE, **IO_RETRIES)
def tag_version(settings: Settings, model_name: str, version: str, tags: dict[str, str]) -> None:
    client = registry.configure(settings)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def _retry_unless_refused(task, task_run, state) -> bool:
    """Retry I/O failures of the promotion, never a refusal (the champion moved)."""
    try:
        state.result()
    except release.ChampionMoved:
        return False
    except Exception:
        return True
    return False


@task(name="package-bento-and-image", cache_policy=NO_CACHE)
def package(
    settings: Settings,
    model_name: str,
    version: str,
    reference: pd.DataFrame,
    spec: FeatureSpec,
    build_image: bool,
) -> packaging.PackagedVersion:
    """Import into the bento store, build, containerize and smoke-test (retries inside)."""
    return packaging.package_version(
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
    retry_condition_fn=_retry_unless_refused,
    **IO_RETRIES,
)
def promote(
    settings: Settings,
    model_name: str,
    version: str,
    compared: str | None,
    reason: str,
    packaged: packaging.PackagedVersion,
) -> None:
    """Inside a strict global lock: re-read the alias (MLflow has no compare-and-set), point the
    served bento/image at the new version, move the alias and append to the audit log.

    If the alias cannot be moved, the served pointers go back to the previous champion.
    """
    lock = release.promotion_lock_name(model_name)
    ensure_lock(lock)
    get_run_logger().info("waiting for the promotion lock %s", lock)
    with concurrency(lock, occupy=1, strict=True, timeout_seconds=300):
        client = registry.configure(settings)
        current = registry.current_champion(client, model_name, settings.champion_alias)
        current_version = str(current.version) if current else None
        actor = f"flow-run:{runtime.flow_run.id}" if runtime.flow_run.id else audit.default_actor()
        image = packaged.image is not None
        repository = settings.image_repository(model_name)
        if current_version == version and compared != version:
            # an earlier attempt of this task moved the alias, then failed (e.g. writing the
            # audit record): finish that promotion instead of refusing our own move
            packaging.publish_champion(settings, packaged.tag, image=image, repository=repository)
        else:
            release.check_champion_unchanged(current_version, compared, version)
            previous = packaging.read_champion_pointer(settings)
            packaging.publish_champion(settings, packaged.tag, image=image, repository=repository)
            try:
                registry.move_alias(client, model_name, settings.champion_alias, version)
            except Exception:
                if previous:
                    _restore_served(settings, previous, image, repository)
                raise
        already = any(
            m.action == "release" and m.to_version == version and m.actor == actor
            for m in audit.history(client, model_name)
        )
        if not already:
            audit.record_move(
                client,
                settings,
                model_name=model_name,
                alias=settings.champion_alias,
                action="release",
                from_version=compared,
                to_version=version,
                reason=reason,
                actor=actor,
            )


def _restore_served(settings: Settings, previous: str, image: bool, repository: str) -> None:
    """Point the served bento (and ``latest`` image, when the previous one has an image) back."""
    has_image = False
    if image:
        try:
            packaging.image_facts(f"{repository}:{previous.partition(':')[2]}")
            has_image = True
        except packaging.PackagingError:
            has_image = False  # the previous champion was released without an image
    packaging.publish_champion(settings, previous, image=has_image, repository=repository)


def _resolve_inputs(
    settings: Settings, data_path: str | None, spec_path: str | None
) -> tuple[Path, FeatureSpec]:
    spec = load_spec(spec_path) if spec_path else default_spec()
    path = Path(data_path) if data_path else settings.default_data_path
    if not path.exists():
        hint = " (generate it with `make data`)" if not data_path else ""
        raise FileNotFoundError(f"data file {path} does not exist{hint}")
    return path, spec


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
    holdout_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    reference_rows: int = 200_000,
    build_image: bool = True,
) -> State:
    """Train a candidate on contract-validated data and promote it only if every gate passes.

    Args:
        data_path: CSV or Parquet with labelled rows; default: the generated data set.
        spec_path: YAML or JSON feature spec; default: the card-fraud spec.
        model_name: registered model name; default: the spec's ``name``.
        params: classifier hyper-parameters (``cripple`` trains a deliberately bad model).
        policy: gate thresholds (F1 floor, champion tolerance, parity, quarantine limit).
        holdout_fraction: share of each class in the frozen holdout.
        validation_fraction: share of the rest used to tune the threshold.
        reference_rows: size of the drift reference snapshot logged with the model.
        build_image: containerize and smoke-test the bento before promotion; switch off only
            on machines without Docker (the run summary then says IMAGE NOT BUILT).
    """
    logger = get_run_logger()
    settings = Settings()
    path, spec = _resolve_inputs(settings, data_path, spec_path)
    name = model_name or spec.name
    started = time.perf_counter()

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
    except release.ContractViolation as err:
        create_markdown_artifact(
            key="release-decision",
            markdown=release_markdown(
                model_name=name,
                decision=None,
                metrics=None,
                champion=None,
                facts={"data": str(path), "quarantine file": str(quarantine or "none")},
                stopped=f"```\n{err}\n```",
            ),
            description=f"{name}: stopped by the data contract",
        )
        raise

    splits = split_data(result.valid, spec, holdout_fraction, validation_fraction)
    sizes = {k: len(getattr(splits, k)) for k in ("train", "validation", "holdout")}
    step(f"split {sizes}; training {params.classifier}")
    candidate = train(splits, spec, params)
    step(f"holdout F1 {candidate.metrics.f1:.4f} at threshold {candidate.threshold:.4f}")
    exported = export(candidate, splits.holdout, spec, policy.parity_tolerance)
    step(f"ONNX parity: {exported.parity.max_abs_diff:.2e}, {exported.parity.decision_flips} flips")
    champion = champion_score(settings, name, splits.holdout, spec)
    decision = gate(candidate, exported, champion, policy)
    step(f"gate: {decision.outcome} {decision.reasons or ''}")

    record = release.ReleaseRecord(
        spec=spec,
        params=params,
        policy=policy,
        data_path=str(path.resolve()),
        data_digest=digest,
        raw_rows=len(raw),
        validation=result,
        quarantine_path=str(quarantine) if quarantine else None,
        splits_sizes=sizes,
        candidate=candidate,
        exported=exported,
        champion=champion,
        decision=decision,
        git_commit=registry.git_commit(),
        y_holdout=splits.holdout[LABEL_INT].to_numpy(dtype=np.int64),
        reference=snapshot(splits, candidate, spec, reference_rows),
    )
    run_id = start_run(settings, name)
    model_uri = track(settings, run_id, record, raw)
    version = register(settings, name, model_uri, run_id, release.version_tags(record, run_id))
    refused = None
    facts = release.summary_facts(record, version, run_id, settings)

    def decision_artifact(outcome: str, refused: str | None) -> None:
        create_markdown_artifact(
            key="release-decision",
            markdown=release_markdown(
                model_name=name,
                decision=decision,
                metrics=candidate.metrics,
                champion=champion,
                facts=facts,
                refused=refused,
            ),
            description=f"{name} v{version}: {outcome}",
        )

    unchanged = decision.promote and champion is not None and champion.version == version
    if unchanged:
        # a rerun with the same data and model found the version it registered before, and
        # that version is already the champion: nothing to package or move
        step(f"{name} v{version} is already the champion (same data digest and model)")
    elif decision.promote:
        step(f"packaging {name} v{version}: bento store, bentoml build"
             + (", containerize, smoke test" if build_image else " (IMAGE SKIPPED)"))  # fmt: skip
        try:
            packaged = package(settings, name, version, splits.holdout, spec, build_image)
        except packaging.PackagingError as err:
            tag_version(settings, name, version, {"release.outcome": "packaging_failed",
                                                  "release.error": str(err)[:4900]})  # fmt: skip
            decision_artifact(
                "packaging failed",
                f"packaging failed; the champion and its image are untouched:\n\n```\n{err}\n```",
            )
            raise
        facts.update(packaged.summary())
        if packaged.image is None:
            logger.warning("IMAGE NOT BUILT for %s: %s", packaged.tag, packaged.skipped)
        compared = champion.version if champion else None
        why = "; ".join(c.detail for c in decision.checks)
        promoted = promote(settings, name, version, compared, why, packaged, return_state=True)
        if promoted.is_failed():
            try:
                promoted.result()
            except release.ChampionMoved as err:
                refused = str(err)
                tag_version(settings, name, version, {"release.outcome": "refused",
                                                      "release.refusal": refused})  # fmt: skip
        else:
            tag_version(settings, name, version, {"release.outcome": "released"})
    outcome_name = "refused" if refused else "unchanged" if unchanged else decision.outcome
    decision_artifact(outcome_name, refused)
    outcome: dict[str, Any] = {
        "model_name": name,
        "version": version,
        "run_id": run_id,
        "outcome": outcome_name,
        "reasons": [refused] if refused else decision.reasons,
        "holdout_f1": candidate.metrics.f1,
        "champion_version": version
        if outcome_name == "promote"
        else (champion and champion.version),
    }
    step(f"{name} v{version}: {outcome_name}")
    if refused:
        return Completed(name="Refused", message=refused, data=outcome)
    if unchanged:
        return Completed(
            name="Unchanged", message=f"{name} v{version} is already the champion", data=outcome
        )
    if decision.promote:
        return Completed(message=f"{name} v{version} promoted to champion", data=outcome)
    return Completed(
        name="Blocked",
        message=f"{name} v{version} blocked: " + "; ".join(decision.reasons),
        data=outcome,
    )
