"""The one champion move, through both callers (release promotion and rollback): lock, re-read,
publish, move, audit, exact undo on failure, idempotent retry, and models kept apart.

MLflow: a tmp SQLite store, versions with tags only; BentoML stores: folders; the Prefect lock:
a recording seam; the Docker CLI: a fake where images are involved."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from data_contracts import artifacts
from flows.core.settings import Settings
from flows.packaging import container, publish
from flows.promotion import audit, rollback
from flows.promotion.champion import ChampionMoved, MoveRequest, move_champion, promote_release
from flows.registry import registry
from flows.serving import rollout

FRAUD, CREDIT = "fraud-detector", "credit-risk"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
    return Settings(home=tmp_path / "home")


@pytest.fixture
def locked() -> list[str]:
    return []


@pytest.fixture
def lock(locked):
    """The model lock seam: records which model's lock was taken."""

    @contextlib.contextmanager
    def take(model_name: str, timeout_seconds: float = 0):
        locked.append(model_name)
        yield

    return take


def register(settings: Settings, model: str, versions: int) -> MlflowClient:
    """``versions`` registered versions of ``model`` that passed their gates, and their stores."""
    client = registry.configure(settings)
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    for _ in range(versions):
        version = client.create_model_version(model, source="file:///nowhere", tags={})
        client.set_model_version_tag(model, version.version, "gate.outcome", "promote")
        for store in ("models", "bentos"):
            (settings.bentoml_home / store / model / f"v{version.version}").mkdir(parents=True)
    return client


def alias(settings: Settings, model: str) -> str | None:
    current = registry.current_champion(registry.configure(settings), model, "champion")
    return str(current.version) if current else None


def served(settings: Settings, model: str) -> tuple[str | None, str | None, str | None, int]:
    """Everything a move may change for ``model``: alias, pointer, stores' latest, audit size."""
    latest = settings.bentoml_home / "models" / model / "latest"
    return (
        alias(settings, model),
        publish.read_champion(settings, model),
        latest.read_text() if latest.exists() else None,
        len(audit.history(registry.configure(settings), model)),
    )


def release(settings: Settings, model: str, version: str, compared: str | None, lock, **kw):
    return promote_release(
        settings,
        model,
        version,
        compared=compared,
        reason="all checks passed",
        actor=kw.pop("actor", "flow-run:r1"),
        image=False,
        lock=lock,
    )


def roll_back(settings: Settings, model: str, version: str, lock):
    return rollback.rollback(
        settings,
        model,
        version,
        "bad v2",
        "user:oncall",
        image=False,
        lock=lock,
        prepare=lambda _s, name, v: artifacts.store_tag(name, v),
    )


def test_release_moves_everything_under_the_models_lock(settings, lock, locked):
    register(settings, FRAUD, 1)
    result = release(settings, FRAUD, "1", None, lock)
    assert (result.from_version, result.to_version, result.tag) == (None, "1", f"{FRAUD}:v1")
    assert result.audit_run_id and not result.resumed
    assert locked == [FRAUD]
    assert served(settings, FRAUD) == ("1", f"{FRAUD}:v1", "v1", 1)
    move = audit.history(registry.configure(settings), FRAUD)[0]
    assert (move.action, move.from_version, move.to_version, move.actor) == (
        "release",
        None,
        "1",
        "flow-run:r1",
    )


def test_rollback_moves_through_the_same_operation(settings, lock, locked):
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    release(settings, FRAUD, "2", "1", lock, actor="flow-run:r2")
    result = roll_back(settings, FRAUD, "1", lock)
    assert (result.from_version, result.to_version) == ("2", "1")
    assert locked == [FRAUD] * 3
    assert served(settings, FRAUD) == ("1", f"{FRAUD}:v1", "v1", 3)
    last = audit.history(registry.configure(settings), FRAUD)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", "2", "1")


def test_a_moved_champion_is_refused_by_both_callers(settings, lock):
    register(settings, FRAUD, 3)
    release(settings, FRAUD, "1", None, lock)
    before = served(settings, FRAUD)
    with pytest.raises(ChampionMoved, match="compared against champion \\(none\\)"):
        release(settings, FRAUD, "2", None, lock)  # gated while there was no champion
    assert served(settings, FRAUD) == before

    @contextlib.contextmanager
    def racing_lock(model_name: str, timeout_seconds: float = 0):
        # another release moves the alias while the rollback waits for the lock
        registry.move_alias(registry.configure(settings), model_name, "champion", "3")
        yield

    with pytest.raises(rollback.RollbackRefused, match="moved from v1 to v3"):
        roll_back(settings, FRAUD, "2", racing_lock)
    assert served(settings, FRAUD)[1:] == before[1:]  # pointer, latest and audit untouched


def _failing_alias_move(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise ConnectionError("registry went away")

    monkeypatch.setattr(registry, "move_alias", fail)


@pytest.mark.parametrize("caller", ["release", "rollback"])
def test_a_failed_alias_move_puts_serving_back(settings, lock, monkeypatch, caller):
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    release(settings, FRAUD, "2", "1", lock, actor="flow-run:r2")
    before = served(settings, FRAUD)
    _failing_alias_move(monkeypatch)
    with pytest.raises(ConnectionError):
        if caller == "release":
            register(settings, FRAUD, 1)
            release(settings, FRAUD, "3", "2", lock, actor="flow-run:r3")
        else:
            roll_back(settings, FRAUD, "1", lock)
    assert served(settings, FRAUD) == before == ("2", f"{FRAUD}:v2", "v2", 2)


def test_a_failed_first_release_leaves_no_pointer(settings, lock, monkeypatch):
    register(settings, FRAUD, 1)
    _failing_alias_move(monkeypatch)
    with pytest.raises(ConnectionError):
        release(settings, FRAUD, "1", None, lock)
    assert publish.read_champion(settings, FRAUD) is None
    assert alias(settings, FRAUD) is None


def _flaky_audit(monkeypatch) -> list[str]:
    real, calls = audit.record_move, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["to_version"])
        if len(calls) == 1:
            raise ConnectionError("tracking server went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(audit, "record_move", flaky)
    return calls


@pytest.mark.parametrize("action", ["release", "rollback"])
def test_a_retry_after_the_alias_moved_finishes_the_move(settings, lock, monkeypatch, action):
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    calls = _flaky_audit(monkeypatch)
    request = MoveRequest(FRAUD, "2", "1", action, "why", "someone", image=False)
    with pytest.raises(ConnectionError):
        move_champion(settings, request, lock=lock)
    assert alias(settings, FRAUD) == "2"  # moved; only the audit record is missing

    retried = move_champion(settings, request, lock=lock)
    assert retried.resumed and retried.audit_run_id
    again = move_champion(settings, request, lock=lock)  # a third attempt writes nothing more
    assert again.resumed and again.audit_run_id is None
    assert calls == ["2", "2"]
    assert served(settings, FRAUD) == ("2", f"{FRAUD}:v2", "v2", 2)
    last = audit.history(registry.configure(settings), FRAUD)[-1]
    assert (last.action, last.from_version, last.to_version) == (action, "1", "2")


def test_undo_puts_back_the_latest_image_it_replaced(settings, lock, monkeypatch):
    """The ``latest`` image is re-tagged to the exact image it pointed at before the move."""
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    calls: list[tuple[str, ...]] = []

    def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        out = "sha256:old\n" if args[:2] == ("image", "inspect") else ""
        return subprocess.CompletedProcess(["docker", *args], 0, out, "")

    monkeypatch.setattr(container, "docker", docker)
    _failing_alias_move(monkeypatch)
    request = MoveRequest(FRAUD, "2", "1", "release", "why", "flow-run:r2", image=True)
    with pytest.raises(ConnectionError):
        move_champion(settings, request, lock=lock)
    assert calls == [
        ("image", "inspect", "-f", "{{.Id}}", f"{FRAUD}:latest"),
        ("tag", f"{FRAUD}:v2", f"{FRAUD}:latest"),
        ("tag", "sha256:old", f"{FRAUD}:latest"),
    ]
    assert served(settings, FRAUD) == ("1", f"{FRAUD}:v1", "v1", 1)


def test_two_models_in_one_home_never_touch_each_other(settings, lock, monkeypatch):
    """Releasing, failing and rolling back another model leaves the fraud model's pointer,
    stores' ``latest``, alias and audit exactly as they were (the bug of the shared pointer)."""
    register(settings, FRAUD, 1)
    register(settings, CREDIT, 3)
    release(settings, FRAUD, "1", None, lock)
    fraud = served(settings, FRAUD)

    release(settings, CREDIT, "1", None, lock)
    release(settings, CREDIT, "2", "1", lock, actor="flow-run:c2")
    assert served(settings, FRAUD) == fraud
    assert served(settings, CREDIT) == ("2", f"{CREDIT}:v2", "v2", 2)
    home = settings.bentoml_home
    assert artifacts.read_champion_pointer(home, FRAUD) == f"{FRAUD}:v1"
    assert {p.name for p in (home / "champions").iterdir()} == {FRAUD, CREDIT}

    with monkeypatch.context() as mp:  # a failed promotion of credit restores credit's tag
        _failing_alias_move(mp)
        with pytest.raises(ConnectionError):
            release(settings, CREDIT, "3", "2", lock, actor="flow-run:c3")
    assert served(settings, CREDIT) == ("2", f"{CREDIT}:v2", "v2", 2)
    assert served(settings, FRAUD) == fraud

    roll_back(settings, CREDIT, "1", lock)
    assert served(settings, CREDIT) == ("1", f"{CREDIT}:v1", "v1", 3)
    assert served(settings, FRAUD) == fraud
    from bento.store import resolve_model_tag

    env = {"FRAUD_HOME": str(settings.home)}
    assert resolve_model_tag(env) == f"{FRAUD}:v1"  # `make serve` keeps serving card traffic
    assert resolve_model_tag({**env, "FRAUD_MODEL_NAME": CREDIT}) == f"{CREDIT}:v1"


def test_discard_of_a_failed_version_follows_its_own_models_champion(settings, lock):
    register(settings, FRAUD, 1)
    register(settings, CREDIT, 2)
    release(settings, FRAUD, "1", None, lock)
    release(settings, CREDIT, "1", None, lock)
    models = settings.bentoml_home / "models"
    (models / CREDIT / "latest").write_text("v2")  # what a fresh import of v2 leaves
    for store in ("models", "bentos"):  # the stand-in folders are no real BentoML entries
        (settings.bentoml_home / store / CREDIT / "v2").rmdir()
    publish.discard_failed(settings, f"{CREDIT}:v2")
    assert (models / CREDIT / "latest").read_text() == "v1"
    assert (models / FRAUD / "latest").read_text() == "v1"
    assert publish.read_champion(settings, FRAUD) == f"{FRAUD}:v1"


def test_rerunning_a_rollback_whose_audit_failed_finishes_it(settings, lock, monkeypatch):
    """Through the rollback command path: the alias moved, the audit write failed; running the
    same rollback again writes the missing record instead of saying 'nothing to do'."""
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    release(settings, FRAUD, "2", "1", lock, actor="flow-run:r2")
    calls = _flaky_audit(monkeypatch)
    with pytest.raises(ConnectionError):
        roll_back(settings, FRAUD, "1", lock)
    assert alias(settings, FRAUD) == "1"
    assert len(audit.history(registry.configure(settings), FRAUD)) == 2  # the record is missing

    finished = roll_back(settings, FRAUD, "1", lock)
    assert (finished.from_version, finished.to_version) == ("2", "1")
    assert calls == ["1", "1"]
    last = audit.history(registry.configure(settings), FRAUD)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", "2", "1")
    # now audited: a third run has nothing to do
    with pytest.raises(rollback.RollbackRefused, match="already the champion"):
        roll_back(settings, FRAUD, "1", lock)


def test_a_move_someone_else_recorded_to_the_same_version_is_not_taken_as_ours(settings, lock):
    """Two operators rolling 2 -> 1 at once: the second finds the alias on v1 with the first
    one's audit record, and is refused instead of writing a second, false record."""
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    release(settings, FRAUD, "2", "1", lock, actor="flow-run:r2")
    first = MoveRequest(FRAUD, "1", "2", "rollback", "bad model", "alice", image=False)
    second = MoveRequest(FRAUD, "1", "2", "rollback", "bad model", "bob", image=False)
    move_champion(settings, first, lock=lock)
    before = served(settings, FRAUD)
    with pytest.raises(ChampionMoved, match="moved to it already"):
        move_champion(settings, second, lock=lock)
    assert served(settings, FRAUD) == before


def test_without_a_fleet_the_move_starts_none_and_says_so(settings, lock):
    register(settings, FRAUD, 1)
    result = release(settings, FRAUD, "1", None, lock)
    assert result.fleet.startswith("no fleet running")
    assert not (settings.home / "fleet" / "fleet.json").exists()


def test_a_refused_rollout_leaves_the_alias_and_serving_where_they_were(
    settings, lock, monkeypatch
):
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    before = served(settings, FRAUD)
    undone: list[str] = []

    def refuse(self, **_kw):
        self.note = "staged"
        raise rollout.RolloutFailed("v2 answered its reference records wrongly")

    monkeypatch.setattr(rollout.Rollout, "stage", refuse)
    monkeypatch.setattr(rollout.Rollout, "abandon", lambda self: undone.append("x") or [])
    with pytest.raises(rollout.RolloutFailed, match="wrongly"):
        release(settings, FRAUD, "2", "1", lock)
    assert served(settings, FRAUD) == before  # alias, pointer, stores' latest, no audit record
    assert undone == ["x"]


def test_a_rollout_that_fails_after_the_shift_is_undone_before_the_alias_moves(
    settings, lock, monkeypatch
):
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    before = served(settings, FRAUD)
    calls: list[str] = []
    monkeypatch.setattr(rollout.Rollout, "stage", lambda self, **_kw: calls.append("stage"))
    monkeypatch.setattr(rollout.Rollout, "shift", lambda self: calls.append("shift"))
    monkeypatch.setattr(rollout.Rollout, "abandon", lambda self: calls.append("abandon") or [])
    monkeypatch.setattr(rollout.Rollout, "finish", lambda self: calls.append("finish") or "")

    def alias_fails(*_a):
        raise OSError("registry unreachable")

    monkeypatch.setattr(registry, "move_alias", alias_fails)
    with pytest.raises(OSError, match="unreachable"):
        release(settings, FRAUD, "2", "1", lock)
    assert calls == ["stage", "shift", "abandon"]  # never finished: old replicas kept
    assert served(settings, FRAUD) == before


def test_a_retry_whose_rollout_fails_moves_the_alias_back_with_an_audit_record(
    settings, lock, monkeypatch
):
    """The alias got to v2 (audit missing), then the retry cannot roll the fleet to v2: the
    champion goes back to v1, serving with it, and the move back is in the audit log."""
    register(settings, FRAUD, 2)
    release(settings, FRAUD, "1", None, lock)
    _flaky_audit(monkeypatch)
    request = MoveRequest(FRAUD, "2", "1", "release", "why", "flow-run:r2", image=False)
    with pytest.raises(ConnectionError):
        move_champion(settings, request, lock=lock)
    assert alias(settings, FRAUD) == "2"

    def refuse(self, **_kw):
        raise rollout.RolloutFailed("v2 never became ready")

    monkeypatch.setattr(rollout.Rollout, "stage", refuse)
    with pytest.raises(rollout.RolloutFailed, match="never became ready") as failed:
        move_champion(settings, request, lock=lock)
    assert any("moved back to v1" in note for note in failed.value.__notes__)
    assert served(settings, FRAUD) == ("1", f"{FRAUD}:v1", "v1", 2)
    last = audit.history(registry.configure(settings), FRAUD)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", "2", "1")
    assert "rollout of v2 failed" in last.reason
