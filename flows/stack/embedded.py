"""The embedded default stack: a local Prefect server (SQLite), its workers and a mail catcher.

``fraud stack up`` starts what is not running (a healthy server and worker are reused),
``deploy`` creates the work pools and deploys ``prefect.yaml``, ``release`` and ``drift`` run the
deployments and wait, ``serve`` runs ``bentoml serve`` of the champion, ``monitor-ui`` the
Evidently UI, ``down`` stops all of it by PID. Every server goes through
:class:`flows.core.processes.ProcessManager`; every default is in :mod:`flows.stack.config`.
With ``PREFECT_API_URL`` set, an existing Prefect server is used instead of a local one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess  # nosec B404 # argv lists only (prefect, fraud, bentoml, docker)
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from flows.core.processes import ProcessManager, Server, http_probe
from flows.stack import packages
from flows.stack.config import (
    ALERT_POOL,
    LOCAL_MAIL_RECIPIENTS,
    PROCESS_DEPLOYMENTS,
    StackConfig,
)

SERVER_NAMES = (
    "prefect-server",
    "prefect-worker",
    "prefect-alert-worker",
    "mail-catcher",
    "bento",
    "evidently-ui",
)
WORKER_STOP_GRACE_S = 5  # a process worker forwards SIGINT to itself and waits: 5 s, then KILL


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    """A stack command failed; the message says what and which log to read."""


class EmbeddedStack:
    """The servers of one ``FRAUD_HOME``, started and stopped by PID."""

    def __init__(self, config: StackConfig, extra_env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.extra_env = dict(extra_env or {})
        config.home.mkdir(parents=True, exist_ok=True)
        self.processes = ProcessManager(config.run_dir, config.log_dir, say=say)

    # ------------------------------------------------------------------ environment
    def environ(self) -> dict[str, str]:
        """The variables the stack's servers, flow runs and the user's shell share."""
        cfg = self.config
        env = {
            "FRAUD_PROJECT_DIR": str(cfg.project_root),
            "FRAUD_HOME": str(cfg.home),
            "PREFECT_HOME": str(cfg.prefect_home),
            "BENTOML_HOME": str(cfg.bentoml_home),
            "PREFECT_API_URL": cfg.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "BENTOML_DO_NOT_TRACK": "true",
            "DO_NOT_TRACK": "1",
            "FRAUD_HEARTBEAT_SECONDS": str(cfg.heartbeat_seconds),
            "FRAUD_HEARTBEAT_SILENCE_SECONDS": str(cfg.heartbeat_silence_seconds),
        }
        if cfg.local_mail:
            env |= {
                "FRAUD_SMTP_HOST": "127.0.0.1",
                "FRAUD_SMTP_PORT": str(cfg.mail_port),
                "FRAUD_SMTP_RECIPIENTS": os.environ.get(
                    "FRAUD_SMTP_RECIPIENTS", LOCAL_MAIL_RECIPIENTS
                ),
            }
        return env | self.extra_env

    def child_env(self, **more: str) -> dict[str, str]:
        return os.environ.copy() | self.environ() | more

    def tool(self, name: str) -> str:
        return str(self.config.bin / name)

    # ------------------------------------------------------------------ servers
    def prefect_server(self) -> Server:
        cfg = self.config
        return Server(
            "prefect-server",
            [self.tool("prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(cfg.prefect_port)],
            port=cfg.prefect_port,
            health=f"{cfg.api_url.rstrip('/')}/health",
            env=self.child_env(),
            port_setting="FRAUD_PREFECT_PORT",
            start_timeout_s=180,
        )  # fmt: skip

    def mail_catcher(self) -> Server:
        cfg = self.config
        return Server(
            "mail-catcher",
            [self.tool("python"), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{cfg.mail_port}",
             "-c", "aiosmtpd.handlers.Mailbox", str(cfg.mail_dir)],
            port=cfg.mail_port,
            health=lambda: _accepts(cfg.mail_port),
            env=self.child_env(),
            port_setting="FRAUD_MAIL_PORT",
        )  # fmt: skip

    def worker(self, name: str, pool: str, heartbeat: bool) -> Server:
        more = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.config.heartbeat_seconds)}
        return Server(
            name,
            [self.tool("prefect"), "worker", "start", "--pool", pool, "--type", "process"],
            env=self.child_env(**(more if heartbeat else {})),
            cwd=self.config.project_root,
            stop_grace_s=WORKER_STOP_GRACE_S,
        )

    def bento(self) -> Server:
        port = self.config.serve_port
        return Server(
            "bento",
            [self.tool("bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            port=port,
            health=f"http://127.0.0.1:{port}/readyz",
            env=self.child_env(),
            cwd=self.config.project_root,
            port_setting="FRAUD_SERVE_PORT",
        )

    def evidently_ui(self, port: int | None = None, workspace: Path | None = None) -> Server:
        port = port or self.config.evidently_port
        workspace = workspace or self.config.dashboard_dir
        return Server(
            "evidently-ui",
            [self.tool("evidently"), "ui", "--workspace", str(workspace), "--host", "127.0.0.1",
             "--port", str(port)],
            port=port,
            health=f"http://127.0.0.1:{port}/",
            env=self.child_env(),
            port_setting="FRAUD_EVIDENTLY_PORT",
            start_timeout_s=120,
        )  # fmt: skip

    # ------------------------------------------------------------------ commands
    def up(self) -> None:
        """Start the Prefect server (unless external), the mail catcher and both workers."""
        cfg = self.config
        cfg.prefect_home.mkdir(parents=True, exist_ok=True)
        if cfg.external_prefect:
            if not http_probe(f"{cfg.api_url.rstrip('/')}/health")():
                raise StackError(f"PREFECT_API_URL={cfg.api_url} is not answering")
            say(f"using the Prefect server at {cfg.api_url}")
        elif self.processes.alive("prefect-server"):
            self.processes.wait_healthy(self.prefect_server())
            say(f"Prefect server already up at {cfg.api_url}")
        else:
            say(f"starting the Prefect server on 127.0.0.1:{cfg.prefect_port}")
            self.processes.ensure(self.prefect_server())
        if cfg.local_mail:
            # a complete Maildir: aiosmtpd's Mailbox creates tmp/new/cur only when it is absent
            for part in ("tmp", "new", "cur"):
                (cfg.mail_dir / part).mkdir(parents=True, exist_ok=True)
            self.processes.ensure(self.mail_catcher())
        # both pools in one process: each `prefect work-pool` call pays seconds of import time
        self.fraud("work-pools", cfg.work_pool, ALERT_POOL, quiet=True)
        self.processes.ensure(self.worker("prefect-worker", cfg.work_pool, heartbeat=True))
        self.processes.ensure(self.worker("prefect-alert-worker", ALERT_POOL, heartbeat=False))

    def deploy(
        self,
        names: Sequence[str] = PROCESS_DEPLOYMENTS,
        env: Mapping[str, str] | None = None,
        automations: bool = True,
    ) -> None:
        """Deploy ``prefect.yaml``'s ``names`` and create the crashed-run automations.

        By name: the Docker work pool's deployments belong to the production profile only.
        """
        log = self.config.log_dir / "deploy.log"
        say(f"deploying {len(names)} deployments of prefect.yaml (log: {log})")
        picked = [arg for name in names for arg in ("-n", name)]
        argv = [self.tool("prefect"), "--no-prompt", "deploy", *picked]
        self._logged(argv, log, "deploy", env=env)
        if not automations:
            return
        cfg = self.config
        say(
            f"creating the crashed-run automations (heartbeat {cfg.heartbeat_seconds} s, "
            f"silence {cfg.heartbeat_silence_seconds} s)"
        )
        self._logged([self.tool("fraud"), "automations"], log, "automations")

    def release(self, args: Sequence[str] = (), deployment: str | None = None) -> int:
        """Run the release deployment and wait; without Docker the image step is skipped."""
        deployment = deployment or self.config.deployment
        extra: list[str] = []
        if not _docker_answers():
            say("WARNING: no Docker engine answers: this release builds the bento, NOT the image")
            say("  (run 'make docker' as root, or start Docker, to containerize and smoke-test)")
            extra = ["--param", "build_image=false"]
        say(f"running {deployment} {shlex.join([*extra, *args])}")
        return self.run_deployment(deployment, [*extra, *args])

    def drift(self, args: Sequence[str] = (), deployment: str | None = None) -> int:
        deployment = deployment or "drift-check/fraud-detector"
        say(f"running {deployment} {shlex.join(args)}")
        return self.run_deployment(deployment, args)

    def run_deployment(self, name: str, args: Sequence[str]) -> int:
        argv = [self.tool("prefect"), "deployment", "run", name, "--watch", *args]
        return subprocess.run(argv, env=self.child_env(), check=False).returncode  # nosec B603

    def serve(self) -> None:
        """``bentoml serve`` of the champion in the background; Prometheus finds it by file."""
        from flows.stack import prometheus

        port = self.config.serve_port
        if self.processes.alive("bento"):
            say(f"bento already serving on http://127.0.0.1:{port}")
            return
        say(f"starting bentoml serve (the champion) on http://127.0.0.1:{port}")
        self.processes.ensure(self.bento())
        prometheus.register("serve", f"127.0.0.1:{port}", {"replica": "bentoml-serve"})

    def monitor_ui(self) -> None:
        """The Evidently UI over the workspace every drift check adds its point to."""
        cfg = self.config
        cfg.dashboard_dir.mkdir(parents=True, exist_ok=True)
        self.processes.ensure(self.evidently_ui())
        say(f"the dashboard: http://127.0.0.1:{cfg.evidently_port} (project: the model's name)")

    def fleet_up(self, args: Sequence[str]) -> int:
        packages.ensure("haproxy", self.config.log_dir)
        if self.processes.alive("bento") and "--port" not in args:
            say(f"bentoml serve holds port {self.config.serve_port}: stopping it for the fleet")
            self.processes.stop("bento")
        say(f"starting the serving fleet (replicas: {self.config.home / 'fleet'})")
        return self.fraud("fleet", "up", *args)

    def fleet_down(self) -> int:
        if not (self.config.home / "fleet" / "fleet.json").exists():
            return 0
        return self.fraud("fleet", "down")

    def down(self) -> None:
        """Stop what ``up``, ``serve``, ``monitor-ui`` and ``fleet-up`` started, by PID."""
        from flows.stack import prometheus

        self.fleet_down()
        self.processes.stop("bento")
        prometheus.unregister("serve")
        workers = [
            threading.Thread(target=self.processes.stop, args=(name, WORKER_STOP_GRACE_S))
            for name in ("prefect-alert-worker", "prefect-worker")
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        for name in ("prefect-server", "mail-catcher", "evidently-ui"):
            self.processes.stop(name)

    def status(self) -> list[str]:
        lines = self.processes.status_lines(SERVER_NAMES)
        if (self.config.home / "fleet" / "fleet.json").exists():
            self.fraud("fleet", "status")
        health = (
            "healthy"
            if http_probe(f"{self.config.api_url.rstrip('/')}/health")()
            else ("not answering")
        )
        return [*lines, f"Prefect API: {self.config.api_url} ({health})"]

    def env_lines(self) -> list[str]:
        """Shell lines to talk to this stack (``eval "$(fraud stack env)"``)."""
        path = [str(self.config.bin)]
        uv = _uv_dir()
        if uv is not None and uv != self.config.bin:
            path.append(str(uv))
        lines = [f'export PATH={shlex.quote(":".join(path))}:"$PATH"']
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.environ().items()]
        return lines

    # ------------------------------------------------------------------ helpers
    def fraud(self, *args: str, quiet: bool = False) -> int:
        out = subprocess.DEVNULL if quiet else None
        argv = [self.tool("fraud"), *args]
        code = subprocess.run(argv, env=self.child_env(), stdout=out, check=False).returncode  # nosec B603
        if code != 0 and quiet:
            raise StackError(f"`fraud {shlex.join(args)}` failed with exit code {code}")
        return code

    def _logged(
        self, argv: list[str], log: Path, what: str, env: Mapping[str, str] | None = None
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            code = subprocess.run(  # nosec B603 # the checkout's own tools
                argv, env=self.child_env(**(env or {})), cwd=self.config.project_root, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
            ).returncode  # fmt: skip
        if code != 0:
            from flows.core.files import tail

            raise StackError(f"{what} failed; see {log}:\n{tail(log, 30)}")


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(  # nosec B603 B607 # docker CLI, argv list
                ["docker", "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def _uv_dir() -> Path | None:
    """The folder of uv: on PATH, else where ``pip install --user uv`` puts it."""
    found = shutil.which("uv")
    if found:
        return Path(found).parent
    base = Path(os.environ.get("PYTHONUSERBASE") or Path.home() / ".local")
    return base / "bin" if (base / "bin" / "uv").is_file() else None
