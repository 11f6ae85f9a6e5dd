"""The serving fleet on a real Docker engine and a real HAProxy, under load.

One module, one pair of images: the release flow (in process, with the image step) releases
v1, the fleet comes up on it, clients score through the balancer the whole time, v2 is
released and promoted (the move rolls the fleet), then rolled back to v1. Every answer after
each rollout comes from the new version and no request fails. The faults reuse the same
fleet: a version that never becomes ready and one that answers its reference records wrongly
are refused with the old version serving and the alias unmoved; a replica SIGKILLed under load
costs the clients nothing (HAProxy retries on the next replica), the fleet command reports it
and restores it; a bad balancer config never replaces the good one. Before the fleet comes up,
a root ``bentoml serve`` of the champion scores a few records, so today's inference-log folder
is made by root first (issue 31): every replica must still write there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from data_contracts.api_keys import KEYS_FILE_ENV, client_key, new_key, write_key_file
from data_contracts.inference_log import day_folder, read_log
from flows.core.http import free_port, http_json
from flows.core.settings import Settings
from flows.packaging import container as images
from flows.packaging import smoke
from flows.promotion import audit, rollback
from flows.registry import registry
from flows.serving import balancer, canary, fleet, rollout
from flows.train_and_release import train_and_release
from flows.training.gate import GatePolicy
from flows.training.train import TrainParams
from tests.integration.conftest import ROOT, remove_images
from tests.support.load import Load
from tests.support.serving import call, running_bento, serve_env

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.timeout(1200)]

MODEL = "fraud-detector"


@dataclass
class Served:
    settings: Settings
    repository: str
    port: int
    records: list[dict]
    env: dict[str, str]

    def champion(self) -> str:
        client = registry.configure(self.settings)
        return str(client.get_model_version_by_alias(MODEL, "champion").version)

    def state(self) -> fleet.FleetState:
        state = fleet.load_state(fleet.FleetPaths.of(self.settings))
        assert state is not None
        return state

    def fraud(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "fraud"), *args],
            env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip


def release(data: str, max_iter: int) -> None:
    state = train_and_release(
        data_path=data, params=TrainParams(max_iter=max_iter), search="off",
        policy=GatePolicy(champion_tolerance=1.0), build_image=True, return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_data, docker_engine) -> Iterator[Served]:
    """v1 released with its image and a fleet of 2 replicas serving it; everything removed."""
    home = tmp_path_factory.mktemp("fleet") / "home"
    data = home.parent / "transactions.parquet"
    small_data.to_parquet(data, index=False)
    prefix = f"fraud-fleet-{uuid.uuid4().hex[:8]}-"
    port = free_port()
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=60):
        mp.setenv("FRAUD_HOME", str(home))
        mp.setenv("FRAUD_IMAGE_PREFIX", prefix)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("FRAUD_MLFLOW_TRACKING_URI", raising=False)
        # keys on, as in the production profile: every caller (smoke checks, the load, `fraud`)
        # must send the key the replicas read from the mounted file
        write_key_file(home / "secrets" / "api" / "keys", [new_key()])
        mp.setenv(KEYS_FILE_ENV, str(home / "secrets" / "api" / "keys"))
        env = dict(os.environ)
        settings = Settings()
        try:
            release(str(data), 60)
            case = smoke.load_smoke_case(settings, f"{prefix}{MODEL}:v1")
            root_writer_first(settings, home, case.records)
            state = fleet.up(settings, MODEL, replicas=2, port=port, metrics_port=free_port())
            assert state.version == "1" and len(state.replicas) == 2
            yield Served(settings, f"{prefix}{MODEL}", port, case.records, env)
        finally:
            fleet.down(settings)
            remove_images(prefix)


ROOT_WRITER_RECORDS = 5


def root_writer_first(settings: Settings, home: Path, records: list[dict]) -> None:
    """A ``bentoml serve`` of the champion from the checkout, as this (root) process's user
    with umask 022, scores a few records and stops (its log flushed): today's date folder
    is its own, 0755, before any replica writes."""
    env = serve_env(home, home / "bentoml", FRAUD_INFERENCE_LOG_DIR=str(home / "inference_log"))
    umask = os.umask(0o022)
    try:
        with running_bento(env, home.parent / "root-writer.log") as server:
            for i in range(ROOT_WRITER_RECORDS):
                record = {**records[i % len(records)], "request_id": f"root-{i}"}
                assert call(f"{server.base}/predict", record)[0] == 200
    finally:
        os.umask(umask)
    today = day_folder(settings.inference_log_root, datetime.now(UTC))
    assert today.is_dir() and today.stat().st_mode & 0o777 == 0o755, oct(today.stat().st_mode)


def after(load: Load, moment: float) -> set[str]:
    return {version for at, version in load.result.timeline if at > moment}


def test_release_and_rollback_roll_the_fleet_with_no_failed_request(served, tmp_path, small_data):
    status, ready = http_json("GET", f"http://127.0.0.1:{served.port}/readyz")
    assert status == 200 and ready["replicas_up"] == 2 and ready["replicas"] == 2
    with Load(served.port, served.records, threads=4) as load:
        time.sleep(1.5)
        assert after(load, 0) == {"1"}
        data = str(served.settings.home.parent / "transactions.parquet")
        release(data, 70)  # v2: gates pass, promoted, the move rolls the fleet
        promoted = time.monotonic()
        assert served.champion() == "2" and served.state().version == "2"
        time.sleep(1.5)
        rolling_back = time.monotonic()
        back = rollback.rollback(served.settings, MODEL, "1", "rollout test", "user:test")
        rolled_back = time.monotonic()
        fleet_note = next(n for n in back.notes if n.startswith("fleet: "))
        assert fleet_note.startswith("fleet: fleet rolled v2 -> v1"), back.notes
        assert "canary passed (v1: " in fleet_note and "; v2: " in fleet_note, fleet_note
        time.sleep(1.5)
    result = load.result
    assert result.failed == 0, result.errors
    assert set(result.versions) == {"1", "2"}
    assert {v for at, v in result.timeline if promoted < at < rolling_back} == {"2"}
    assert after(load, rolled_back) == {"1"}
    assert served.state().version == "1" and served.champion() == "1"
    names = {r.name for r in served.state().replicas}
    running = subprocess.run(
        ["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [n for n in running if n.startswith(served.repository) and n not in names]
    targets = json.loads((served.settings.home / "fleet/targets/bento.json").read_text())
    assert {t["labels"]["model_version"] for t in targets} == {"1"}
    # the shared inference log: every stopped replica (2 of v1, 2 of v2) flushed its own files
    files = list(served.settings.inference_log_root.rglob("part-*.parquet"))
    assert len({f.name.split("-")[2] for f in files}) >= 4, [f.name for f in files]


def _refused_rollback(served: Served, why: str) -> None:
    """Roll back to v2 under load: must fail, with v1 serving throughout and nothing moved."""
    before = served.state()
    client = registry.configure(served.settings)
    moves = len(audit.history(client, MODEL))
    with Load(served.port, served.records, threads=2) as load:
        time.sleep(1)
        with pytest.raises(rollout.RolloutFailed, match=why):
            rollback.rollback(served.settings, MODEL, "2", "fault test", "user:test")
        time.sleep(1)
    assert load.result.failed == 0, load.result.errors
    assert set(load.result.versions) == {"1"}
    assert served.state().replicas == before.replicas
    assert served.champion() == "1"
    assert len(audit.history(client, MODEL)) == moves
    running = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True
    ).stdout.split()
    assert not [n for n in running if n.startswith(f"{served.repository}-v2-")]


def test_a_version_that_never_becomes_ready_is_refused(served):
    v2 = f"{served.repository}:v2"
    real = images.image_facts(v2).image_id
    broken = images.docker("tag", "python:3.11-slim", v2)  # exits at once: never ready
    assert broken.returncode == 0, broken.stderr
    try:
        _refused_rollback(served, "exited before it was ready")
    finally:
        images.docker("tag", real, v2)


def test_a_version_answering_its_reference_records_wrongly_is_refused(served):
    path = smoke.smoke_case_path(served.settings, f"{served.repository}:v2")
    saved = path.read_text()
    case = json.loads(saved)
    case["probabilities"] = [min(1.0, p + 0.25) for p in case["probabilities"]]
    path.write_text(json.dumps(case))
    try:
        _refused_rollback(served, "mismatches with the offline ONNX predictions")
    finally:
        path.write_text(saved)


def test_a_canary_worse_than_the_old_version_abandons_the_rollout(served):
    """An impossible error tolerance stands in for a worse version: the canary window must
    send it traffic, judge it on HAProxy's counters, refuse it and put the old version back."""
    before = served.state()
    policy = canary.CanaryPolicy(seconds=2, share=0.5, min_requests=1, max_error_ratio_increase=-1)
    with Load(served.port, served.records, threads=4) as load:
        time.sleep(1)
        with pytest.raises(rollout.RolloutFailed, match="canary FAILED"):
            rollout.roll(served.settings, MODEL, "2", policy=policy)
        refused = time.monotonic()
        time.sleep(1.5)
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["2"] > 0  # the canary did get its share
    assert after(load, refused + 0.5) == {"1"}
    assert served.state().replicas == before.replicas and served.champion() == "1"


def test_a_killed_replica_costs_at_most_its_requests_in_flight_and_is_restored(served):
    """HAProxy retries what it can on the other replica (connection refused or reset, empty
    reply): what a client can still see is a reply the replica had begun to send when it died
    (headers out, body not), at most one per client connection in flight at that moment."""
    victim = served.state().replicas[0]
    threads = 4
    with Load(served.port, served.records, threads=threads) as load:
        time.sleep(1)
        killed = time.monotonic()
        images.docker("kill", "--signal", "KILL", victim.name)
        time.sleep(4)  # fall 2 x inter 1 s: the balancer has marked it DOWN
        after_kill = load.snapshot()
    result = load.result
    print(f"\nSIGKILL of one of 2 replicas under {threads} clients: {result.ok} answered, "
          f"{result.failed} failed {result.errors}")  # fmt: skip
    assert after_kill[0] > 0
    assert result.failed <= threads, result.errors
    # only requests in flight at the kill (docker kill returns within about a second)
    assert all(killed - 0.5 <= at <= killed + 2.0 for at in result.failed_at), result.errors
    assert {v for at, v in result.timeline if at > killed + 2.0} == {"1"}
    report = served.fraud("fleet", "status")
    assert report.returncode == 3, report.stdout + report.stderr
    assert f"{victim.name}" in report.stdout and "exited" in report.stdout
    restored = served.fraud("fleet", "restore")
    assert restored.returncode == 0, restored.stderr
    assert f"restored {victim.name}" in restored.stdout
    healthy = served.fraud("fleet", "status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert http_json("GET", f"http://127.0.0.1:{served.port}/readyz")[1]["replicas_up"] == 2


def test_a_bad_balancer_config_never_replaces_the_good_one(served):
    paths = fleet.FleetPaths.of(served.settings)
    good = paths.config.read_text()
    with pytest.raises(balancer.BalancerError, match="haproxy -c refused"):
        balancer.install_config(paths.config, good.replace("balance roundrobin", "balance nope"))
    assert paths.config.read_text() == good
    balancer.reload(served.state().balancer_pid, paths.master_socket)  # reloads the good one
    assert http_json("GET", f"http://127.0.0.1:{served.port}/readyz")[0] == 200


def _fleet_records(served: Served, tag: str, n: int) -> None:
    for i in range(n):
        record = {**served.records[i % len(served.records)], "request_id": f"{tag}-{i}"}
        status, body = http_json("POST", f"http://127.0.0.1:{served.port}/predict", record)
        assert status == 200, body


def _logged(served: Served, tag: str) -> int:
    """Records of ``tag`` in the drift check's window (the last 24 hours of the log)."""
    table = read_log(
        served.settings.inference_log_root, now=datetime.now(UTC), hours=24, columns=["request_id"]
    )
    return sum(1 for rid in table["request_id"].to_pylist() if str(rid).startswith(f"{tag}-"))


def _replica_logs(served: Served) -> list[dict]:
    replicas = served.state().replicas
    return [http_json("GET", f"{r.base_url}/model")[1]["inference_log"] for r in replicas]


def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    return predicate()


def test_replicas_write_the_log_in_a_day_a_root_writer_made_and_say_when_they_cannot(served):
    """Issue 31: root made today's folder 0755 before the fleet came up; the replicas (uid
    1034) must write there, and a replica that cannot write shows it (``/model``, the
    ``fraud_inference_log_writable`` gauge the FraudInferenceLogUnwritable alert reads, and
    ``fraud fleet status``) until ``fraud fleet restore`` shares the folder again."""
    root = served.settings.inference_log_root
    today = day_folder(root, datetime.now(UTC))
    assert _logged(served, "root") == ROOT_WRITER_RECORDS
    _fleet_records(served, "fleet", 40)
    assert _until(lambda: _logged(served, "fleet") == 40), _replica_logs(served)
    assert today.stat().st_uid == os.getuid() and today.stat().st_mode & 0o7777 == 0o1777
    assert all(log["writable"] and log["lost"] == 0 for log in _replica_logs(served))
    report = served.fraud("fleet", "status")
    assert report.returncode == 0 and report.stdout.count("log ok (") == 2, report.stdout

    today.chmod(0o755)  # a writer that is not shared makes the day its own again
    try:
        _fleet_records(served, "lost", 10)
        failing = _until(lambda: all(not log["writable"] for log in _replica_logs(served)))
        assert failing, _replica_logs(served)
        metrics = [call(f"{r.base_url}/metrics")[1] for r in served.state().replicas]
        unwritable = re.compile(r"^fraud_inference_log_writable(\{[^}]*\})? 0(\.0)?$", re.M)
        assert all(unwritable.search(text) for text in metrics), metrics
        report = served.fraud("fleet", "status")
        assert report.returncode == 3, report.stdout + report.stderr
        assert report.stdout.count("log NOT WRITABLE") == 2, report.stdout
        assert "PermissionError" in report.stdout and "fraud fleet restore" in report.stdout
        assert _until(lambda: sum(log["lost"] for log in _replica_logs(served)) == 10)
    finally:
        restored = served.fraud("fleet", "restore")
    assert restored.returncode == 0, restored.stderr
    assert today.stat().st_mode & 0o7777 == 0o1777
    assert _until(lambda: all(log["writable"] for log in _replica_logs(served)))
    _fleet_records(served, "again", 10)
    assert _until(lambda: _logged(served, "again") == 10)
    assert served.fraud("fleet", "status").returncode == 0


def test_replicas_need_the_key_and_docker_shows_no_secret(served):
    """The key is checked behind the balancer, and neither it nor the id-hash key is in what
    ``docker inspect`` shows of a replica (environment, command, labels, mounts)."""
    record = served.records[0]
    assert call(f"http://127.0.0.1:{served.port}/predict", record)[0] == 401
    assert http_json("POST", f"http://127.0.0.1:{served.port}/predict", record)[0] == 200
    api_key, id_key = client_key(), served.settings.id_key().decode()
    assert api_key
    for replica in served.state().replicas:
        shown = subprocess.run(
            ["docker", "inspect", replica.name], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert "/run/fraud/api-keys" in shown.stdout  # the folder is mounted, not the value
        assert api_key not in shown.stdout and id_key not in shown.stdout
