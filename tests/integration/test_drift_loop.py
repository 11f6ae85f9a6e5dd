"""The whole loop against real servers: Prefect server + worker, MLflow, `bentoml serve`, SMTP.

train-and-release -> the bento serves -> normal traffic -> drift-check: no drift, no retraining
-> drifted traffic -> drift-check: drift, a lean email with inline charts and links to the report,
the run's artifacts (summary, per-column table, links), one train-and-release triggered
and completed -> a second check does not pile up another -> the served version is the one the
gates chose.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from data_contracts.api_keys import auth_headers
from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.core.http import free_port
from flows.packaging.smoke import request_records
from flows.registry import registry
from tests.support.drift import smtp_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DRIFT = DriftKnobs(amount_scale=1.8, merchant_shift=0.5)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack_extra_env(smtp, smtp_port: int) -> dict[str, str]:
    return smtp_env(
        smtp_port, "risk-team@example.test,oncall@example.test", FRAUD_SMTP_MAIL_ALL_CLEAR="true"
    )


class Bento:
    """`bentoml serve` from the repository (serves the champion), stopped by PID."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.headers = {"Content-Type": "application/json", **auth_headers(env)}  # prod: keys
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"bentoml serve exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"bentoml serve not ready in 120 s:\n{log.read_text()[-3000:]}")

    def post(self, path: str, payload: dict) -> dict:
        req = urllib.request.Request(self.base + path, json.dumps(payload).encode(), self.headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def send_traffic(bento: Bento, frame: pd.DataFrame) -> None:
    records = request_records(frame, default_spec())
    for start in range(0, len(records), 1000):
        reply = bento.post("/predict_batch", {"records": records[start : start + 1000]})
        assert reply["scored"] == len(records[start : start + 1000]), reply


def logged_rows(home: Path) -> int:
    root = home / "inference_log"
    if not root.exists():
        return 0
    return ds.dataset(root, format="parquet", partitioning="hive").count_rows()


def wait_for_rows(home: Path, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while logged_rows(home) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged_rows(home) >= expected


def flow_runs(stack, flow_name: str) -> list[dict]:
    req = urllib.request.Request(
        stack.env["PREFECT_API_URL"] + "/flow_runs/filter",
        json.dumps({"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_ASC"}).encode(),
        {"Content-Type": "application/json", **stack.prefect_headers()},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run_artifacts(stack, flow_run_id: str) -> list[dict]:
    req = urllib.request.Request(
        stack.env["PREFECT_API_URL"] + "/artifacts/filter",
        json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}}).encode(),
        {"Content-Type": "application/json", **stack.prefect_headers()},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_terminal(stack, flow_name: str, count: int, timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = flow_runs(stack, flow_name)
        if len(runs) >= count and all(r["state"]["type"] in TERMINAL for r in runs):
            return runs
        time.sleep(2)
    pytest.fail(f"{flow_name}: runs did not finish in {timeout} s: {flow_runs(stack, flow_name)}")


def drift_check(stack) -> None:
    """Run drift-check/fraud-detector on the last 3,000 served rows and wait for it."""
    check = stack.prefect(
        "deployment", "run", "drift-check/fraud-detector", "--watch",
        "--param", 'window={"rows": 3000}', "--param", 'policy={"min_window_rows": 1000}',
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]


def test_the_whole_loop(stack, smtp, tmp_path):
    home, env = stack.home, stack.env
    train = home / "data" / "train.parquet"
    train.parent.mkdir(parents=True, exist_ok=True)
    generate(GeneratorConfig(rows=40_000, seed=41)).to_parquet(train, index=False)
    run = stack.prefect(
        "deployment", "run", "train-and-release/fraud-detector", "--watch",
        "--param", f"data_path={train}", "--param", "build_image=false",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = registry.configure(stack.settings())
    first = str(client.get_model_version_by_alias("fraud-detector", "champion").version)

    bento = Bento(env, tmp_path / "bento-1.log")
    try:
        # normal traffic, then a check: no drift, no retraining, an all-clear mail
        send_traffic(
            bento, generate(GeneratorConfig(rows=3000, seed=42, drift=DriftKnobs(start_day=40)))
        )
        wait_for_rows(home, 3000)
        drift_check(stack)
        mails = smtp.messages()
        assert len(mails) == 1
        assert "no drift" in mails[0]["Subject"].lower(), mails[0]["Subject"]
        assert len(flow_runs(stack, "train-and-release")) == 1

        # drifted traffic and a labelled batch from the drifted period
        labelled = home / "labelled" / "batch-001.parquet"
        labelled.parent.mkdir(parents=True, exist_ok=True)
        generate(GeneratorConfig(rows=40_000, seed=43, drift=DRIFT)).to_parquet(
            labelled, index=False
        )
        send_traffic(bento, generate(GeneratorConfig(rows=3000, seed=44, drift=DRIFT)))
        wait_for_rows(home, 6000)
    finally:
        bento.stop()

    drift_check(stack)
    mails = smtp.messages()
    assert len(mails) == 2
    drift_mail = mails[1]
    assert (
        "drift" in drift_mail["Subject"].lower() and "no drift" not in drift_mail["Subject"].lower()
    )
    assert f"v{first}" in drift_mail["Subject"]
    assert sorted(a.strip() for a in drift_mail["To"].split(",")) == [
        "oncall@example.test", "risk-team@example.test"]  # fmt: skip
    body = drift_mail.get_body(("html",)).get_content()
    assert "amount" in body and "train-and-release" in body
    # charts inline (history of both checks, top columns, score), the report linked, under 1 MB
    assert len(smtp.envelopes[1].original_content) <= 1_000_000
    images = [p for p in drift_mail.walk() if p.get_content_maintype() == "image"]
    cids = {str(p["Content-ID"]).strip().strip("<>") for p in images}
    assert len(images) >= 3 and all(f"cid:{cid}" in body for cid in cids)
    attachments = [p.get_filename() for p in drift_mail.iter_attachments()]
    assert attachments in ([], ["drift_report.html.gz"])
    text = drift_mail.get_body(("plain",)).get_content()
    assert "last 2 checks" in text and "Decided by:" in text and "/runs/flow-run/" in text

    # the drift-check run shows the decision: summary, per-column table, links
    drift_runs = flow_runs(stack, "drift-check")
    artifacts = {a["key"]: a for a in run_artifacts(stack, drift_runs[1]["id"])}
    assert "Decided by:" in artifacts["drift-check"]["data"]
    assert artifacts["drift-columns"]["type"] == "table"
    assert "amount" in json.dumps(artifacts["drift-columns"]["data"])
    assert {"drift-report", "drift-mlflow-run", "drift-release-run", "drift-dashboard"} <= set(
        artifacts
    )  # the dashboard: the local workspace, or the profile's Evidently UI service
    found = re.search(r"/projects/([0-9a-f-]{36})", artifacts["drift-dashboard"]["data"])
    assert found, artifacts["drift-dashboard"]["data"]
    evidently_url = stack.env.get("FRAUD_EVIDENTLY_URL")
    if evidently_url:  # the service holds the project the link names
        with urllib.request.urlopen(f"{evidently_url}/api/projects", timeout=10) as r:
            assert found.group(1) in r.read().decode()
    release_link = artifacts["drift-release-run"]["data"]

    # exactly one retraining was started, and it runs to the end
    runs = wait_terminal(stack, "train-and-release", 2)
    assert len(runs) == 2 and runs[1]["state"]["type"] == "COMPLETED", runs[1]["state"]
    assert runs[1]["id"] in release_link  # the drift-check run links the release it started
    assert "drift-triggered" in runs[1]["tags"]

    # a second check right after does not pile up another retraining
    drift_check(stack)  # a triggered run is created before the check completes
    assert len(flow_runs(stack, "train-and-release")) == 2

    # the served model is the one the gates chose
    newest = max(
        client.search_model_versions("name = 'fraud-detector'"), key=lambda v: int(v.version)
    )
    champion = str(client.get_model_version_by_alias("fraud-detector", "champion").version)
    expected = str(newest.version) if newest.tags["gate.outcome"] == "promote" else first
    assert champion == expected
    bento = Bento(env, tmp_path / "bento-2.log")
    try:
        record = request_records(generate(GeneratorConfig(rows=1, seed=45)), default_spec())[0]
        reply = bento.post("/predict", record)
    finally:
        bento.stop()
    assert str(reply["model_version"]).lstrip("v") == champion
