"""The Prometheus config the project owns: rendering, scrape-target files, and rule consistency.

Nothing is started: ``scripts/prometheus.sh render`` and ``register`` only write files. What
promtool checks (syntax, the rules' arithmetic in deploy/prometheus/tests) runs in ``make lint``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prometheus.sh"
DEPLOY = ROOT / "deploy" / "prometheus"
RECORD_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def script(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(home.parent), "FRAUD_HOME": str(home)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=environment | env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def rendered(tmp_path: Path, **env: str) -> dict[str, Any]:
    out = tmp_path / "rendered"
    result = script(tmp_path / "home", "render", str(out), **env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "rules").iterdir()) == ["alerts.yml", "recording.yml"]
    return yaml.safe_load((out / "prometheus.yml").read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules/KIND.yml, across its groups."""
    doc = yaml.safe_load((DEPLOY / "rules" / f"{kind}.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_render_defaults(tmp_path):
    config = rendered(tmp_path)
    assert config["global"] == {
        "scrape_interval": "15s",
        "scrape_timeout": "10s",
        "evaluation_interval": "15s",
    }
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = tmp_path / "home" / "fleet" / "targets"
    assert jobs["bento"]["file_sd_configs"][0]["files"] == [
        f"{targets}/bento.json",
        f"{targets}/serve.json",
    ]
    assert jobs["balancer"]["file_sd_configs"][0]["files"] == [f"{targets}/balancer.json"]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]
    # the fleet's model_version target label moves aside for the bento's own label
    relabel = jobs["bento"]["relabel_configs"]
    assert relabel[0]["target_label"] == "deployed_version"
    assert relabel[1] == {"action": "labeldrop", "regex": "model_version"}
    assert "@" not in (tmp_path / "rendered" / "prometheus.yml").read_text()


def test_render_with_short_intervals_keeps_the_timeout_within_the_interval(tmp_path):
    config = rendered(
        tmp_path,
        FRAUD_PROMETHEUS_SCRAPE_INTERVAL="1s",
        FRAUD_PROMETHEUS_EVALUATION_INTERVAL="2s",
        FRAUD_PROMETHEUS_PORT="19999",
        FRAUD_PROMETHEUS_TARGETS_DIR=str(tmp_path / "elsewhere"),
    )
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "2s",
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["balancer"]["file_sd_configs"][0]["files"] == [
        f"{tmp_path / 'elsewhere'}/balancer.json"
    ]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19999"]}]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FRAUD_PROMETHEUS_PORT", "90x"),
        ("FRAUD_PROMETHEUS_PORT", "70000"),
        ("FRAUD_PROMETHEUS_SCRAPE_INTERVAL", "15"),
        ("FRAUD_PROMETHEUS_EVALUATION_INTERVAL", "0s"),
        ("FRAUD_PROMETHEUS_RETENTION", "a week"),
        ("FRAUD_PROMETHEUS_HOST", "127.0.0.1; rm -rf /"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, name, value):
    result = script(tmp_path / "home", "render", str(tmp_path / "out"), **{name: value})
    assert result.returncode == 1
    assert name in result.stderr and value in result.stderr
    assert not (tmp_path / "out").exists()


def test_register_writes_a_file_sd_file_and_unregister_removes_it(tmp_path):
    home = tmp_path / "home"
    result = script(home, "register", "serve", "127.0.0.1:3000", "replica=bentoml-serve")
    assert result.returncode == 0, result.stderr
    path = home / "fleet" / "targets" / "serve.json"
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:3000"], "labels": {"replica": "bentoml-serve"}}
    ]
    assert not path.with_name("serve.json.tmp").exists()
    assert script(home, "unregister", "serve").returncode == 0
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Serve!", "127.0.0.1:3000"], "NAME='Serve!'"),
        (["serve", "127.0.0.1"], "HOST:PORT='127.0.0.1'"),
        (["serve", "127.0.0.1:3000", "replica"], "label 'replica'"),
        (["serve", "127.0.0.1:3000", "__address__=x"], "label '__address__=x'"),
        (["serve", "127.0.0.1:3000", 'replica=a"}]'], "value of label replica"),
    ],
)
def test_register_refuses_bad_input_and_writes_nothing(tmp_path, args, message):
    home = tmp_path / "home"
    result = script(home, "register", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert not any(home.rglob("*.json*"))


def test_every_recording_rule_a_rule_reads_is_defined():
    """A misspelt recording name would pass promtool's checks and never match anything."""
    defined = {rule["record"] for rule in rules("recording")}
    for rule in rules("recording") + rules("alerts"):
        used = set(RECORD_NAME.findall(rule["expr"]))
        assert used <= defined, f"{rule.get('record') or rule['alert']} reads {used - defined}"


def test_every_alert_says_how_bad_and_what_happened():
    for rule in rules("alerts"):
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_has_a_promtool_test_that_fires_it():
    tests = yaml.safe_load((DEPLOY / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in rules("alerts")} <= fired
