"""Prometheus for the serving stack, with the project's config and rules (deploy/prometheus/).

Debian's ``prometheus`` is installed when missing (as root). The templates are rendered into
``$FRAUD_HOME/prometheus/`` (``@PLACEHOLDERS@`` from :class:`PrometheusConfig`), checked with
``promtool`` in a staging folder, then put in place; Prometheus runs through ProcessManager
(log ``$FRAUD_HOME/logs/prometheus.log``, PID ``$FRAUD_HOME/run/prometheus.pid``) and reloads on
SIGHUP. Scrape targets: file_sd files NAME.json (:func:`register`). CLI: ``fraud prometheus``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess  # nosec B404 # argv lists only (apt-get, promtool, prometheus), never a shell
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_contracts.artifacts import fraud_home
from flows.core.files import tail
from flows.core.processes import PortTaken, ProcessManager, Server, port_holder
from flows.core.settings import PROJECT_ROOT
from flows.stack.config import load

PREFIX = "FRAUD_PROMETHEUS_"
SOURCE = PROJECT_ROOT / "deploy" / "prometheus"
NAME = "prometheus"  # the PID and log file names under $FRAUD_HOME/run and $FRAUD_HOME/logs
APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends", "prometheus")
DURATION = re.compile(r"[1-9][0-9]*(ms|s|m|h|d)")
FILE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
TARGET = re.compile(r"[A-Za-z0-9._-]+:[0-9]+")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]*")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EXAMPLES = "500ms, 15s, 2m, 1h or 15d"
CHECKS = {  # field -> (the pattern its value must match, the error)
    "port": (re.compile(r"[0-9]+"), "must be a port number (1-65535)"),
    "host": (re.compile(r"[A-Za-z0-9.:_-]+"), "must be a host name or address"),
    "scrape_interval": (DURATION, f"must be a duration such as {EXAMPLES}"),
    "evaluation_interval": (DURATION, f"must be a duration such as {EXAMPLES}"),
    "retention": (DURATION, f"must be a duration such as {EXAMPLES}"),
    "scrape_timeout": (re.compile(r"[1-9][0-9]*(ms|s|m|h)"), "must be a duration such as 5s"),
}


class PrometheusError(RuntimeError):
    """A Prometheus command failed; ``details`` is output to show before the message."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def say(message: str) -> None:
    print(f"[prometheus] {message}", file=sys.stderr, flush=True)


class PrometheusConfig(BaseSettings):
    """The settings of Prometheus, from FRAUD_PROMETHEUS_* (each field's alias is its variable,
    so that :func:`flows.stack.config.load` names the variable of an invalid value)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        alias_generator=lambda field: f"{PREFIX}{field.upper()}",
        populate_by_name=True,
        env_ignore_empty=True,  # an empty variable is unset, as ${VAR:-default} was
        frozen=True,
        extra="ignore",
    )

    home: Path = Field(default_factory=lambda: fraud_home(), alias="FRAUD_HOME")
    host: str = Field("127.0.0.1", description="The address Prometheus listens on.")
    port: int = Field(9090, description="Its port (UI and API).")
    scrape_interval: str = Field("15s", description="How often targets are scraped.")
    scrape_timeout: str | None = Field(None, description="Default 10s, or the interval if less.")
    evaluation_interval: str = Field("15s", description="How often rules are evaluated.")
    retention: str = Field("15d", description="How long samples are kept.")
    targets_dir: Path | None = Field(None, description="file_sd folder; <home>/fleet/targets.")

    @field_validator(*CHECKS, mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        pattern, message = CHECKS[info.field_name or ""]
        text = str(value)
        if value is None:  # the default of scrape_timeout (defaults are validated too)
            return value
        if not pattern.fullmatch(text) or (info.field_name == "port" and not 0 < int(text) < 65536):
            raise PydanticCustomError("setting", message)
        return value

    @property
    def timeout(self) -> str:
        """The scrape timeout: the setting, else Prometheus' 10 s or the interval if shorter."""
        if self.scrape_timeout:
            return self.scrape_timeout
        number = self.scrape_interval.rstrip("mshd")  # validated: [1-9][0-9]* and a unit
        unit = self.scrape_interval[len(number) :]
        seconds = (int(number) + 999) // 1000 if unit == "ms" else int(number) * SECONDS[unit]
        return self.scrape_interval if seconds < 10 else "10s"

    @property
    def root(self) -> Path:
        return self.home.absolute()

    @property
    def state(self) -> Path:
        return self.root / "prometheus"

    @property
    def targets(self) -> Path:
        return (self.targets_dir or self.root / "fleet" / "targets").absolute()

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def processes(self) -> ProcessManager:
        return ProcessManager(run_dir=self.root / "run", log_dir=self.root / "logs", say=say)


Labels = Mapping[str, str] | Sequence[str]  # {"replica": "r1"} or ["replica=r1"]


def config() -> PrometheusConfig:
    """The settings in the environment (an invalid one raises StackConfigError naming it)."""
    return load(PrometheusConfig)


def install_prometheus(cfg: PrometheusConfig) -> None:
    """Debian's package, without node-exporter (Recommends), when missing (root only)."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    command = " ".join(APT_INSTALL)
    if os.geteuid() != 0:
        raise PrometheusError(f"Prometheus is not installed; as root: {command}")
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise PrometheusError("Prometheus is not installed and apt-get is not available")
    log = cfg.root / "logs" / "apt.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"installing Prometheus ({command}; log: {log})")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:

        def apt(*args: str) -> bool:
            done = subprocess.run(  # nosec B603 # apt-get (full path), argv list, no shell
                [apt_get, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, check=False,
            )  # fmt: skip
            return done.returncode == 0

        ok = apt(*APT_INSTALL[1:]) or (apt("update") and apt(*APT_INSTALL[1:]))
    if not ok:
        raise PrometheusError("apt-get install prometheus failed", tail(log, 20))
    if not shutil.which("promtool"):
        raise PrometheusError("the prometheus package is installed but promtool is not on PATH")


def _render(directory: Path, cfg: PrometheusConfig, targets: Path) -> None:
    """Write the config (placeholders filled in) and the rules into ``directory``."""
    (directory / "rules").mkdir(parents=True, exist_ok=True)
    for rule_file in sorted((SOURCE / "rules").glob("*.yml")):
        shutil.copyfile(rule_file, directory / "rules" / rule_file.name)
    text = (SOURCE / "prometheus.yml").read_text()
    for placeholder, value in (
        ("@SCRAPE_INTERVAL@", cfg.scrape_interval),
        ("@SCRAPE_TIMEOUT@", cfg.timeout),
        ("@EVALUATION_INTERVAL@", cfg.evaluation_interval),
        ("@TARGETS_DIR@", str(targets)),
        ("@LISTEN@", cfg.listen),
    ):
        text = text.replace(placeholder, value)
    (directory / "prometheus.yml").write_text(text)


def _promtool(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool") or "promtool"
    return subprocess.run([promtool, *args], check=False, **kwargs)  # nosec B603 # argv list


def _install_config(cfg: PrometheusConfig) -> None:
    """Render into a staging folder, check it, then put it in place (by rename)."""
    install_prometheus(cfg)
    state = cfg.state
    state.mkdir(parents=True, exist_ok=True)
    cfg.targets.mkdir(parents=True, exist_ok=True)
    staging, rules, old = state / ".next", state / "rules", state / "rules.old"
    shutil.rmtree(staging, ignore_errors=True)
    _render(staging, cfg, cfg.targets)
    log = staging / "check.log"
    with log.open("wb") as out:  # the rendered config, and the rules it names
        checked = _promtool("check", "config", str(staging / "prometheus.yml"), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    if checked.returncode != 0:
        message = "the rendered config does not pass promtool check config"
        raise PrometheusError(message, log.read_text())
    shutil.rmtree(old, ignore_errors=True)
    if rules.is_dir():
        rules.rename(old)
    (staging / "rules").rename(rules)
    (staging / "prometheus.yml").replace(state / "prometheus.yml")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _get(cfg: PrometheusConfig, path: str) -> tuple[int, str]:
    """(status, Location header) of a GET of ``path`` (no proxy, no redirect); 0 if unreachable."""
    connection = http.client.HTTPConnection(cfg.host, cfg.port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Location") or ""
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        connection.close()


def ui_pages(cfg: PrometheusConfig) -> str:
    """Where the alerts and targets pages are (Debian's build serves the classic UI)."""
    _, home = _get(cfg, "/")
    base = f"{cfg.url}/classic" if "/classic/" in home else cfg.url
    return f"alerts: {base}/alerts, targets: {base}/targets, rules: {base}/rules"


# ---------------------------------------------------------------------- the commands


def server(cfg: PrometheusConfig) -> Server:
    """How Prometheus is started: on the listen port, healthy when /-/ready answers."""
    return Server(
        name=NAME,
        argv=[
            shutil.which("prometheus") or "prometheus",
            f"--config.file={cfg.state / 'prometheus.yml'}",
            f"--storage.tsdb.path={cfg.state / 'data'}",
            f"--storage.tsdb.retention.time={cfg.retention}",
            f"--web.listen-address={cfg.listen}",
            "--web.console.templates=/etc/prometheus/consoles",
            "--web.console.libraries=/etc/prometheus/console_libraries",
        ],
        port=cfg.port,
        health=f"{cfg.url}/-/ready",
        port_setting=f"{PREFIX}PORT",
        start_timeout_s=60,
    )


def up(cfg: PrometheusConfig | None = None) -> None:
    """Render, check and start Prometheus; a running one reloads its config instead."""
    cfg = cfg or config()
    processes = cfg.processes()
    if processes.alive(NAME):
        reload(cfg)
        return
    if (holder := port_holder(cfg.port)) is not None:
        raise PortTaken(
            f"{cfg.listen} is taken by another server ({holder.describe()}; a system prometheus "
            f"service?); set {PREFIX}PORT"
        )
    _install_config(cfg)
    say(
        f"starting Prometheus on {cfg.url} (config {cfg.state / 'prometheus.yml'}, targets "
        f"{cfg.targets}, log: {processes.log_file(NAME)})"
    )
    processes.ensure(server(cfg))
    say(f"Prometheus UI: {cfg.url} ({ui_pages(cfg)})")


def reload(cfg: PrometheusConfig | None = None) -> None:
    """Render, check and apply the config to the running server (SIGHUP)."""
    cfg = cfg or config()
    pid = cfg.processes().pid(NAME)
    if pid is None:
        raise PrometheusError("Prometheus is not running (fraud prometheus up starts it)")
    _install_config(cfg)
    say(f"reloading Prometheus (pid {pid}) with {cfg.state / 'prometheus.yml'}")
    os.kill(pid, signal.SIGHUP)


def down(cfg: PrometheusConfig | None = None) -> bool:
    """Stop Prometheus by PID (TERM, then KILL); whether one was running."""
    cfg = cfg or config()
    return cfg.processes().stop(NAME)


def status(cfg: PrometheusConfig | None = None) -> list[str]:
    """Whether it runs, its UI (and whether it answers) and the scrape-target folder."""
    cfg = cfg or config()
    lines = cfg.processes().status_lines([NAME])
    code, _ = _get(cfg, "/-/ready")
    answer = f"ready; {ui_pages(cfg)}" if 200 <= code < 400 else "not answering"
    lines.append(f"Prometheus UI: {cfg.url} ({answer})")
    lines.append(f"scrape-target files: {cfg.targets}")
    return lines


def check(cfg: PrometheusConfig | None = None) -> int:
    """What ``make lint`` asks of the config: it renders and parses, the rules' tests pass.

    Returns the exit code of the first promtool command that fails (0: all passed); promtool's
    output goes to this process's stdout and stderr.
    """
    cfg = cfg or config()
    install_prometheus(cfg)
    with tempfile.TemporaryDirectory(prefix="prometheus-check-") as tmp:
        directory = Path(tmp)
        # scrape-target files of its own, empty, so the check reads no live fleet, warns of none
        targets = directory / "targets"
        targets.mkdir()
        for name in ("bento", "serve", "balancer"):
            (targets / f"{name}.json").write_text("[]\n")
        _render(directory, cfg, targets)
        rules = [str(p) for p in sorted((SOURCE / "rules").glob("*.yml"))]
        tests = [str(p) for p in sorted((SOURCE / "tests").glob("*.yml"))]
        for args in (
            ["check", "config", str(directory / "prometheus.yml")],
            ["check", "rules", *rules],
            ["test", "rules", *tests],
        ):
            code = _promtool(*args).returncode
            if code != 0:
                return code
    return 0


def render(directory: Path | str, cfg: PrometheusConfig | None = None) -> None:
    """Write the config and rules into ``directory``; nothing is started or checked."""
    cfg = cfg or config()
    directory = Path(directory)
    _render(directory, cfg, cfg.targets)
    say(f"rendered {directory}/prometheus.yml and {directory}/rules/")


def _labels(labels: Labels) -> dict[str, str]:
    """LABEL=VALUE pairs (or a mapping) checked: Prometheus label names, plain values."""
    pairs = [f"{k}={v}" for k, v in labels.items()] if isinstance(labels, Mapping) else labels
    checked: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise PrometheusError(
                f"register: label '{pair}' must be NAME=VALUE with a Prometheus label name "
                "([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        if not LABEL_VALUE.fullmatch(value):
            raise PrometheusError(
                f"register: the value of label {key}='{value}' may hold letters, digits and "
                "._:/@+- only"
            )
        checked[key] = value
    return checked


def register(
    name: str, target: str, labels: Labels = (), cfg: PrometheusConfig | None = None
) -> Path:
    """Write the scrape-target file NAME.json with one target (atomically); the file.

    ``labels`` is a mapping or LABEL=VALUE strings; nothing is written when any is invalid.
    """
    cfg = cfg or config()
    if not FILE_NAME.fullmatch(name):
        raise PrometheusError(
            f"register: NAME='{name}' must be a file name such as serve ([a-z][a-z0-9_-]*)"
        )
    if not TARGET.fullmatch(target):
        raise PrometheusError(f"register: HOST:PORT='{target}' must look like 127.0.0.1:3000")
    entry = [{"targets": [target], "labels": _labels(labels)}]
    cfg.targets.mkdir(parents=True, exist_ok=True)
    path = cfg.targets / f"{name}.json"
    staged = path.with_name(f"{name}.json.tmp")
    staged.write_text(json.dumps(entry) + "\n")
    staged.replace(path)
    say(f"registered {target} for scraping in {path}")
    return path


def unregister(name: str, cfg: PrometheusConfig | None = None) -> None:
    """Remove the scrape-target file NAME.json (nothing happens when there is none)."""
    cfg = cfg or config()
    if not FILE_NAME.fullmatch(name):
        raise PrometheusError(f"unregister: NAME='{name}' must be a file name such as serve")
    (cfg.targets / f"{name}.json").unlink(missing_ok=True)
