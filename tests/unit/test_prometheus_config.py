"""The Prometheus config the project owns: rendering, scrape-target files, and rule consistency.

Nothing is started: :func:`flows.stack.prometheus.render` and ``register`` only write files.
What promtool checks (syntax, the rules' arithmetic in deploy/prometheus/tests) runs in
``make lint`` (``fraud prometheus check``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import prometheus as cli
from flows.stack import prometheus
from flows.stack.config import StackConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
RECORD_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """A home of its own in tmp_path and no Prometheus setting from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("FRAUD_PROMETHEUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path / "home"))


def command(*argv: str) -> int:
    """``fraud prometheus ARGV`` in this process: its exit status."""
    parser = argparse.ArgumentParser(prog="fraud prometheus")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "rendered"
    prometheus.render(out)
    assert sorted(p.name for p in (out / "rules").iterdir()) == ["alerts.yml", "recording.yml"]
    return yaml.safe_load((out / "prometheus.yml").read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules/KIND.yml, across its groups."""
    doc = yaml.safe_load((DEPLOY / "rules" / f"{kind}.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_render_defaults(tmp_path, monkeypatch):
    config = rendered(tmp_path, monkeypatch)
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


def test_render_with_short_intervals_keeps_the_timeout_within_the_interval(tmp_path, monkeypatch):
    config = rendered(
        tmp_path,
        monkeypatch,
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
def test_bad_settings_are_refused_by_name(tmp_path, monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(StackConfigError) as refused:
        prometheus.render(tmp_path / "out")
    assert name in str(refused.value) and value in str(refused.value)
    assert not (tmp_path / "out").exists()
    # the command line says it in one line on stderr, without a traceback, and exits 1
    assert command("render", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert name in err and value in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_register_writes_a_file_sd_file_and_unregister_removes_it(tmp_path):
    home = tmp_path / "home"
    path = home / "fleet" / "targets" / "serve.json"
    assert prometheus.register("serve", "127.0.0.1:3000", ["replica=bentoml-serve"]) == path
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:3000"], "labels": {"replica": "bentoml-serve"}}
    ]
    assert not path.with_name("serve.json.tmp").exists()
    prometheus.unregister("serve")
    assert not path.exists()
    # labels as a mapping (how the stack registers `make serve`), and the command line
    prometheus.register("serve", "127.0.0.1:3001", {"replica": "r1"})
    assert json.loads(path.read_text())[0]["labels"] == {"replica": "r1"}
    assert command("unregister", "serve") == 0
    assert not path.exists()
    assert command("register", "serve", "127.0.0.1:3000", "replica=bentoml-serve") == 0
    assert json.loads(path.read_text())[0]["targets"] == ["127.0.0.1:3000"]


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
def test_register_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, message):
    home = tmp_path / "home"
    with pytest.raises(prometheus.PrometheusError, match=re.escape(message)):
        prometheus.register(args[0], args[1], args[2:])
    assert command("register", *args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(home.rglob("*.json*"))


def test_unregister_refuses_a_bad_name(tmp_path):
    with pytest.raises(prometheus.PrometheusError, match=re.escape("NAME='../x'")):
        prometheus.unregister("../x")


@pytest.mark.parametrize(
    ("interval", "timeout"), [("15s", "10s"), ("5s", "5s"), ("500ms", "500ms"), ("2m", "10s")]
)
def test_the_default_scrape_timeout_is_10s_or_the_interval(interval, timeout, monkeypatch):
    monkeypatch.setenv("FRAUD_PROMETHEUS_SCRAPE_INTERVAL", interval)
    assert prometheus.config().timeout == timeout
    monkeypatch.setenv("FRAUD_PROMETHEUS_SCRAPE_TIMEOUT", "3s")
    assert prometheus.config().timeout == "3s"


def test_relative_folders_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAUD_HOME", "home")
    monkeypatch.setenv("FRAUD_PROMETHEUS_TARGETS_DIR", "targets")
    config = prometheus.config()
    assert config.state == tmp_path / "home" / "prometheus"
    assert config.targets == tmp_path / "targets"
    assert prometheus.server(config).port_setting == "FRAUD_PROMETHEUS_PORT"


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


def test_a_missing_prometheus_needs_root_and_says_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(prometheus.os, "geteuid", lambda: 1000)
    with pytest.raises(prometheus.PrometheusError) as refused:
        prometheus.install_prometheus(prometheus.config())
    assert "as root: apt-get install -y --no-install-recommends prometheus" in str(refused.value)


def test_a_failed_apt_get_is_retried_after_an_update_and_logged(tmp_path, monkeypatch):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    apt_get = stubs / "apt-get"
    apt_get.write_text(f'#!/bin/sh\necho "$*" >>{calls}\necho "E: no network"\nexit 100\n')
    apt_get.chmod(0o755)
    monkeypatch.setenv("PATH", str(stubs))
    monkeypatch.setattr(prometheus.os, "geteuid", lambda: 0)
    with pytest.raises(prometheus.PrometheusError, match="apt-get install prometheus failed") as e:
        prometheus.install_prometheus(prometheus.config())
    assert "E: no network" in e.value.details
    assert calls.read_text().splitlines() == [
        "install -y --no-install-recommends prometheus",
        "update",
    ]
    assert "E: no network" in (tmp_path / "home" / "logs" / "apt.log").read_text()
