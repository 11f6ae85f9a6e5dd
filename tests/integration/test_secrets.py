"""Secrets stay secret: the SMTP, database, Prefect and MLflow passwords never appear in output.

A stack is started with a sentinel SMTP password (and, in the production profile, its database
password): a release and a drift check that mails through a real SMTP server requiring a login.
Then every file under FRAUD_HOME (logs, outbox, mail, reports, MLflow artifacts, Prefect's own
state), the Prefect flow-run logs, runs, deployments and artifacts read from the API, the MLflow
experiments, runs (params, tags, metrics), models and versions, the received emails and the
command lines of all running processes are searched for the passwords and their base64 forms.
In the production profile, the MLflow server's logins are checked against the real server too:
401 without a valid one, the reader reads and is refused every write (403), rotation.
"""

from __future__ import annotations

import base64
import json
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from mlflow.entities import ViewType

from data_contracts.api_keys import client_key
from data_contracts.spec import default_spec
from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.core.http import free_port
from flows.registry import registry
from tests.support.drift import write_log

pytestmark = pytest.mark.integration

SMTP_USER = "fraud-monitor"
SMTP_SECRET = f"smtp-sentinel-{secrets.token_hex(12)}"


class AuthInbox:
    """aiosmtpd handler that keeps every message with whether its session had logged in."""

    def __init__(self) -> None:
        self.received: list[tuple[bool, bytes]] = []
        self.logins: list[bool] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((bool(session.authenticated), envelope.original_content))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == SMTP_USER
            and auth_data.password.decode() == SMTP_SECRET
        )
        self.logins.append(ok)
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def smtp_port() -> int:
    """Chosen when the module starts, not at collection: a port free minutes ago may be taken."""
    return free_port()


@pytest.fixture(scope="module")
def smtp(smtp_port: int) -> Iterator[AuthInbox]:
    inbox = AuthInbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=smtp_port,
        authenticator=inbox.authenticate,
        auth_required=True,  # no login, no mail: a delivered message proves the login
        auth_require_tls=False,
    )
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture(scope="module")
def stack_extra_env(smtp, smtp_port: int) -> dict[str, str]:
    return {
        "FRAUD_SMTP_HOST": "127.0.0.1",
        "FRAUD_SMTP_PORT": str(smtp_port),
        "FRAUD_SMTP_USER": SMTP_USER,
        "FRAUD_SMTP_PASSWORD": SMTP_SECRET,
        "FRAUD_SMTP_SENDER": "fraud-monitor@example.test",
        "FRAUD_SMTP_RECIPIENTS": "risk-team@example.test",
        "FRAUD_SMTP_MAIL_ALL_CLEAR": "true",
    }


def needles(secret: str) -> dict[str, bytes]:
    """The secret as it could leak: plain, base64 (AUTH LOGIN) and as an AUTH PLAIN token."""
    return {
        "plain": secret.encode(),
        "base64": base64.b64encode(secret.encode()),
        "auth-plain": base64.b64encode(f"\0{SMTP_USER}\0{secret}".encode()),
    }


def hits(secrets_: list[str], haystacks: dict[str, bytes]) -> list[str]:
    """Where any form of any secret occurs (``source: form``)."""
    found = []
    for name, data in haystacks.items():
        for secret in secrets_:
            found += [f"{name}: {form}" for form, n in needles(secret).items() if n in data]
    return found


def files_under(home: Path, private: Path) -> dict[str, bytes]:
    """Every file under the home folder except the profile's own credential folder."""
    return {
        str(p): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file() and not p.is_symlink() and private not in p.parents
    }


def prefect_records(api: str, headers: dict[str, str]) -> dict[str, list[dict]]:
    """Flow-run logs, artifacts, flow runs, deployments and variables, read from the API."""
    out: dict[str, list[dict]] = {}
    with httpx.Client(base_url=api, timeout=30, headers=headers) as http:
        for kind in ("logs", "artifacts", "flow_runs", "task_runs", "deployments", "variables"):
            rows, offset = [], 0
            while True:
                page = http.post(f"/{kind}/filter", json={"limit": 200, "offset": offset})
                page.raise_for_status()
                rows += page.json()
                if len(page.json()) < 200:
                    break
                offset += 200
            out[kind] = rows
    return out


def mlflow_records(client) -> dict[str, list[dict]]:
    """Experiments, runs (params, tags, metrics), registered models and versions."""
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    models = client.search_registered_models()
    versions = [v for m in models for v in client.search_model_versions(f"name = '{m.name}'")]
    return {
        "experiments": [{"name": e.name, "tags": e.tags} for e in experiments],
        "runs": [
            {"params": r.data.params, "tags": r.data.tags, "metrics": list(r.data.metrics)}
            for r in runs
        ],
        "models": [{"name": m.name, "tags": m.tags, "description": m.description} for m in models],
        "versions": [{"tags": v.tags, "description": v.description} for v in versions],
    }


def mail_contents(raw: bytes) -> bytes:
    """A received message: raw, plus every part decoded (attachments are base64 on the wire)."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    parts = [p.get_payload(decode=True) or b"" for p in msg.walk() if not p.is_multipart()]
    return b"\n".join([raw, *parts])


def process_command_lines() -> bytes:
    """The argv of every running process (what `ps` shows to any user)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmdline.read_bytes())
        except OSError:  # the process ended meanwhile
            continue
    return b"\n".join(out)


def drifted_window(version: str, home: Path) -> None:
    """2,000 served rows with a shifted amount and merchant mix, in the bento's log format."""
    window = generate(GeneratorConfig(rows=2000, seed=62, drift=DriftKnobs(amount_scale=1.8)))
    z = 0.9 * (np.log1p(window["amount"].to_numpy(float)) - 5) - 2
    window["score"] = 1 / (1 + np.exp(-z))
    now = datetime.now(UTC)
    window["timestamp"] = [now - timedelta(seconds=5 * (i + 1)) for i in range(len(window))]
    write_log(window, home / "inference_log", default_spec(), f"v{version}")


def test_passwords_never_appear_in_logs_artifacts_or_mail(stack, smtp):
    outputs: dict[str, bytes] = {}
    data = stack.home / "data" / "train.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    generate(GeneratorConfig(rows=20_000, seed=61)).to_parquet(data, index=False)
    release = stack.prefect(
        "deployment", "run", "train-and-release/fraud-detector", "--watch",
        "--param", f"data_path={data}", "--param", "build_image=false",
    )  # fmt: skip
    assert release.returncode == 0, release.stdout[-3000:] + release.stderr[-3000:]
    outputs["release output"] = (release.stdout + release.stderr).encode()

    client = registry.configure(stack.settings())
    version = str(client.get_model_version_by_alias("fraud-detector", "champion").version)
    drifted_window(version, stack.home)
    check = stack.prefect(
        "deployment", "run", "drift-check/fraud-detector", "--watch",
        "--param", 'window={"rows": 2000}', "--param", 'policy={"min_window_rows": 1000}',
        "--param", 'retraining={"trigger": false}',
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    outputs["drift-check output"] = (check.stdout + check.stderr).encode()
    outputs["process command lines"] = process_command_lines()

    # the report was really mailed, through a login with the sentinel password
    assert smtp.received, "no drift email arrived"
    assert all(authenticated for authenticated, _ in smtp.received)
    assert True in smtp.logins
    parse = BytesParser(policy=policy.default).parsebytes
    subjects = [str(parse(raw)["Subject"]) for _, raw in smtp.received]
    assert any(f"v{version}" in s for s in subjects), subjects
    mails = {f"email {i}": mail_contents(raw) for i, (_, raw) in enumerate(smtp.received)}

    private = stack.home / "secrets"  # the production profile's credential files
    searched = [SMTP_SECRET, *stack.secrets]
    if stack.profile == "prod":
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        files = [p for p in private.rglob("*") if p.is_file()]
        for credential in private.rglob("*"):
            mode = 0o600 if credential.is_file() else 0o700
            mode = 0o644 if credential.name == "ca.pem" else mode  # a CA certificate is public
            assert stat.S_IMODE(credential.stat().st_mode) == mode, credential
        # the search finds the password where it is meant to be: the check can fail
        assert hits(list(stack.secrets), {p.name: p.read_bytes() for p in files})
        api_key = client_key(stack.env)  # the bento's API key the profile generated
        assert api_key and hits([api_key], {p.name: p.read_bytes() for p in files})
        searched.append(api_key)
        # the Prefect server requires its basic auth: without it (or with a wrong one), 401
        prefect_password = str(stack.prefect_auth).partition(":")[2]
        api = stack.env["PREFECT_API_URL"]
        for auth in (None, ("fraud", "wrong-password")):
            refused = httpx.post(f"{api}/flow_runs/filter", json={}, auth=auth, timeout=30)
            assert refused.status_code == 401, refused.text
        assert prefect_password and hits(
            [prefect_password], {p.name: p.read_bytes() for p in files}
        )
        searched.append(prefect_password)
        # the MLflow users' passwords, and the basic-auth tokens clients send
        for user in ("admin", "pipeline", "reader"):
            name, password = stack.mlflow_user(user)
            assert hits([password], {p.name: p.read_bytes() for p in files})
            searched += [password, base64.b64encode(f"{name}:{password}".encode()).decode()]

    prefect = prefect_records(stack.env["PREFECT_API_URL"], stack.prefect_headers())
    assert prefect["logs"] and prefect["artifacts"] and len(prefect["flow_runs"]) >= 2
    mlflow = mlflow_records(client)
    assert mlflow["runs"] and mlflow["versions"]
    haystacks = (
        files_under(stack.home, private)
        | {f"prefect {k}": json.dumps(v).encode() for k, v in prefect.items()}
        | {f"mlflow {k}": json.dumps(v).encode() for k, v in mlflow.items()}
        | mails
        | outputs
    )
    assert any("drift_reports" in name for name in haystacks)  # the reports were searched
    assert hits(searched, haystacks) == []


@pytest.mark.prod_only
def test_mlflow_needs_a_login_and_the_reader_only_reads(stack):
    """MLflow's basic-auth app: 401 without a valid login; the reader may read, never write."""
    import mlflow

    url, model = stack.tracking_uri, "fraud-detector"
    pipeline, reader = stack.mlflow_user("pipeline"), stack.mlflow_user("reader")
    # the pipeline user (the test's own client logs in as it, from the file) registers a version
    client = registry.configure(stack.settings())
    experiment = client.create_experiment(f"auth-probe-{secrets.token_hex(4)}")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("probe", "probe.txt")
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    version = client.create_model_version(
        model, f"runs:/{run.info.run_id}/probe.txt", run.info.run_id
    )
    alias = {"name": model, "alias": "auth-probe", "version": version.version}
    created = {"name": model, "source": version.source, "run_id": run.info.run_id}

    def call(method: str, path: str, auth, **body) -> httpx.Response:
        sent = {"params": body} if method == "GET" else {"json": body}
        return httpx.request(method, f"{url}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **sent)

    read = ("GET", "registered-models/get", {"name": model})
    write = ("POST", "model-versions/create", created)
    for auth in (None, (pipeline[0], "wrong-password-0123"), (reader[0], pipeline[1])):
        for method, path, body in (read, write):
            assert call(method, path, auth, **body).status_code == 401, (auth, path)
    # the reader reads the registry and its aliases ...
    assert call(*read[:2], reader, **read[2]).status_code == 200
    assert call("GET", "model-versions/search", reader, filter=f"name = '{model}'").is_success
    # ... and cannot register a version, move an alias, create a model or an experiment
    for method, path, body in (
        write,
        ("POST", "registered-models/alias", alias),
        ("POST", "registered-models/create", {"name": f"reader-{secrets.token_hex(4)}"}),
        ("POST", "experiments/create", {"name": f"reader-{secrets.token_hex(4)}"}),
    ):
        refused = call(method, path, reader, **body)
        assert refused.status_code == 403, (path, refused.text)
    # the pipeline user can do each of those
    assert call(*write[:2], pipeline, **write[2]).status_code == 200
    assert call("POST", "registered-models/alias", pipeline, **alias).status_code == 200
    assert client.get_model_version_by_alias(model, "auth-probe").version == version.version
    client.delete_registered_model_alias(model, "auth-probe")
    made = call("POST", "registered-models/create", pipeline, name=f"p-{secrets.token_hex(4)}")
    assert made.status_code == 200, made.text

    # rotation: the server and the file change together; the old password stops working
    for user in ("pipeline", "admin"):
        old = stack.mlflow_user(user)
        rotated = stack.prod("mlflow-password", "rotate", "--user", user, timeout=120)
        assert rotated.returncode == 0, rotated.stderr
        new = stack.mlflow_user(user)
        assert new[1] != old[1] and new[1] not in rotated.stdout + rotated.stderr
        assert call(*read[:2], old, **read[2]).status_code == 401
        assert call(*read[:2], new, **read[2]).status_code == 200
    assert client.get_registered_model(model).name == model  # the file-reading client follows


def test_the_search_finds_every_form_of_a_secret():
    secret = "s3cr3t-value"
    wire = b"AUTH PLAIN " + base64.b64encode(f"\0{SMTP_USER}\0{secret}".encode())
    haystacks = {"log": b"password=" + secret.encode(), "smtp": wire, "other": b"nothing"}
    found = hits([secret], haystacks)
    assert {"log: plain", "smtp: auth-plain"} <= set(found)
    assert not [f for f in found if f.startswith("other")]
