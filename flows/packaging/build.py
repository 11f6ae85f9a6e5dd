"""``bentoml build``: the bento of a stored model, and how the BentoML CLI is run.

The BentoML CLI runs as a subprocess with ``BENTOML_HOME`` and ``FRAUD_MODEL_TAG`` set (the
service resolves its model from them at import) and writes its output to a log file under
``Settings().packaging_dir``; a failure raises a :class:`BentoBuildError` naming that log.
"""

from __future__ import annotations

import os
import subprocess  # nosec B404 # argv lists only (bentoml), never a shell
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_contracts.artifacts import HOME_ENV, MODEL_TAG_ENV, check_name, version_label
from flows.core.settings import PROJECT_ROOT, Settings
from flows.packaging.errors import BentoBuildError
from flows.packaging.store import StoredModel, bento_store


def release_log_dir(settings: Settings, model_name: str, version: str | int) -> Path:
    """Folder of one version's packaging logs (build, containerize, smoke test)."""
    return settings.packaging_dir / f"{check_name(model_name)}-{version_label(version)}"


def bentoml_env(settings: Settings, model_tag: str) -> dict[str, str]:
    """Environment for the BentoML CLI: our store, the model to pack, no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "BENTOML_HOME": str(settings.bentoml_home.resolve()),
            MODEL_TAG_ENV: model_tag,
            HOME_ENV: str(settings.home.resolve()),
            "BENTOML_DO_NOT_TRACK": "true",
            "DOCKER_BUILDKIT": "0",
        }
    )
    return env


def run_logged(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> int:
    """Run ``cmd`` with stdout and stderr appended to ``log_path``; return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(  # nosec B603 # argv built here, no shell
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[timed out after {timeout}s]\n")
            return 124
        log.write(f"[exit code {proc.returncode}]\n")
        return proc.returncode


def bentoml_cli(*args: str) -> list[str]:
    """The argv of a BentoML CLI command run by this interpreter."""
    return [sys.executable, "-m", "bentoml", *args]


def build_bento(
    settings: Settings,
    stored: StoredModel,
    *,
    build_ctx: Path = PROJECT_ROOT,
    bentofile: str = "bentofile.yaml",
    timeout: float = 900,
) -> str:
    """``bentoml build`` the service for ``stored``; the bento tag is the model's tag.

    A bento already built under that tag is replaced, so a re-run rebuilds from the current
    sources. Labels on the bento are the model's labels.
    """
    name, _, version = stored.tag.partition(":")
    log_path = release_log_dir(settings, name, version[1:]) / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    env = bentoml_env(settings, stored.tag)
    label_args = [arg for k, v in stored.labels.items() for arg in ("--label", f"{k}={v}")]
    bentos = bento_store(settings.bentoml_home)
    if bentos.list(stored.tag):
        bentos.delete(stored.tag)
    cmd = bentoml_cli(
        "build", "-f", bentofile, "--name", name, "--version", version, *label_args, str(build_ctx)
    )
    code = run_logged(cmd, log_path, env=env, cwd=build_ctx, timeout=timeout)
    if code != 0:
        raise BentoBuildError(stored.tag, f"exit code {code}", log_path)
    if not (settings.bentoml_home / "bentos" / name / version / "bento.yaml").is_file():
        raise BentoBuildError(stored.tag, "the bento is not in the store after the build", log_path)
    return stored.tag


def has_bento(settings: Settings, tag: str) -> bool:
    """Whether the settings' bento store holds a built bento ``tag``."""
    name, _, label = tag.partition(":")
    return (settings.bentoml_home / "bentos" / name / label / "bento.yaml").is_file()
