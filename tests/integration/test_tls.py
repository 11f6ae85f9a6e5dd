"""TLS on the served port: a real HAProxy terminating TLS in front of a real ``bentoml serve``
that requires an API key, as the production profile runs them (its certificate generator)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_contracts.api_keys import KEYS_FILE_ENV, new_key, write_key_file
from flows.core.http import TLS_CA_ENV, free_port, http_json
from flows.serving import balancer, tls
from tests.support.serving import BentoServer, TinyModel, model_env, running_bento, train_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
KEY = new_key()


@dataclass
class Front:
    bento: BentoServer
    port: int
    ca: Path
    records: list[dict]

    def context(self, **kwargs: object) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        for name, value in kwargs.items():
            setattr(ctx, name, value)
        return ctx


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory) -> TinyModel:
    return train_tiny_model(spec, tmp_path_factory.mktemp("tls") / "bentoml")


@pytest.fixture(scope="module")
def front(tiny, tmp_path_factory) -> Iterator[Front]:
    home = tmp_path_factory.mktemp("home")
    write_key_file(home / "secrets" / "api" / "keys", [KEY])
    pem, ca = tls.make_certificate(home / "secrets" / "tls")
    env = model_env(home, tiny, **{KEYS_FILE_ENV: str(home / "secrets" / "api" / "keys")})
    with running_bento(env, home / "serve.log") as bento:
        spec = balancer.BalancerSpec(
            port=free_port(), metrics_port=free_port(), check_interval_ms=500, tls_cert=str(pem)
        )
        config = home / "haproxy.cfg"
        balancer.install_config(
            config, balancer.render_config(spec, [balancer.Server("b1", bento.port)])
        )
        pid = balancer.start(config, home / "logs" / "balancer.log", home / "run" / "balancer.pid")
        try:
            balancer.wait_servers(spec, ["b1"], 30)
            yield Front(bento, spec.port, ca, tiny.records(5))
        finally:
            balancer.stop(pid, grace_s=2)


def https(front: Front, method: str, path: str, body: object = None, headers=None, **ctx):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", front.port, timeout=10, context=front.context(**ctx)
    )
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    reply = conn.getresponse()
    out = reply.status, reply.read()
    version, cipher = conn.sock.version(), conn.sock.cipher()[0]
    conn.close()
    return out, version, cipher


def test_scoring_over_verified_tls_needs_the_key(front):
    record = front.records[0]
    (status, _), version, _ = https(front, "POST", "/predict", record)
    assert status == 401
    (status, body), _, _ = https(front, "POST", "/predict", record, {"X-API-Key": KEY})
    assert status == 200 and "fraud_probability" in json.loads(body)
    assert version == "TLSv1.3"
    (status, _), _, _ = https(front, "GET", "/readyz")
    assert status == 200
    (status, _), _, _ = https(front, "GET", "/metrics")
    assert status == 404  # replicas' metrics are not served on the public port


def test_callers_send_the_key_and_trust_the_ca_from_the_settings(front, monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    write_key_file(keys, [KEY])
    monkeypatch.setenv(KEYS_FILE_ENV, str(keys))
    monkeypatch.setenv(TLS_CA_ENV, str(front.ca))
    status, body = http_json("POST", f"https://127.0.0.1:{front.port}/predict", front.records[1])
    assert status == 200, body
    monkeypatch.delenv(TLS_CA_ENV)  # the system's CAs do not know the profile's own CA
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        http_json("GET", f"https://127.0.0.1:{front.port}/readyz")


def test_tls_12_takes_only_forward_secret_aead_suites(front):
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    (status, _), version, cipher = https(front, "GET", "/readyz", **tls12)
    assert (status, version) == (200, "TLSv1.2")
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    ctx = front.context(**tls12)
    ctx.set_ciphers("AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA")
    with (
        socket.create_connection(("127.0.0.1", front.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),  # CBC suites: no handshake
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()


def test_plain_http_on_the_served_port_gets_no_answer(front):
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, TimeoutError)):
        conn.request("POST", "/predict", json.dumps(front.records[0]).encode(), {"X-API-Key": KEY})
        conn.getresponse().read()
    conn.close()
    assert KEY not in front.bento.text()
