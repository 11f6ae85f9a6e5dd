"""Where the production profile's PostgreSQL cluster lives, and whether the profile made it.

The cluster runs as the system user ``postgres``, which must reach its data folder through
every parent. A checkout in a private folder (a home directory, a temporary folder of mode
0700) would hide ``<prod home>/pg`` from it, so the default cluster folder is
``/var/lib/fraud-pg/<digest of the profile home>``: root-owned, reachable, one per profile home,
nothing to set by hand. A cluster an older version made at ``<prod home>/pg`` stays in use.

Ownership is recorded, not guessed from the path: when the profile runs ``initdb`` it writes
:data:`MARKER` beside the data folder, naming the profile home that created it. ``down`` stops a
cluster only when that marker names its own home, so a cluster the profile created at a
user-set ``FRAUD_PG_DIR`` is stopped with the rest, and a cluster it did not create never is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/fraud-pg")
MARKER = "fraud-created-by"  # in the cluster folder, beside data/ (root-owned, 0644)
LEGACY_DIR = "pg"  # where older versions put the cluster: <prod home>/pg


def default_cluster_dir(home: Path, root: Path = DEFAULT_ROOT) -> Path:
    """The cluster folder of the profile at ``home`` when ``FRAUD_PG_DIR`` is unset."""
    legacy = home / LEGACY_DIR
    if (legacy / "data" / "PG_VERSION").exists():
        return legacy
    digest = hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:16]
    return root / digest


def prepare_parent(cluster_dir: Path) -> None:
    """Make the cluster folder's parent, readable and searchable by everyone (0755) when new.

    Only a parent this call creates gets its mode set: an existing folder is the user's.
    """
    parent = cluster_dir.parent
    if parent.exists():
        return
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o755)


def mark_created(cluster_dir: Path, home: Path) -> None:
    """Record that the profile at ``home`` created the cluster in ``cluster_dir`` (at initdb)."""
    marker = cluster_dir / MARKER
    marker.write_text(f"{home.absolute()}\n")
    marker.chmod(0o644)


def creator(cluster_dir: Path) -> Path | None:
    """The profile home that created the cluster in ``cluster_dir``, when one recorded it."""
    try:
        text = (cluster_dir / MARKER).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def owns(cluster_dir: Path, home: Path) -> bool:
    """Whether the profile at ``home`` created the cluster (so its ``down`` stops it).

    A cluster without a marker counts as the profile's only at the place older versions of the
    profile created theirs (``<home>/pg``): nothing else made a cluster there.
    """
    made_by = creator(cluster_dir)
    if made_by is not None:
        return made_by == home.absolute()
    return cluster_dir.absolute() == (home / LEGACY_DIR).absolute()


def remove(cluster_dir: Path, home: Path) -> bool:
    """Delete the cluster folder when the profile at ``home`` created it and it is stopped.

    ``make clean`` calls it after ``down``: the default folder is outside the profile home, so
    deleting the home alone would leave the databases of a profile that no longer exists.
    Returns whether it deleted anything; a running cluster, or one not created here, is kept.
    """
    import shutil

    if not owns(cluster_dir, home) or not (cluster_dir / "data").exists():
        return False
    if (cluster_dir / "data" / "postmaster.pid").exists():
        raise RuntimeError(f"the PostgreSQL cluster in {cluster_dir} still runs: stop it first")
    shutil.rmtree(cluster_dir)
    return True
