"""The production profile on this machine: PostgreSQL, and Prefect and MLflow servers on it.

``up``: a private PostgreSQL cluster (Debian's package, run as ``postgres`` by the process
manager), a role and three databases; a Prefect server and an MLflow tracking server (own
artifact root; MLflow's basic-auth app, its users and grants in the third database) on them;
the Evidently UI service; then the embedded stack's workers and mail catcher pointed at those
servers, and Prometheus. ``down`` stops what ``up`` started, by PID (the cluster
only when it is this profile's own). Passwords are never printed nor put on a command line: the
servers read them from a pgpass file, the role gets a SCRAM verifier.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import hmac
import os
import secrets
import signal
import socket
import subprocess  # nosec B404 # psql with an argv list, never a shell
import time
from collections.abc import Sequence
from pathlib import Path

from flows.core.processes import Server, http_probe, run_as, stop_pid
from flows.stack import credentials, docker_pool, packages, pg_home
from flows.stack.config import DockerPoolConfig, ProductionConfig, StackConfig, load
from flows.stack.embedded import EmbeddedStack, StackError, say

SERVERS = ("prefect-server", "mlflow-server", "evidently-ui")


class ProductionStack:
    """The production profile: its own home, cluster, servers, and an embedded stack on them."""

    def __init__(self, config: ProductionConfig) -> None:
        self.config = config
        # a password given in the environment stays here: servers and runs must not inherit it
        self._given_password = os.environ.pop("FRAUD_PG_PASSWORD", None) or None
        os.environ.update(config.stack_environ())
        self.stack = EmbeddedStack(load(StackConfig), extra_env=config.stack_environ())
        self.processes = self.stack.processes
        self.docker_pool = docker_pool.for_profile(load(DockerPoolConfig), self.stack)

    # ------------------------------------------------------------------ PostgreSQL
    def pg_bin(self) -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        if not found:
            raise StackError("PostgreSQL is not installed; as root: apt-get install -y postgresql")
        return Path(found[-1]).parent

    def postgres(self) -> Server:
        cfg = self.config
        return Server(
            "postgres",
            [str(self.pg_bin() / "postgres"), "-D", str(cfg.cluster_dir / "data")],
            port=cfg.pg_port,
            health=self.pg_ready,
            user="postgres",
            port_setting="FRAUD_PG_PORT",
            stop_signal=signal.SIGINT,  # PostgreSQL's fast shutdown
            stop_grace_s=60,
        )

    def pg_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.config.pg_port), timeout=1):
                pass
        except OSError:
            return False
        return (
            subprocess.run(  # nosec B603
                [str(self.pg_bin() / "pg_isready"), "-q", "-h", "127.0.0.1",
                 "-p", str(self.config.pg_port), "-t", "2"],
                check=False, capture_output=True,
            ).returncode
            == 0
        )  # fmt: skip

    def cluster_pid(self) -> int | None:
        """The postmaster of this cluster, from its own ``postmaster.pid``, if it runs."""
        try:
            pid = int((self.config.cluster_dir / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def _wait_ready(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not self.pg_ready():
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL does not answer on 127.0.0.1:{self.config.pg_port}")
            time.sleep(0.5)

    def pg_up(self) -> None:
        """The cluster (created once), started, with the role and its password."""
        cfg = self.config
        packages.ensure("postgresql", cfg.home / "logs")
        data = cfg.cluster_dir / "data"
        if not (data / "PG_VERSION").exists():
            self._initdb(data)
        if self.cluster_pid() is not None and not self.processes.alive("postgres"):
            say(f"PostgreSQL of {cfg.cluster_dir} already running (started by another home)")
            self._wait_ready()
        else:
            (cfg.cluster_dir / "run").mkdir(parents=True, exist_ok=True)
            _chown_postgres(cfg.cluster_dir / "run")
            (data / "fraud.conf").write_text(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {cfg.pg_port}\n"
                f"unix_socket_directories = '{cfg.cluster_dir / 'run'}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "max_connections = 200\n"
            )
            _chown_postgres(data / "fraud.conf")
            self.processes.ensure(self.postgres())
        verifier = scram_verifier(self.password())
        self.psql(
            f"SELECT format('CREATE ROLE %I LOGIN', '{cfg.pg_user}') WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_roles WHERE rolname = '{cfg.pg_user}')\\gexec\n"
            f"ALTER ROLE \"{cfg.pg_user}\" LOGIN PASSWORD '{verifier}';\n"
        )
        self.write_pgpass()

    def _initdb(self, data: Path) -> None:
        cfg = self.config
        say(f"creating the PostgreSQL cluster in {cfg.cluster_dir}")
        pg_home.prepare_parent(cfg.cluster_dir)
        (cfg.cluster_dir / "run").mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        for path in (cfg.cluster_dir, cfg.cluster_dir / "run", data):
            _chown_postgres(path)
        data.chmod(0o700)
        reach = subprocess.run(  # nosec B603 B607 # test(1), argv list
            ["test", "-w", str(data)], check=False, **run_as("postgres", None)
        )
        if reach.returncode != 0:
            raise StackError(
                f"user postgres cannot reach {cfg.cluster_dir} (a parent folder is private); "
                "set FRAUD_PG_DIR to a folder it can reach"
            )
        log = cfg.home / "logs" / "initdb.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            code = subprocess.run(  # nosec B603
                [str(self.pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                 "--locale=C", "--auth-local=peer", "--auth-host=scram-sha-256"],
                stdout=out, stderr=subprocess.STDOUT, check=False, **run_as("postgres", None),
            ).returncode  # fmt: skip
        if code != 0:
            raise StackError(f"initdb failed; see {log}")
        pg_home.mark_created(cfg.cluster_dir, cfg.home)  # down stops what this profile made
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("include_if_exists 'fraud.conf'\n")

    def psql(self, sql: str) -> None:
        """SQL as the cluster's superuser over its private socket (never a password)."""
        cfg = self.config
        result = subprocess.run(  # nosec B603
            [str(self.pg_bin() / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", str(cfg.cluster_dir / "run"), "-p", str(cfg.pg_port), "-d", "postgres"],
            input=sql, text=True, capture_output=True, check=False, **run_as("postgres", None),
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"psql failed: {result.stderr.strip()[-500:]}")

    def password(self) -> str:
        """FRAUD_PG_PASSWORD, else the password file (generated once, mode 0600)."""
        if self._given_password:
            return self._given_password
        path = self.config.password_file
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(24))
        path.chmod(0o600)
        return path.read_text()

    def write_pgpass(self) -> None:
        cfg = self.config
        cfg.secrets_dir.mkdir(parents=True, exist_ok=True)
        cfg.secrets_dir.chmod(0o700)
        pw = self.password().replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(cfg.pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"127.0.0.1:{cfg.pg_port}:*:{cfg.pg_user}:{pw}\n")

    def create_databases(self) -> None:
        owner = self.config.pg_user
        for db in self.config.databases:
            self.psql(
                f"SELECT format('CREATE DATABASE %I OWNER %I', '{db}', '{owner}') WHERE NOT "
                f"EXISTS (SELECT 1 FROM pg_database WHERE datname = '{db}')\\gexec\n"
            )

    def drop_databases(self) -> None:
        if not self.pg_ready():
            say(f"PostgreSQL is not answering on 127.0.0.1:{self.config.pg_port}; nothing dropped")
            return
        for db in self.config.databases:
            say(f"dropping database {db}")
            self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);\n')

    def pg_down(self) -> None:
        """Stop the cluster: by this home's PID file, else by the cluster's own postmaster.pid."""
        if self.processes.stop("postgres", grace_s=60, sig=signal.SIGINT):
            return
        pid = self.cluster_pid()
        if pid is None:
            return
        say(f"stopping PostgreSQL of {self.config.cluster_dir} (pid {pid}, from postmaster.pid)")
        if not stop_pid(pid, ((signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0))):
            raise StackError(f"PostgreSQL (pid {pid}) did not stop; see its log")

    def pg_remove(self) -> None:
        """Delete the cluster this profile created (stopped first); ``make clean`` calls it."""
        if self.own_cluster():
            self.pg_down()
        try:
            removed = pg_home.remove(self.config.cluster_dir, self.config.home)
        except RuntimeError as err:
            raise StackError(str(err)) from None
        if removed:
            say(f"deleted the PostgreSQL cluster in {self.config.cluster_dir}")

    # ------------------------------------------------------------------ servers
    def server_env(self, **more: str) -> dict[str, str]:
        return self.stack.child_env(PGPASSFILE=str(self.config.pgpass), **more)

    def prefect_server(self) -> Server:
        cfg = self.config
        pg = f"{cfg.pg_user}@127.0.0.1:{cfg.pg_port}"
        return Server(
            "prefect-server",
            [self.stack.tool("prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(cfg.prod_prefect_port)],
            port=cfg.prod_prefect_port,
            health=f"{cfg.prefect_url}/health",
            env=self.server_env(
                PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{pg}/{cfg.prefect_db}"
            ),
            port_setting="FRAUD_PROD_PREFECT_PORT",
            start_timeout_s=180,
        )  # fmt: skip

    def mlflow_server(self) -> Server:
        cfg = self.config
        pg = f"{cfg.pg_user}@127.0.0.1:{cfg.pg_port}"
        return Server(
            "mlflow-server",
            [self.stack.tool("mlflow"), "server",
             "--backend-store-uri", f"postgresql+psycopg2://{pg}/{cfg.mlflow_db}",
             "--artifacts-destination", str(cfg.artifacts), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(cfg.mlflow_port), "--workers", "1",
             "--app-name", "fraud-basic-auth"],  # MLflow's basic-auth app: mlflow_server.py
            port=cfg.mlflow_port,
            health=f"{cfg.mlflow_url}/health",
            # the tracking server's GenAI job runners are not used by the pipeline
            env=self.server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                                MLFLOW_AUTH_CONFIG_PATH=str(cfg.mlflow_secrets_dir / "auth.ini")),
            port_setting="FRAUD_MLFLOW_PORT",
            start_timeout_s=180,
        )  # fmt: skip

    def up(self) -> None:
        cfg = self.config
        credentials.ensure_api_keys(cfg)  # the bento's API keys (0600 file)
        credentials.ensure_tls(cfg)  # the served port's certificate
        credentials.ensure_prefect_auth(cfg)  # the Prefect server's basic auth
        credentials.ensure_mlflow_auth(cfg)  # the MLflow server's users (and its auth.ini)
        self.pg_up()
        self.create_databases()
        cfg.artifacts.mkdir(parents=True, exist_ok=True)
        (cfg.home / "evidently").mkdir(parents=True, exist_ok=True)
        ui = self.stack.evidently_ui(cfg.prod_evidently_port, cfg.home / "evidently")
        ui = dataclasses.replace(ui, port_setting="FRAUD_PROD_EVIDENTLY_PORT")
        servers = (self.prefect_server(), self.mlflow_server(), ui)
        started: list[Server] = []
        try:
            for server in servers:  # start all three, then wait: their start-ups overlap
                if self.processes.start_new(server)[1]:
                    started.append(server)
            for server in servers:
                self.processes.wait_healthy(server)
        except Exception:
            for server in started:  # what was running before this call keeps running
                self.processes.stop_server(server)
            raise
        self.stack.up()
        self.docker_pool_up()
        from flows.stack import prometheus

        prometheus.up()
        say(
            f"Prefect API {cfg.prefect_url}, MLflow {cfg.mlflow_url}, Evidently "
            f"{cfg.evidently_url}, Prometheus http://127.0.0.1:{cfg.prod_prometheus_port}, "
            f"state in {cfg.home}"
        )

    def own_cluster(self) -> bool:
        """Whether this profile created the cluster (its initdb marker), whatever its path."""
        return pg_home.owns(self.config.cluster_dir, self.config.home)

    def down(self) -> None:
        from flows.stack import prometheus

        try:
            prometheus.down()
        finally:
            self.docker_pool_down()
            self.stack.down()
            for name in SERVERS:
                self.processes.stop(name)
            if self.own_cluster():
                self.pg_down()

    def status(self) -> list[str]:
        cfg = self.config
        pg = (
            f"running on 127.0.0.1:{cfg.pg_port} ({cfg.cluster_dir})"
            if self.pg_ready()
            else ("stopped")
        )
        mlflow = "healthy" if http_probe(f"{cfg.mlflow_url}/health")() else "not answering"
        from flows.stack import prometheus

        return [
            f"postgresql: {pg}",
            *self.processes.status_lines(["postgres", "mlflow-server"]),
            *self.stack.status(),
            *self.docker_pool_status(),
            f"MLflow: {cfg.mlflow_url} ({mlflow})",
            *prometheus.status(),
        ]

    def env_lines(self) -> list[str]:
        return self.stack.env_lines()

    # ------------------------------------------- Docker work pool (flows/stack/docker_pool.py)
    def docker_pool_up(self) -> None:
        if self.docker_pool is not None:
            self.docker_pool.up()

    def docker_pool_down(self) -> None:
        docker_pool.stop_worker(self.processes)  # also when turned off since `up`

    def docker_pool_status(self) -> list[str]:
        return self.docker_pool.status() if self.docker_pool is not None else []

    def deploy(self) -> None:
        """The process deployments, and the Docker pool's when it is on."""
        self.stack.deploy()
        if self.docker_pool is not None:
            self.docker_pool.deploy()

    def release(self, args: Sequence[str] = ()) -> int:
        """train-and-release on the Docker pool when it is on, else on the process worker."""
        deployment = self.docker_pool.release_deployment if self.docker_pool else None
        return self.stack.release(args, deployment)


def scram_verifier(password: str) -> str:
    """A SCRAM-SHA-256 verifier of ``password``, so the server never sees the password."""
    salt, iterations = os.urandom(16), 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    stored = b64(hashlib.sha256(client).digest())
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${stored}:{b64(server)}"


def _chown_postgres(path: Path) -> None:
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "the system user 'postgres' is missing (it comes with the postgresql package)"
        ) from None
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parts
    try:
        return (int(parts[parts.index("postgresql") + 1]),)
    except (ValueError, IndexError):
        return (0,)
