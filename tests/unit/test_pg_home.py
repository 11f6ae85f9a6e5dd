"""The production profile's cluster place and ownership (flows/stack/pg_home.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.stack import pg_home
from flows.stack.config import ProductionConfig


def test_the_default_cluster_is_outside_the_checkout_one_per_profile_home(tmp_path):
    root = tmp_path / "var-lib"
    one = pg_home.default_cluster_dir(tmp_path / "a" / "prod", root)
    other = pg_home.default_cluster_dir(tmp_path / "b" / "prod", root)
    assert one.parent == root and other.parent == root
    assert one != other
    assert one == pg_home.default_cluster_dir(tmp_path / "a" / "prod", root)  # stable


def test_a_cluster_an_older_version_made_in_the_home_stays_in_use(tmp_path):
    home = tmp_path / "prod"
    (home / "pg" / "data").mkdir(parents=True)
    (home / "pg" / "data" / "PG_VERSION").write_text("16\n")
    assert pg_home.default_cluster_dir(home, tmp_path / "var-lib") == home / "pg"


def test_the_config_default_is_reachable_and_fraud_pg_dir_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUD_PROD_HOME", str(tmp_path / "private" / "prod"))
    monkeypatch.delenv("FRAUD_PG_DIR", raising=False)
    assert ProductionConfig().cluster_dir.parent == pg_home.DEFAULT_ROOT
    monkeypatch.setenv("FRAUD_PG_DIR", str(tmp_path / "mine"))
    assert ProductionConfig().cluster_dir == tmp_path / "mine"


def test_a_new_parent_is_made_reachable_an_existing_one_is_left_alone(tmp_path):
    fresh = tmp_path / "fresh" / "cluster"
    pg_home.prepare_parent(fresh)
    assert (fresh.parent.stat().st_mode & 0o777) == 0o755
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    pg_home.prepare_parent(private / "cluster")
    assert (private.stat().st_mode & 0o777) == 0o700


def test_the_profile_owns_the_cluster_it_created_wherever_it_is(tmp_path):
    home, cluster = tmp_path / "prod", tmp_path / "elsewhere" / "pg"
    cluster.mkdir(parents=True)
    assert not pg_home.owns(cluster, home)  # a cluster someone else made at FRAUD_PG_DIR
    pg_home.mark_created(cluster, home)
    assert pg_home.creator(cluster) == home.absolute()
    assert pg_home.owns(cluster, home)
    assert not pg_home.owns(cluster, tmp_path / "another-home")  # shared, not created by it


def test_an_unmarked_cluster_is_owned_only_at_the_old_default_place(tmp_path):
    home = tmp_path / "prod"
    (home / "pg").mkdir(parents=True)
    assert pg_home.owns(home / "pg", home)
    assert not pg_home.owns(Path(tmp_path / "other"), home)
    pg_home.mark_created(home / "pg", tmp_path / "another-home")
    assert not pg_home.owns(home / "pg", home)  # a marker decides over the path


def test_clean_deletes_only_a_stopped_cluster_the_profile_created(tmp_path):
    home, cluster = tmp_path / "prod", tmp_path / "var-lib" / "abc"
    (cluster / "data").mkdir(parents=True)
    assert not pg_home.remove(cluster, home) and cluster.exists()  # not created by this home
    pg_home.mark_created(cluster, home)
    (cluster / "data" / "postmaster.pid").write_text("123\n")
    with pytest.raises(RuntimeError, match="still runs"):
        pg_home.remove(cluster, home)
    (cluster / "data" / "postmaster.pid").unlink()
    assert pg_home.remove(cluster, home) and not cluster.exists()
