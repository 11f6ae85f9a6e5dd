"""The fleet's plain parts without Docker: HAProxy configuration, its validation and atomic
install, the master CLI and stats parsers, the state file and the Prometheus target files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flows.core.settings import Settings
from flows.serving import balancer, canary, fleet, rollout, tls

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

SERVERS = [balancer.Server("m-v1-fleet-31001", 31001), balancer.Server("m-v1-fleet-31002", 31002)]


def test_config_checks_readyz_retries_and_exports_metrics():
    text = balancer.render_config(balancer.BalancerSpec(port=3000, metrics_port=8404), SERVERS)
    assert "bind 127.0.0.1:3000" in text and "bind 127.0.0.1:8404" in text
    assert "http-check send meth GET uri /readyz" in text
    assert "option redispatch 1" in text and "retry-on conn-failure" in text
    assert "prometheus-exporter if { path /metrics }" in text
    assert "server m-v1-fleet-31001 127.0.0.1:31001" in text
    assert "server m-v1-fleet-31002 127.0.0.1:31002" in text
    assert "nbsrv(bento)" in text  # the balancer's /readyz reflects the replicas


@pytest.mark.parametrize(
    ("servers", "message"),
    [([], "at least one server"), ([SERVERS[0], SERVERS[0]], "must be unique")],
)
def test_config_refuses_no_or_duplicate_servers(servers, message):
    with pytest.raises(ValueError, match=message):
        balancer.render_config(balancer.BalancerSpec(), servers)


@needs_haproxy
def test_rendered_config_passes_haproxy_check(tmp_path):
    path = tmp_path / "haproxy.cfg"
    balancer.install_config(path, balancer.render_config(balancer.BalancerSpec(), SERVERS))
    assert "m-v1-fleet-31002" in path.read_text()


@needs_haproxy
def test_a_tls_config_is_modern_only_and_passes_haproxy_check(tmp_path):
    pem, ca = tls.make_certificate(tmp_path / "tls")
    assert oct(pem.stat().st_mode & 0o777) == "0o600" and ca.read_text().startswith("-----BEGIN")
    spec = balancer.BalancerSpec(port=3443, tls_cert=str(pem))
    text = balancer.render_config(spec, SERVERS)
    assert f"bind 127.0.0.1:3443 ssl crt {pem} alpn http/1.1" in text
    assert "ssl-min-ver TLSv1.2" in text and "no-tls-tickets" in text
    ciphers = next(ln for ln in text.splitlines() if "ssl-default-bind-ciphers " in ln)
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA" in c)
               for c in ciphers.split()[-1].split(":"))  # fmt: skip
    assert "deny deny_status 404 if { path_beg /metrics }" in text
    assert "ssl" not in balancer.render_config(balancer.BalancerSpec(), SERVERS)
    balancer.install_config(tmp_path / "haproxy.cfg", text)  # haproxy -c accepts it


def test_a_tls_certificate_open_to_others_is_refused(tmp_path):
    pem, _ = tls.make_certificate(tmp_path / "tls")
    assert tls.serving_cert({tls.TLS_CERT_ENV: str(pem)}) == str(pem)
    assert tls.serving_cert({}) is None
    pem.chmod(0o644)
    with pytest.raises(tls.TlsError, match=r"FRAUD_TLS_CERT=.*chmod 600"):
        tls.serving_cert({tls.TLS_CERT_ENV: str(pem)})


@needs_haproxy
def test_a_bad_config_never_replaces_a_good_one(tmp_path):
    path = tmp_path / "haproxy.cfg"
    good = balancer.render_config(balancer.BalancerSpec(), SERVERS)
    balancer.install_config(path, good)
    bad = good.replace("balance roundrobin", "balance no-such-algorithm")
    with pytest.raises(balancer.BalancerError, match="haproxy -c refused"):
        balancer.install_config(path, bad)
    assert path.read_text() == good
    assert (tmp_path / "haproxy.cfg.rejected").read_text() == bad
    assert not list(tmp_path.glob(".haproxy.cfg.candidate*"))


SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
1162            master          5 [failed: 1]   0d00h02m07s     2.6.12
# workers
1271            worker          1               0d00h00m00s     2.6.12
# old workers
1233            worker          3               0d00h00m43s     2.6.12
# programs

"""


def test_show_proc_gives_reloads_failures_and_old_workers():
    procs = balancer.parse_show_proc(SHOW_PROC)
    assert (procs.reloads, procs.failed_reloads) == (5, 1)
    assert procs.workers == [1271] and procs.old_workers == [1233]


def test_stats_csv_gives_each_backend_server_state():
    text = (
        "# pxname,svname,status,check_status,check_desc\n"
        "fraud,FRONTEND,OPEN,,\n"
        "bento,r1,UP,L7OK,Layer7 check passed\n"
        "bento,r2,DOWN,L4CON,Connection refused\n"
        "bento,BACKEND,UP,,\n"
    )
    states = balancer.parse_stats_csv(text)
    assert [(s.name, s.up) for s in states] == [("r1", True), ("r2", False)]
    assert "Connection refused" in states[1].check


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _state(version: str = "3", pid: int = 4242) -> fleet.FleetState:
    replicas = [
        fleet.Replica(f"m-v{version}-fleet-{p}", p, f"id{p}", version, f"m:v{version}")
        for p in (31001, 31002)
    ]
    return fleet.FleetState("m", "m", version, replicas, 3000, "127.0.0.1", 8404, pid)


def test_state_and_prometheus_targets_are_written_where_prometheus_reads_them(tmp_path):
    paths = fleet.FleetPaths.of(Settings(home=tmp_path))
    fleet.save_state(paths, _state())
    assert fleet.load_state(paths).replicas == _state().replicas
    bento = json.loads((tmp_path / "fleet" / "targets" / "bento.json").read_text())
    assert bento == [
        {
            "targets": [f"127.0.0.1:{p}"],
            "labels": {"replica": f"m-v3-fleet-{p}", "model_version": "3"},
        }
        for p in (31001, 31002)
    ]
    lb = json.loads((tmp_path / "fleet" / "targets" / "balancer.json").read_text())
    assert lb[0]["targets"] == ["127.0.0.1:8404"]
    fleet.save_state(paths, None)
    assert fleet.load_state(paths) is None
    assert json.loads((tmp_path / "fleet" / "targets" / "bento.json").read_text()) == []


def test_master_socket_path_stays_within_the_unix_limit(tmp_path):
    deep = tmp_path / ("x" * 120)
    paths = fleet.FleetPaths.of(Settings(home=deep))
    assert len(str(paths.master_socket)) < 108
    assert fleet.FleetPaths.of(Settings(home=deep)).master_socket == paths.master_socket


def test_a_move_without_a_fleet_starts_none_and_says_so(tmp_path):
    roll = rollout.begin(Settings(home=tmp_path), "m", "4")
    roll.stage()
    roll.shift()  # nothing to shift
    assert not roll.active
    assert roll.finish().startswith("no fleet running")
    assert not (tmp_path / "fleet" / "fleet.json").exists()


def test_a_dead_balancer_counts_as_no_fleet(tmp_path):
    paths = fleet.FleetPaths.of(Settings(home=tmp_path))
    fleet.save_state(paths, _state(pid=_dead_pid()))  # a balancer that is not running
    roll = rollout.begin(Settings(home=tmp_path), "m", "4")
    roll.stage()
    assert not roll.active and "no fleet running" in roll.note


def test_fleet_up_refuses_less_than_one_replica(tmp_path):
    with pytest.raises(fleet.FleetError, match="at least 1"):
        fleet.up(Settings(home=tmp_path), "m", replicas=0)


def test_fleet_up_without_a_champion_says_release_first(tmp_path):
    with pytest.raises(fleet.FleetError, match="no champion yet"):
        fleet.up(Settings(home=tmp_path), "m")


def _server(name: str, requests: int, errors: int = 0, ms: float = 3.0) -> balancer.ServerState:
    return balancer.ServerState(name, "UP", "L7OK", requests, errors, ms)


def test_canary_weights_give_the_new_version_its_share():
    old, new = canary.CanaryPolicy(share=0.1).weights()
    assert old + new == canary.MAX_WEIGHT and abs(new / (old + new) - 0.1) < 0.01
    assert not canary.CanaryPolicy(seconds=0).enabled
    with pytest.raises(ValueError, match="share"):
        canary.CanaryPolicy(share=1.0)


def test_canary_figures_are_deltas_over_the_window():
    start = {"a": _server("a", 100, 1), "b": _server("b", 50)}
    end = {"a": _server("a", 190, 2, ms=4.0), "b": _server("b", 60, 0, ms=2.0)}
    got = canary.figures("1", ["a", "b"], start, end)
    assert (got.requests, got.errors) == (100, 1)
    assert got.response_ms == pytest.approx((4.0 * 90 + 2.0 * 10) / 100)


@pytest.mark.parametrize(
    ("new", "passed", "why"),
    [
        (canary.VersionFigures("2", 100, 0, 3.5), True, "within"),
        (canary.VersionFigures("2", 100, 5, 3.0), False, "error ratio 5.00% > old"),
        (canary.VersionFigures("2", 100, 0, 40.0), False, "mean response 40.0 ms >"),
        (canary.VersionFigures("2", 5, 5, 90.0), True, "too few to judge"),
    ],
)
def test_canary_refuses_a_version_worse_than_the_old_beyond_the_tolerance(new, passed, why):
    old = canary.VersionFigures("1", 900, 0, 3.0)
    verdict = canary.judge(old, new, canary.CanaryPolicy())
    assert verdict.passed is passed
    assert why in verdict.text() and "v1: 900 requests" in verdict.text()


def test_the_canary_policy_comes_from_the_settings(tmp_path):
    settings = Settings(home=tmp_path, canary_seconds=0, canary_share=0.2)
    policy = rollout.begin(settings, "m", "2").canary_policy
    assert (policy.seconds, policy.share, policy.enabled) == (0, 0.2, False)
    assert rollout.begin(Settings(home=tmp_path), "m", "2").canary_policy.enabled
