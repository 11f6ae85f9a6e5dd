"""The failures of packaging a version for serving, in one hierarchy.

Every step (store import, bento build, containerize, smoke test, publish) raises a
:class:`PackagingError` subclass naming the step, the object and the log to read; callers catch
:class:`PackagingError` alone.
"""

from __future__ import annotations

from pathlib import Path

from flows.core.files import tail

LOG_TAIL_LINES = 25


class PackagingError(RuntimeError):
    """A packaging step failed; the message says which step, on what, and where its log is."""

    step = "packaging"

    def __init__(self, subject: str, reason: str, log_path: Path | None = None) -> None:
        self.subject = subject
        self.reason = reason
        self.log_path = log_path
        message = f"{self.step} failed for {subject}: {reason}"
        if log_path is not None:
            message += f"\nlog: {log_path}"
            last = tail(log_path, LOG_TAIL_LINES)
            if last:
                message += f"\nlast lines of the log:\n{last}"
        super().__init__(message)


class DockerUnavailableError(PackagingError):
    step = "docker check"


class ModelImportError(PackagingError):
    step = "import into the BentoML model store"


class BentoBuildError(PackagingError):
    step = "bentoml build"


class ContainerizeError(PackagingError):
    step = "bentoml containerize"


class SmokeTestError(PackagingError):
    step = "image smoke test"
