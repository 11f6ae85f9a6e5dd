"""Prometheus (``fraud prometheus``) watching a real ``bentoml serve`` found through file_sd.

The rules evaluate the bento's real series, every metric they read is on its ``/metrics``, and
when the bento stops, the "replica down" alert appears in Prometheus' own API. Scrapes and rule
evaluations run every second here; the rules are the real ones (``for: 1m``), so the alert is
asserted from ``pending``, its state after the first failed scrape's evaluation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.core.http import free_port
from tests.support.serving import (
    ROOT,
    TinyModel,
    call,
    model_env,
    start_bento,
    train_tiny_model,
    wait_ready,
)

pytestmark = pytest.mark.integration

# `fraud prometheus ARGS` in a process of its own, as the command line runs it
COMMAND = (
    "import argparse, sys, flows.cli.prometheus as m; "
    "p = argparse.ArgumentParser(prog='fraud prometheus'); m.add_arguments(p); "
    "raise SystemExit(m.run(p.parse_args(sys.argv[1:])))"
)
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
# a raw series name in a rule: not part of a level:metric:operations recording name
RAW_NAME = re.compile(r"(?<![:\w])((?:fraud|bentoml)_\w+)(?![:\w(])")


@dataclass
class Prometheus:
    base: str
    env: dict[str, str]
    home: Path

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", COMMAND, *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = call(f"{self.base}/api/v1/{path}{query}")
        assert status == 200, body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("prom-model") / "bentoml")


@pytest.fixture
def prometheus(tmp_path) -> Iterator[Prometheus]:
    """Prometheus from ``fraud prometheus up`` on a free port, scraping and evaluating every 1 s."""
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "BENTOML_"))}
    env |= {
        "FRAUD_HOME": str(home),
        "FRAUD_PROMETHEUS_PORT": str(port),
        "FRAUD_PROMETHEUS_SCRAPE_INTERVAL": "1s",
        "FRAUD_PROMETHEUS_EVALUATION_INTERVAL": "1s",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    prom = Prometheus(f"http://127.0.0.1:{port}", env, home)
    try:
        up = prom.command("up")
        assert up.returncode == 0, up.stderr
        status = prom.command("status")
        assert status.returncode == 0, status.stderr
        assert "prometheus: running (pid" in status.stdout
        assert f"Prometheus UI: {prom.base} (ready;" in status.stdout
        yield prom
    finally:
        down = prom.command("down")
        assert down.returncode == 0, down.stderr
        assert not (home / "run" / "prometheus.pid").exists()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 45) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} not seen in {timeout:.0f} s (last answer: {last!r})")


def raw_names_in_rules() -> set[str]:
    """The bento's series the recording and alert rules read (fraud_*, bentoml_*)."""
    names: set[str] = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names |= set(RAW_NAME.findall(rule["expr"]))
    return names


def sample_names(exposition: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def test_rules_see_the_bento_and_replica_down_goes_pending(prometheus, tiny, tmp_path):
    log_dir = tmp_path / "bento"
    log_dir.mkdir()
    bento = start_bento(model_env(log_dir, tiny), log_dir / "serve.log")
    try:
        wait_ready(bento)
        # registered the way the fleet registers its replicas, after Prometheus started
        targets = prometheus.home / "fleet" / "targets"
        target = f"127.0.0.1:{bento.port}"
        entry = [{"targets": [target], "labels": {"replica": "r1", "model_version": "1"}}]
        (targets / "bento.json.tmp").write_text(json.dumps(entry))
        (targets / "bento.json.tmp").rename(targets / "bento.json")

        for record in tiny.records(20):
            assert call(f"{bento.base}/predict", record)[0] == 200
        status, exposition = call(f"{bento.base}/metrics")
        assert status == 200
        missing = raw_names_in_rules() - sample_names(exposition)
        assert not missing, f"rules read series the bento does not export: {sorted(missing)}"

        up = wait_for(
            "up == 1 for the registered bento",
            lambda: prometheus.query(f'up{{job="bento",instance="{target}"}} == 1'),
        )
        # the file's model_version is the deployed one; the bento's own label stays its own
        assert up[0]["metric"]["replica"] == "r1"
        assert up[0]["metric"]["deployed_version"] == "1"
        served = wait_for(
            "the served-version recording rule",
            lambda: prometheus.query('replica:fraud_model_info:served{replica="r1"}'),
        )
        assert served[0]["metric"]["model_version"] == "1"
        assert served[0]["metric"]["tag"] == tiny.tag
        records = tiny.records(5)

        def traffic_rate() -> list[dict[str, Any]]:
            for record in records:  # requests between scrapes: the counter moves
                assert call(f"{bento.base}/predict", record)[0] == 200
            return prometheus.query('job:fraud_requests:rate5m{endpoint="/predict"} > 0')

        rate = wait_for("a /predict request rate", traffic_rate)
        assert rate[0]["metric"]["job"] == "bento"
        assert prometheus.api("alerts")["alerts"] == []

        bento.stop()

        def replica_down() -> list[dict[str, Any]]:
            return [
                a
                for a in prometheus.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "FraudReplicaDown"
                and a["labels"]["instance"] == target
            ]

        alerts = wait_for("the FraudReplicaDown alert", replica_down)
        assert alerts[0]["state"] in {"pending", "firing"}
        assert alerts[0]["labels"]["replica"] == "r1"
        assert alerts[0]["labels"]["severity"] == "page"
        assert "r1" in alerts[0]["annotations"]["summary"]
        # `up` on a running Prometheus re-renders, checks and reloads its config (SIGHUP)
        again = prometheus.command("up")
        assert again.returncode == 0, again.stderr
        assert "reloading Prometheus" in again.stderr
    finally:
        bento.stop()
