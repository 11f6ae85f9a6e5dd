"""Rollback and alias history against real registered versions (tmp MLflow SQLite store, real
BentoML store, in-process Prefect). The Docker image path is covered by mocks of the Docker calls
here and for real in tests/integration/test_rollback_image.py."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from data_contracts.artifacts import TAG_F1_VS_CHAMPION_ROWS
from flows.cli import main as cli
from flows.cli import ops
from flows.core.settings import Settings
from flows.packaging import container, publish
from flows.packaging.store import bento_store, model_store
from flows.promotion import audit, locks, rollback
from flows.registry import registry
from flows.train_and_release import train_and_release
from flows.training.gate import GatePolicy
from flows.training.splitting import SplitPolicy
from flows.training.train import TrainParams

pytestmark = pytest.mark.integration  # an in-process Prefect test server

MODEL = "fraud-detector"
FAST = TrainParams(max_iter=60)
CRIPPLED = TrainParams(max_iter=30, cripple=True)


@pytest.fixture(scope="module")
def released(tmp_path_factory, small_data) -> Path:
    """A home with v1 and v2 released (bento only, no image) and v3 blocked by its gates."""
    home = tmp_path_factory.mktemp("ops") / "home"
    data = home.parent / "transactions.parquet"
    small_data.to_parquet(data, index=False)
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=60):
        mp.setenv("FRAUD_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
        # two different models (a rerun of the same data and model reuses its version); the
        # blocked one is judged on a hash holdout, most of which the time-split v2 learned from
        # (the rows left are few: judged anyway, so the comparison on them is recorded)
        hashed = {"split": SplitPolicy(kind="hash"), "policy": GatePolicy(allow_small_holdout=True)}
        for params, options in ((FAST, {}), (FAST.model_copy(update={"max_iter": 70}), {}),
                                (CRIPPLED, hashed)):  # fmt: skip
            state = train_and_release(data_path=str(data), params=params, build_image=False,
                                      return_state=True, **options)  # fmt: skip
            assert state.is_completed(), state.message
        yield home


@pytest.fixture
def settings(released, monkeypatch) -> Settings:
    monkeypatch.setenv("FRAUD_HOME", str(released))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
    return Settings(home=released)


def client_of(settings: Settings) -> MlflowClient:
    return registry.configure(settings)


def champion(settings: Settings) -> str:
    return str(client_of(settings).get_model_version_by_alias(MODEL, "champion").version)


def state_of(settings: Settings) -> tuple[str, str | None, int]:
    """Alias, pointer file and number of audit entries: what a refusal must leave alone."""
    moves = audit.history(client_of(settings), MODEL)
    return champion(settings), publish.read_champion(settings, MODEL), len(moves)


def test_setup_has_two_released_versions_and_one_blocked(settings):
    client = client_of(settings)
    outcomes = {
        v: client.get_model_version(MODEL, v).tags.get("gate.outcome") for v in ("1", "2", "3")
    }
    assert outcomes == {"1": "promote", "2": "promote", "3": "blocked"}
    assert champion(settings) == "2"
    assert publish.read_champion(settings, MODEL) == "fraud-detector:v2"


def test_each_version_says_which_holdout_rows_the_champion_was_compared_on(settings):
    client = client_of(settings)
    tags = {v: client.get_model_version(MODEL, v).tags for v in ("1", "2", "3")}
    assert tags["1"]["split.kind"] == "time" and "split.holdout_min" in tags["1"]
    assert tags["3"]["split.kind"] == "hash" and "split.holdout_rank_max_1" in tags["3"]
    # same data, same time split: v1 learned from none of v2's holdout
    assert tags["2"][TAG_F1_VS_CHAMPION_ROWS].endswith("none of which champion v1 learned from")
    # v3's hash holdout is spread over the whole period; v2 trained on most of it
    compared = re.fullmatch(
        r"the ([\d,]+) of ([\d,]+) holdout rows champion v2 never learned from: it may have "
        r"learned from ([\d,]+) of them \(its time holdout began at .+\)",
        tags["3"][TAG_F1_VS_CHAMPION_ROWS],
    )
    assert compared, tags["3"][TAG_F1_VS_CHAMPION_ROWS]
    kept, rows, seen = (int(g.replace(",", "")) for g in compared.groups())
    assert kept + seen == rows and 0.6 < seen / rows < 0.95
    run = client.get_run(tags["3"]["run_id"])
    assert run.data.metrics["champion_seen_holdout_rows"] == seen
    assert run.data.metrics["champion_compared_rows"] == kept
    moves = audit.history(client_of(settings), MODEL)[:2]
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("release", None, "1"),
        ("release", "1", "2"),
    ]


def test_rollback_and_forward_again_rebuilding_a_missing_bento(settings):
    bentos, models = (
        bento_store(settings.bentoml_home),
        model_store(settings.bentoml_home),
    )
    bentos.delete("fraud-detector:v1")  # the store lost v1: the rollback must rebuild it
    models.delete("fraud-detector:v1")
    assert not bentos.list("fraud-detector:v1")

    result = rollback.rollback(
        settings, MODEL, 1, "v2 flags too many refunds", "user:oncall", False
    )

    assert (result.from_version, result.to_version, result.tag) == ("2", "1", "fraud-detector:v1")
    assert not result.image_repointed
    assert any("IMAGE NOT RE-POINTED" in n and "--no-image" in n for n in result.notes)
    assert champion(settings) == "1"
    assert publish.read_champion(settings, MODEL) == "fraud-detector:v1"
    for store in ("models", "bentos"):
        assert (settings.bentoml_home / store / MODEL / "latest").read_text() == "v1"
    assert bentos.list("fraud-detector:v1") and models.list("fraud-detector:v1")
    rebuilt = models.get("fraud-detector:v1")
    version = client_of(settings).get_model_version(MODEL, "1")
    assert rebuilt.info.metadata["sha256"] == version.tags["onnx_sha256"]

    last = audit.history(client_of(settings), MODEL)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", "2", "1")
    assert (last.actor, last.reason) == ("user:oncall", "v2 flags too many refunds")
    run = client_of(settings).get_run(result.audit_run_id)
    assert run.data.tags["audit.action"] == "rollback"

    forward = rollback.rollback(settings, MODEL, "2", "v2 fixed", image=False)
    assert (forward.from_version, forward.to_version) == ("1", "2")
    assert state_of(settings) == ("2", "fraud-detector:v2", 4)
    lines = [m.line() for m in rollback.alias_history(settings, MODEL)]
    assert [line.split()[2] for line in lines] == ["release", "release", "rollback", "rollback"]
    assert "v2 -> v1" in lines[2] and "user:oncall" in lines[2] and "v1 -> v2" in lines[3]
    assert lines[3].split("by ")[1].startswith("user:")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("3", "v3 did not pass its gates (gate.outcome=blocked)"),
        ("99", "has no version 99 (registered versions: v1, v2, v3)"),
        ("2", "v2 is already the champion"),
    ],
)
def test_refusals_move_nothing(settings, version, message):
    before = state_of(settings)
    with pytest.raises(rollback.RollbackRefused, match=re.escape(message)):
        rollback.rollback(settings, MODEL, version, "try", image=False)
    assert state_of(settings) == before


def test_packaging_failed_version_is_refused(settings):
    client = client_of(settings)
    client.set_model_version_tag(MODEL, "1", "release.outcome", "packaging_failed")
    client.set_model_version_tag(MODEL, "1", "release.error", "bentoml build failed\nlog: x")
    try:
        before = state_of(settings)
        with pytest.raises(
            rollback.RollbackRefused, match=re.escape("release.outcome=packaging_failed")
        ):
            rollback.rollback(settings, MODEL, "1", "try", image=False)
        assert state_of(settings) == before
    finally:
        client.set_model_version_tag(MODEL, "1", "release.outcome", "released")


def test_not_a_version_number_is_refused(settings):
    with pytest.raises(ValueError, match="positive integers"):
        rollback.rollback(settings, MODEL, "latest", "try", image=False)


def test_rollback_waits_for_the_release_lock(settings):
    """A release holding the lock keeps the rollback from moving the alias (the module's Prefect
    test server is still up: the ``released`` fixture holds it)."""
    held, release_it = threading.Event(), threading.Event()

    def hold() -> None:
        with locks.promotion_lock(MODEL):
            held.set()
            release_it.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        before = state_of(settings)
        with pytest.raises(TimeoutError):
            rollback.rollback(settings, MODEL, "1", "try", image=False, lock_timeout_s=3)
        assert state_of(settings) == before
    finally:
        release_it.set()
        holder.join(30)
    assert not holder.is_alive()


def test_cli_history_and_refusal_exit_codes(settings, capsys):
    assert cli.main(["history"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(audit.history(client_of(settings), MODEL)) >= 2
    assert "release" in out[0] and "fraud-detector@champion: (none) -> v1" in out[0]

    assert cli.main(["rollback", "--version", "3", "--no-image"]) == ops.EXIT_REFUSED
    assert "rollback refused: fraud-detector v3 did not pass its gates" in capsys.readouterr().err
    assert cli.main(["history", "--model", "no-such-model"]) == 0
    assert "no alias moves recorded for no-such-model" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rollback"])
    assert exit_info.value.code == 2
    assert "--version" in capsys.readouterr().err


# --------------------------------------------------------------------------- image plan (mocked)


def test_image_plan_reuses_the_versions_image(tmp_path):
    calls: list[str] = []
    plan = rollback.plan_image(
        Settings(home=tmp_path),
        "fraud-detector:v4",
        want=True,
        docker_status=lambda: (True, "Docker engine 1"),
        image_exists=lambda ref: calls.append(ref) or ref == "fraud-detector:v4",
        containerize=lambda *a, **k: pytest.fail("must not build"),
    )
    assert plan.repoint and not plan.built
    assert plan.note == "image: reused fraud-detector:v4, tagged fraud-detector:latest"
    assert calls == ["fraud-detector:v4"]


def test_image_plan_builds_a_missing_image(tmp_path):
    built: list[str] = []

    def containerize(settings, tag, *, repository=None):
        built.append(tag)
        return container.ImageFacts(
            f"{repository or 'fraud-detector'}:v4", "sha256:x", 5e8, "u", {}
        )

    plan = rollback.plan_image(
        Settings(home=tmp_path),
        "fraud-detector:v4",
        want=True,
        docker_status=lambda: (True, "Docker engine 1"),
        image_exists=lambda ref: False,
        containerize=containerize,
    )
    assert plan.repoint and plan.built and built == ["fraud-detector:v4"]
    assert "fraud-detector:v4 was missing and has been rebuilt" in plan.note
    assert "500 MB" in plan.note


def test_image_plan_without_docker_says_so(tmp_path):
    plan = rollback.plan_image(
        Settings(home=tmp_path),
        "fraud-detector:v4",
        want=True,
        docker_status=lambda: (False, "the docker client is gone"),
        image_exists=lambda ref: pytest.fail("no docker calls"),
        containerize=lambda *a, **k: pytest.fail("no docker calls"),
    )
    assert not plan.repoint
    assert plan.note.startswith("IMAGE NOT RE-POINTED: Docker is unavailable")
    assert "the docker client is gone" in plan.note and "fraud-detector:latest" in plan.note
