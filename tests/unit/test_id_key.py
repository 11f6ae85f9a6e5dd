"""The transaction-id hash key: where it comes from, created once, never weak or in clear."""

from __future__ import annotations

import stat
import threading

import pytest

from data_contracts.id_key import (
    KEY_ENV,
    KEY_FILE_ENV,
    IdKeyError,
    default_key_path,
    hash_id,
    key_fingerprint,
    load_id_key,
    serving_id_key,
)


def test_the_embedded_default_creates_one_private_key_and_reuses_it(tmp_path):
    env = {"FRAUD_HOME": str(tmp_path)}
    first = load_id_key(env)
    path = default_key_path(env)
    assert path == tmp_path / "secrets" / "id-hash.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64  # 32 random bytes as hex
    assert load_id_key(env) == first


def test_two_processes_racing_to_create_the_key_end_with_the_same_key(tmp_path):
    env = {"FRAUD_HOME": str(tmp_path)}
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_id_key(env))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["id-hash.key"]


def test_the_environment_wins_over_the_file_and_the_home_folder(tmp_path):
    key_file = tmp_path / "mounted.key"
    key_file.write_text("from-a-mounted-secret\n")
    env = {"FRAUD_HOME": str(tmp_path), KEY_FILE_ENV: str(key_file)}
    assert load_id_key(env) == b"from-a-mounted-secret"
    assert load_id_key({**env, KEY_ENV: "set-in-the-environment"}) == b"set-in-the-environment"
    assert not default_key_path(env).exists()


def test_a_short_or_unreadable_key_is_refused_naming_where_it_came_from(tmp_path):
    with pytest.raises(IdKeyError, match=f"{KEY_ENV}.*at least 16"):
        load_id_key({KEY_ENV: "short"})
    with pytest.raises(IdKeyError, match=f"{KEY_FILE_ENV}=.*missing.key.*cannot read"):
        load_id_key({KEY_FILE_ENV: str(tmp_path / "missing.key")})
    with pytest.raises(FileNotFoundError, match="no id-hash key"):
        load_id_key({"FRAUD_HOME": str(tmp_path)}, create=False)


def test_serving_falls_back_to_a_process_key_only_when_nothing_is_configured(tmp_path):
    blocked = tmp_path / "home"
    blocked.write_text("a file where the home folder should be")
    key, warning = serving_id_key({"FRAUD_HOME": str(blocked)})
    assert len(key) == 64 and warning is not None and "cannot be joined" in warning
    with pytest.raises(IdKeyError):
        serving_id_key({"FRAUD_HOME": str(blocked), KEY_ENV: "short"})


def test_the_hash_depends_on_the_key_and_the_fingerprint_hides_it():
    a, b = b"a" * 32, b"b" * 32
    assert hash_id("tx-1", a) != hash_id("tx-1", b)
    assert hash_id("tx-1", a) == hash_id("tx-1", a)
    fingerprint = key_fingerprint(a)
    assert len(fingerprint) == 12 and fingerprint not in a.decode()
