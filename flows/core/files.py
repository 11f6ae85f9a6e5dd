"""Small file helpers the flows share: atomic replacement and the tail of a log file."""

from __future__ import annotations

from pathlib import Path

# one implementation of the atomic write: the champion pointer (a cross-process contract) needs
# it in the standard-library-only contract module, and every flow writes through the same one
from data_contracts.artifacts import write_atomic

__all__ = ["tail", "write_atomic"]


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file, or "" when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
