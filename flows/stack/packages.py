"""Debian packages a local server needs (HAProxy, Chromium, PostgreSQL, Prometheus), when missing.

Installing needs root; otherwise the error says the one command to run. The output of apt-get
goes to ``<log_dir>/apt-<package>.log``, never the caller's stdout.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess  # nosec B404 # apt-get with an argv list, never a shell
import sys
from pathlib import Path

# package -> the executables that tell it is installed (any of them)
PROVIDES: dict[str, tuple[str, ...]] = {
    "haproxy": ("haproxy", "/usr/sbin/haproxy"),
    "chromium": ("chromium",),
    "postgresql": ("/usr/lib/postgresql/*/bin/initdb",),
    "prometheus": ("prometheus",),
}


class PackageError(RuntimeError):
    """A package is missing and could not be installed."""


def installed(package: str) -> bool:
    for probe in PROVIDES[package]:
        if probe.startswith("/"):
            if any(os.access(p, os.X_OK) for p in glob.glob(probe)):
                return True
        elif shutil.which(probe):
            return True
    return False


def ensure(package: str, log_dir: Path) -> None:
    """Install ``package`` with apt-get when it is missing (root only)."""
    if package not in PROVIDES:
        raise PackageError(f"unknown package {package!r}; known: {', '.join(PROVIDES)}")
    if installed(package):
        return
    if os.geteuid() != 0:
        raise PackageError(f"{package} is not installed; as root: apt-get install -y {package}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"apt-{package}.log"
    print(f"[stack] installing {package} (log: {log})", file=sys.stderr, flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    with log.open("ab") as out:
        for argv in (install, ["apt-get", "update", "-qq"], install):
            code = subprocess.run(  # nosec B603 B607 # apt-get, argv list
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, check=False, timeout=900,
            ).returncode  # fmt: skip
            if code == 0 and argv is install:
                break
    if not installed(package):
        raise PackageError(f"apt-get install {package} failed; see {log}")
