"""API keys: where they come from (data_contracts.api_keys) and the bento's check (bento.auth)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bento.auth import ApiKeyGate
from data_contracts.api_keys import (
    KEYS_ENV,
    KEYS_FILE_ENV,
    ApiKeyError,
    KeySource,
    auth_headers,
    client_key,
    key_source,
    new_key,
    parse_keys,
    read_key_file,
    write_key_file,
)

OLD, NEW = "old-key-0123456789abcdef", "new-key-0123456789abcdef"


def _gate(tmp_path: Path, keys: list[str], clock=lambda: 0.0) -> tuple[ApiKeyGate, list[str]]:
    path = tmp_path / "api" / "keys"
    write_key_file(path, keys)
    refused: list[str] = []
    return ApiKeyGate(KeySource(path=path), on_refused=refused.append, clock=clock), refused


def _call(gate: ApiKeyGate, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, list]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    allowed = asyncio.run(gate({"type": "http", "path": path, "headers": headers}, send))
    return allowed, sent


def test_keys_come_from_the_environment_or_a_private_file(tmp_path):
    assert not key_source({}).enabled and not key_source({KEYS_ENV: " "}).enabled
    assert client_key({}) is None and auth_headers({}) == {}
    assert key_source({KEYS_ENV: f"{NEW}, {OLD}"}).inline == (NEW.encode(), OLD.encode())
    path = tmp_path / "keys"
    write_key_file(path, [NEW, OLD])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert client_key({KEYS_FILE_ENV: str(path)}) == NEW  # the first key is the current one
    assert auth_headers({KEYS_FILE_ENV: str(path)}) == {"Authorization": f"Bearer {NEW}"}
    assert read_key_file(path) == (NEW.encode(), OLD.encode())


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({KEYS_ENV: NEW, KEYS_FILE_ENV: "/x"}, "both FRAUD_API_KEYS and FRAUD_API_KEYS_FILE"),
        ({KEYS_ENV: "short"}, "FRAUD_API_KEYS: key 1 has 5 characters"),
        ({KEYS_ENV: f"{NEW},{'é' * 20}"}, "FRAUD_API_KEYS: key 2 is not visible ASCII"),
        ({KEYS_ENV: " , "}, "FRAUD_API_KEYS: no key in it"),
    ],
)
def test_bad_inline_keys_are_named_never_shown(env, words):
    with pytest.raises(ApiKeyError, match=words) as err:
        key_source(env)
    assert NEW not in str(err.value)


def test_a_key_file_open_to_others_or_empty_is_refused(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{NEW}\n")
    path.chmod(0o644)
    with pytest.raises(ApiKeyError, match=r"FRAUD_API_KEYS_FILE=.*mode 0644.*chmod 600"):
        read_key_file(path)
    path.chmod(0o600)
    path.write_text("# only a comment\n")
    with pytest.raises(ApiKeyError, match="no key in it"):
        read_key_file(path)
    with pytest.raises(ApiKeyError, match="No such file"):
        read_key_file(tmp_path / "absent")


def test_parse_keys_reads_lines_commas_and_comments():
    text = f"# rotated 2026-12-06\n{NEW}  # current\n{OLD}\n"
    assert parse_keys(text, "x") == (NEW.encode(), OLD.encode())
    assert len(new_key()) >= 43 and new_key() != new_key()


def test_the_gate_takes_either_header_and_refuses_without_detail(tmp_path):
    gate, refused = _gate(tmp_path, [NEW, OLD])
    for headers in (
        [(b"authorization", f"Bearer {NEW}".encode())],
        [(b"authorization", f"bearer {OLD}".encode())],
        [(b"x-api-key", NEW.encode())],
        [(b"authorization", b"Basic dXNlcjpwdw=="), (b"x-api-key", OLD.encode())],
    ):
        assert _call(gate, "/predict", headers) == (True, [])
    cases = {
        "missing": [(b"content-type", b"application/json")],
        "malformed": [(b"authorization", b"Basic dXNlcjpwdw==")],
        "unknown_key": [(b"x-api-key", (NEW[:-1] + "X").encode())],
    }
    bodies = set()
    for headers in cases.values():
        allowed, sent = _call(gate, "/predict_batch", headers)
        assert not allowed
        assert sent[0]["status"] == 401
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        body = json.loads(sent[1]["body"])
        bodies.add(body["detail"])
        assert NEW not in sent[1]["body"].decode()
    assert len(bodies) == 1  # the same answer whatever was wrong
    assert refused == ["missing", "malformed", "unknown_key"]
    assert _call(gate, "/predict", [(b"authorization", b"Bearer ")])[0] is False
    assert refused[-1] == "malformed"


def test_open_paths_need_no_key(tmp_path):
    gate, refused = _gate(tmp_path, [NEW])
    for path in ("/readyz", "/livez", "/metrics", "/model", "/"):
        assert _call(gate, path, []) == (True, [])
    sent: list = []

    async def send(message):
        sent.append(message)

    assert asyncio.run(gate({"type": "lifespan"}, send)) and not sent and not refused


def test_rotation_is_picked_up_and_a_broken_file_keeps_the_keys(tmp_path):
    now = [0.0]
    gate, _ = _gate(tmp_path, [OLD], clock=lambda: now[0])
    path = gate.source.path
    new_only = [(b"x-api-key", NEW.encode())]
    old_only = [(b"x-api-key", OLD.encode())]
    write_key_file(path, [NEW, OLD])
    assert _call(gate, "/predict", new_only)[0] is False  # not re-read within the second
    now[0] = 1.5
    assert _call(gate, "/predict", new_only)[0] is True
    assert _call(gate, "/predict", old_only)[0] is True
    write_key_file(path, [NEW])
    now[0] = 3.0
    assert _call(gate, "/predict", old_only)[0] is False
    path.write_text("")  # truncated mid-rotation (not the atomic way)
    now[0] = 4.5
    assert _call(gate, "/predict", new_only)[0] is True  # previous keys kept
    os.chmod(path, 0o644)
    path.write_text(f"{OLD}\n")
    now[0] = 6.0
    assert _call(gate, "/predict", old_only)[0] is False  # open to others: not taken


def test_every_key_is_compared_every_time(tmp_path, monkeypatch):
    gate, _ = _gate(tmp_path, [NEW, OLD, "third-key-0123456789"])
    compared: list[bytes] = []
    import bento.auth as auth

    real = auth.hmac.compare_digest

    def counting(a, b):
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    gate.check([(b"x-api-key", NEW.encode())])
    assert len(compared) == 3  # the first key matched, the others were still compared


def test_fraud_api_keys_rotates_and_retires_without_printing_a_key(tmp_path, monkeypatch, capsys):
    from flows.cli.main import main

    path = tmp_path / "api" / "keys"
    write_key_file(path, [OLD])
    monkeypatch.setenv(KEYS_FILE_ENV, str(path))
    monkeypatch.delenv(KEYS_ENV, raising=False)
    assert main(["api-keys", "rotate", "--settle", "0"]) == 0
    keys = read_key_file(path)
    assert len(keys) == 2 and keys[1] == OLD.encode() and keys[0] != OLD.encode()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert main(["api-keys", "retire", "--settle", "0"]) == 0
    assert read_key_file(path) == keys[:1]
    assert main(["api-keys", "status"]) == 0
    out = capsys.readouterr().out
    assert "1 keys" in out and keys[0].decode() not in out and OLD not in out
    monkeypatch.delenv(KEYS_FILE_ENV)
    assert main(["api-keys", "status"]) == 2
    assert "FRAUD_API_KEYS_FILE is not set" in capsys.readouterr().err
