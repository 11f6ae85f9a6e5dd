"""API keys of the prediction endpoints: where they come from, for the bento and its callers.

One place reads them, so the bento (which checks a key) and every caller (smoke tests, fleet
checks, ``fraud traffic``, benchmarks, which send one) agree. Where the keys come from:

1. ``FRAUD_API_KEYS``: the keys themselves, comma-separated;
2. ``FRAUD_API_KEYS_FILE``: a file holding one key per line (``#`` starts a comment), with no
   permission for group or others (``chmod 600``): a mounted secret in containers. The bento
   re-reads it when it changes, so keys rotate without a restart.

Neither set: no key is required (the embedded default, loopback only). Both set: an error, so a
forgotten variable never decides silently. The **first** key is the current one, the one callers
send; the others are still accepted (rotation: put the new key first, wait for callers to pick it
up, then remove the old one). A key is 16 to 256 visible ASCII characters, no comma. Keys are
never logged nor put on a command line; errors name the variable and the path, never a key.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KEYS_ENV = "FRAUD_API_KEYS"
KEYS_FILE_ENV = "FRAUD_API_KEYS_FILE"
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256
MAX_FILE_BYTES = 64 * 1024


class ApiKeyError(ValueError):
    """The configured API keys are unusable; the message names the setting, never a key."""


@dataclass(frozen=True)
class KeySource:
    """Where the keys come from: inline keys, a file, or nothing (keys not required)."""

    inline: tuple[bytes, ...] = ()
    path: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.inline) or self.path is not None

    def describe(self) -> str:
        """For logs: where the keys are read, never the keys."""
        if self.path is not None:
            return f"on ({KEYS_FILE_ENV}={self.path})"
        return f"on ({KEYS_ENV}, {len(self.inline)} keys)" if self.inline else "off"


def parse_keys(text: str, where: str) -> tuple[bytes, ...]:
    """The keys in ``text`` (lines or commas; ``#`` comments), checked; first is current."""
    keys: list[bytes] = []
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            key = part.strip()
            if not key:
                continue
            if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
                raise ApiKeyError(
                    f"{where}: key {len(keys) + 1} has {len(key)} characters; a key must have "
                    f"{MIN_KEY_CHARS} to {MAX_KEY_CHARS}"
                )
            if not (key.isascii() and key.isprintable() and " " not in key):
                raise ApiKeyError(f"{where}: key {len(keys) + 1} is not visible ASCII")
            keys.append(key.encode("ascii"))
    if not keys:
        raise ApiKeyError(f"{where}: no key in it")
    return tuple(keys)


def key_source(environ: Mapping[str, str] | None = None) -> KeySource:
    """The configured source (inline keys checked here; a file is read by :func:`read_keys`)."""
    env = os.environ if environ is None else environ
    inline, path = env.get(KEYS_ENV, "").strip(), env.get(KEYS_FILE_ENV, "").strip()
    if inline and path:
        raise ApiKeyError(f"both {KEYS_ENV} and {KEYS_FILE_ENV} are set: keep one of them")
    if inline:
        return KeySource(inline=parse_keys(inline, KEYS_ENV))
    return KeySource(path=Path(path)) if path else KeySource()


def read_key_file(path: Path) -> tuple[bytes, ...]:
    """The keys in ``path``; :class:`ApiKeyError` when it is missing, open to others or empty."""
    where = f"{KEYS_FILE_ENV}={path}"
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise ApiKeyError(
                    f"{where} is readable or writable by group or others (mode {mode:04o}): "
                    f"chmod 600 {path}"
                )
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ApiKeyError(f"{where}: {err.strerror or err}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ApiKeyError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    return parse_keys(raw.decode("utf-8", errors="replace"), where)


def read_keys(source: KeySource) -> tuple[bytes, ...]:
    """The keys of ``source`` (empty when keys are not required)."""
    if source.path is not None:
        return read_key_file(source.path)
    return source.inline


def client_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key a caller sends (the first configured one), or None when none is configured."""
    keys = read_keys(key_source(environ))
    return keys[0].decode("ascii") if keys else None


def auth_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}`` with the current key, or {} when none is set."""
    key = client_key(environ)
    return {"Authorization": f"Bearer {key}"} if key else {}


def new_key() -> str:
    """A new random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_key_file(path: Path, keys: list[str], owner: int | None = None) -> None:
    """Write ``keys`` (first is current) to ``path`` atomically, mode 0600, folder 0700.

    The new file replaces the old by a rename, so a reader sees either the old or the new keys,
    never a half-written file. ``owner`` (a uid; default: the old file's) owns file and folder
    (a container's user must read them).
    """
    parse_keys("\n".join(keys), str(path))
    if owner is None and os.geteuid() == 0 and path.exists():
        owner = path.stat().st_uid  # a rotation keeps the file readable by whom it was
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write("\n".join(keys) + "\n")
        if owner is not None:
            os.chown(tmp, owner, owner)
            os.chown(path.parent, owner, owner)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
