"""The shell scripts (root provisioning) and ``fraud stack env``: valid syntax,
``--help`` that never acts, and an env that finds the tools.

No server is started here: every command that could act (docker, dockerd, apt-get, setsid,
curl, the venv's tools) is replaced on PATH by a stub that records its call, and the tests
assert the record stays empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
SHELL_SCRIPTS = sorted(SCRIPTS.rglob("*.sh"))
MINIMAL_PATH = "/usr/bin:/bin"
ACTING = ("docker", "dockerd", "apt-get", "debootstrap", "setsid", "curl", "runuser", "prefect")


def stub_bin(folder: Path, calls: Path) -> Path:
    """A folder of stubs that append their name and arguments to ``calls`` and fail."""
    folder.mkdir()
    for name in ACTING:
        stub = folder / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >>"{calls}"\nexit 1\n')
        stub.chmod(0o755)
    return folder


def run(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a command in a clean environment (``env -i`` style: only ``env``)."""
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("script", "mentions"),
    [
        ("docker-engine.sh", ["scripts/docker-engine.sh stop", "STATE_DIR"]),
    ],
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_never_acts(script, mentions, flag, tmp_path):
    calls = tmp_path / "calls"
    stubs = stub_bin(tmp_path / "stubs", calls)
    home = tmp_path / "fraud-home"
    env = {
        "HOME": str(tmp_path),
        "PATH": f"{stubs}:{MINIMAL_PATH}",
        "FRAUD_HOME": str(home),
        "FRAUD_PROD_HOME": str(home / "prod"),
        "FRAUD_DOCKER_DIR": str(tmp_path / "docker"),
    }
    result = run(["bash", str(SCRIPTS / script), flag], env)
    assert result.returncode == 0, result.stderr
    for text in mentions:
        assert text in result.stdout
    assert not calls.exists(), calls.read_text()
    assert not home.exists() and not (tmp_path / "docker").exists()


def test_docker_engine_refuses_an_unknown_option(tmp_path):
    calls = tmp_path / "calls"
    env = {"HOME": str(tmp_path), "PATH": f"{stub_bin(tmp_path / 's', calls)}:{MINIMAL_PATH}"}
    result = run(["bash", str(SCRIPTS / "docker-engine.sh"), "start", "--state"], env)
    assert result.returncode == 2
    assert "unknown option: --state" in result.stderr
    assert not calls.exists()


def uv_folder() -> Path | None:
    """Where uv is installed for this user (on PATH, else `pip install --user`'s folder)."""
    found = shutil.which("uv")
    if found:
        return Path(found).parent
    user_bin = Path(os.environ.get("PYTHONUSERBASE", Path.home() / ".local")) / "bin"
    return user_bin if (user_bin / "uv").is_file() else None


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_env_puts_the_tools_on_a_minimal_path(profile, tmp_path):
    """After `eval "$(fraud stack env)"` the README's commands resolve in a new shell."""
    missing = None
    if not (ROOT / ".venv" / "bin" / "fraud").is_file():
        missing = "the checkout's .venv has no `fraud` (run `uv sync --frozen`)"
    uv_dir = uv_folder()
    if uv_dir is None:
        missing = "uv is not installed for this user"
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.fail(missing)  # CI installs both: missing is a defect, not a reason to skip
    if missing:
        pytest.skip(missing)
    home = tmp_path / "fraud-home"
    env = {
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PATH": MINIMAL_PATH,
        "FRAUD_HOME": str(home),
        "FRAUD_PROD_HOME": str(home / "prod"),
    }
    if uv_dir not in {Path(p) for p in MINIMAL_PATH.split(":")} and shutil.which("uv"):
        # uv came from the caller's PATH: a fresh shell finds it where the user installed it
        env["PYTHONUSERBASE"] = str(uv_dir.parent)
    shell = (
        f'eval "$({ROOT / ".venv" / "bin" / "fraud"} stack --profile {profile} env)" || exit 9\n'
        "command -v prefect fraud bentoml uv || exit 8\n"
        "fraud --help >/dev/null || exit 7\n"
        'echo "API=$PREFECT_API_URL"\n'
    )
    result = run(["bash", "--noprofile", "--norc", "-c", shell], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    venv_bin = ROOT / ".venv" / "bin"
    assert lines[:3] == [
        str(venv_bin / "prefect"),
        str(venv_bin / "fraud"),
        str(venv_bin / "bentoml"),
    ]
    assert Path(lines[3]).parent == uv_dir
    assert lines[-1].startswith("API=http://127.0.0.1:")
