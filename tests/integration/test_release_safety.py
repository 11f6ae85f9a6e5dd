"""One release at a time, and a registry outage survived: real Prefect server and worker, a real
MLflow tracking server (stopped for real mid-registration), real flow runs.

The MLflow server is reached through a small pass-through proxy whose only job is to pin the
moment of the outage: when the registration request arrives it is forwarded (the version gets
created), then the server is stopped by PID before the answer goes back, like a crash between
commit and reply. Every later request finds no server.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.core.http import free_port
from flows.promotion import audit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
MODEL = "fraud-detector"
DEPLOYMENT = "train-and-release/fraud-detector"
REGISTER_PATH = "/api/2.0/mlflow/model-versions/create"


class MlflowServer:
    """``mlflow server`` on SQLite with a separate artifact root; stop() and start() by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "mlflow-server.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # as the production profile: no job-execution consumers (seven processes never used)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "mlflow-server.log").read_text()[-3000:]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("the MLflow server did not answer /health in 120 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class OutageProxy:
    """Forward HTTP to ``upstream``; when armed, the next registration request triggers
    ``on_register`` after it was forwarded and its answer is dropped."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.armed: Callable[[], None] | None = None
        self.triggered = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep the test output clean
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                except OSError:
                    self.close_connection = True  # no server behind: the client sees a reset
                    return
                hook = proxy.armed
                if hook is not None and self.command == "POST" and self.path == REGISTER_PATH:
                    proxy.armed = None
                    hook()
                    proxy.triggered.set()
                    self.close_connection = True  # the reply is lost with the server
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(mlflow_server: MlflowServer) -> Iterator[OutageProxy]:
    p = OutageProxy(mlflow_server.port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def stack_extra_env(proxy: OutageProxy) -> dict[str, str]:
    """The flows talk to the MLflow server through the proxy; MLflow's own HTTP retries are
    kept short so an outage reaches the task retries (and their backoff) quickly."""
    return {"FRAUD_MLFLOW_TRACKING_URI": proxy.url, "FRAUD_MLFLOW_HTTP_RETRIES": "1"}


@pytest.fixture(scope="module")
def data(stack) -> str:
    path = stack.home / "data" / "tx.parquet"
    subprocess.run(
        [PY, "-m", "flows.cli", "generate-data", str(path), "--rows", "30000", "--seed", "5",
         "--invalid-rows", "10", "--quiet"],
        check=True, env=stack.env,
    )  # fmt: skip
    return str(path)


def client_of(server: MlflowServer) -> MlflowClient:
    return MlflowClient(server.url, server.url)


def champion(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except Exception:
        return None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# The subject of these tests is the registry and the promotion lock, not the gate: the fixed
# model (a rerun must train the same one) and a champion tolerance wider than the noise of this
# small holdout (a retrain that ties the champion must pass, not be blocked as not non-inferior).
NOT_THE_GATE = ("--param", "search=off", "--param", 'policy={"champion_tolerance": 0.05}')

RUN_FLOW = """
import sys
from flows.train_and_release import train_and_release
from flows.training.gate import GatePolicy
from flows.training.train import TrainParams
# the subject is the promotion lock, not the gate: the fixed model, and a tolerance that lets a
# retrain within the noise of this small holdout through
state = train_and_release(data_path=sys.argv[1], params=TrainParams(max_iter=int(sys.argv[2])),
                          search="off", policy=GatePolicy(champion_tolerance=0.05),
                          build_image=False, return_state=True)
print("FINAL-STATE", state.name, "|", state.message, flush=True)
"""

HOLD_LOCK = """
import sys
from prefect.concurrency.sync import concurrency
from flows.promotion.locks import ensure_lock, promotion_lock_name
name = promotion_lock_name(sys.argv[1])
ensure_lock(name)
with concurrency(name, occupy=1, strict=True, timeout_seconds=60):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_two_runs_at_once_one_promotion_and_one_clear_refusal(stack, data, mlflow_server):
    """Both runs gate against the same (absent) champion while the promotion lock is held; once
    it is free, exactly one moves the alias and the other re-reads it and refuses."""
    inspect = stack.prefect("deployment", "inspect", DEPLOYMENT)
    limit = inspect.stdout.split("'global_concurrency_limit':", 1)[-1].split("}", 1)[0]
    assert "'limit': 1" in limit, inspect.stdout[-2000:]  # the deployment runs one at a time

    holder = subprocess.Popen(
        [PY, "-c", HOLD_LOCK, MODEL], env=stack.env, cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for max_iter in (60, 80):  # two different candidates: two registered versions
            log = stack.home / f"concurrent-{max_iter}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [PY, "-c", RUN_FLOW, data, str(max_iter)], env=stack.env, cwd=ROOT,
                    stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                )  # fmt: skip
            runs.append((proc, log))
        wait_for(
            lambda: all("waiting for the promotion lock" in log.read_text() for _, log in runs),
            timeout=600,
            what="both runs to pass their gates and wait for the promotion lock",
        )
        assert champion(client_of(mlflow_server)) is None  # nobody promoted while locked
        if holder.stdin:
            holder.stdin.write("\n")
            holder.stdin.close()
        holder.wait(timeout=60)
        for proc, _ in runs:
            proc.wait(timeout=600)
    finally:
        for proc in [holder, *(p for p, _ in runs)]:
            if proc.poll() is None:  # a failure above: stop what this test started, by PID
                os.killpg(proc.pid, signal.SIGKILL) if proc is not holder else proc.kill()
                proc.wait(timeout=30)
    finals = [log.read_text().split("FINAL-STATE", 1)[-1].strip() for _, log in runs]
    names = sorted(f.split(" ", 1)[0] for f in finals)
    assert names == ["Completed", "Refused"], finals
    refusal = next(f for f in finals if f.startswith("Refused"))
    assert "compared against champion (none), but the champion is now v" in refusal

    client = client_of(mlflow_server)
    winner = champion(client)
    loser = {"1", "2"} - {winner}
    assert winner in {"1", "2"} and len(loser) == 1
    assert client.get_model_version(MODEL, loser.pop()).tags["release.outcome"] == "refused"
    assert client.get_model_version(MODEL, winner).tags["release.outcome"] == "released"
    moves = audit.history(client, MODEL)
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("release", None, winner)]
    pointer = stack.home / "bentoml" / "champions" / MODEL
    assert pointer.read_text().strip() == f"{MODEL}:v{winner}"


def test_registry_outage_fails_the_run_and_the_rerun_reuses_the_version(
    stack, data, mlflow_server, proxy
):
    """The server stops right after creating the version: the task retries, the run fails with
    the reason, the alias stays put; after a restart the rerun registers nothing new."""
    client = client_of(mlflow_server)
    before = champion(client)
    assert before is not None  # from the previous test
    versions_before = len(client.search_model_versions(f"name = '{MODEL}'"))
    proxy.armed = mlflow_server.stop

    failed = stack.prefect(
        "deployment", "run", DEPLOYMENT, "--watch",
        "--param", f"data_path={data}", "--param", 'params={"max_iter": 100}',
        "--param", "build_image=false", *NOT_THE_GATE,
    )  # fmt: skip
    output = failed.stdout + failed.stderr
    assert proxy.triggered.is_set(), output[-3000:]
    assert failed.returncode != 0, output[-3000:]
    assert "Failed" in output, output[-3000:]
    worker_log = (stack.home / "logs" / "prefect-worker.log").read_text()
    retries = [line for line in worker_log.splitlines() if "Retry 3/3 will start" in line]
    assert retries and "register-version" in retries[0], worker_log[-3000:]  # with backoff
    failed_line = next(ln for ln in worker_log.splitlines() if "Finished in state Failed" in ln)
    assert "register-version" in failed_line or "Connection" in failed_line, failed_line

    mlflow_server.start()
    client = client_of(mlflow_server)
    assert champion(client) == before  # no alias moved
    created = len(client.search_model_versions(f"name = '{MODEL}'"))
    assert created == versions_before + 1  # the request that lost its reply did register

    rerun = stack.prefect(
        "deployment", "run", DEPLOYMENT, "--watch",
        "--param", f"data_path={data}", "--param", 'params={"max_iter": 100}',
        "--param", "build_image=false", *NOT_THE_GATE,
    )  # fmt: skip
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == created  # no duplicate
    after = champion(client)
    assert after == str(created)
    assert client.get_model_version(MODEL, after).tags["release.outcome"] == "released"
