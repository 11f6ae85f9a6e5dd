"""Following the champion: a checkout's ``bentoml serve`` moves to a new champion without a restart.

A release or a rollback records the champion in a pointer file
(``<FRAUD_HOME>/bentoml/champions/<model>``, see :mod:`bento.store`). :class:`ChampionFollower`
polls that file (one ``stat`` every ``FRAUD_FOLLOW_INTERVAL_S``, default 2 s; the file is read
only when the ``stat`` changed, and never when it is over
:data:`~data_contracts.artifacts.MAX_POINTER_BYTES`) from a thread of the serving worker. When
it names another model, the follower loads it beside the served one and verifies it exactly as
start-up does (sha256 of the ONNX bytes, spec hash, graph inputs, a warm-up prediction:
:func:`bento.runtime.load_runtime`), then hands it to the service, which swaps it in with one
assignment. Requests already running keep the model they started with; the next request gets
the new one.

Anything that keeps the follower from serving what the pointer says is **refused**, with a
reason: ``missing`` (no pointer, or no such model in the store), ``unreadable``,
``undecodable`` (not UTF-8, empty, not a ``<model>:v<N>`` tag), ``oversized``,
``wrong_model``, ``bad_hash``, ``bad_graph``, ``verification`` (metadata, spec file,
threshold) or ``error`` (anything else). The served model keeps answering; the refusal is
logged once (ERROR), counted once (``fraud_model_swaps_refused_total{reason}``) and shown on
``GET /model`` (``follow.refused``, beside the poll's fresh ``checked_at``) until the pointer
changes; a pointer naming the served model again clears it.

``FRAUD_FOLLOW_CHAMPION`` chooses:

- ``auto`` (default): follow when the served model was chosen by the champion pointer (a plain
  ``bentoml serve`` from the checkout); a pinned ``FRAUD_MODEL_TAG`` or a built bento stays put;
- ``on``: follow the pointer of the served model's name even when ``FRAUD_MODEL_TAG`` chose the
  first model (refused in a built bento, which serves only the model it packs: a fleet of bento
  images is rolled by the release instead);
- ``off``: never swap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bento.runtime import BAD_GRAPH, BAD_HASH, VERIFICATION, ModelLoadError, ModelRuntime
from bento.store import ModelNotFoundError
from data_contracts.artifacts import (
    LEGACY_POINTER_FILE,
    POINTER_OVERSIZED,
    POINTER_UNDECODABLE,
    POINTER_UNREADABLE,
    PointerError,
    parse_tag,
    pointer_path,
    read_champion_pointer,
)

FOLLOW_ENV = "FRAUD_FOLLOW_CHAMPION"
INTERVAL_ENV = "FRAUD_FOLLOW_INTERVAL_S"
DEFAULT_INTERVAL_S = 2.0
MODES = ("auto", "on", "off")
# why a new champion was refused (the label values of fraud_model_swaps_refused_total)
REFUSED_MISSING = "missing"  # no pointer, or the model it names is not in the store
REFUSED_UNREADABLE = POINTER_UNREADABLE  # a directory (not a file) or a failed read
REFUSED_UNDECODABLE = POINTER_UNDECODABLE  # not UTF-8, empty, or not a <model>:v<N> tag
REFUSED_OVERSIZED = POINTER_OVERSIZED  # longer than any tag: not read
REFUSED_WRONG_MODEL = "wrong_model"  # the pointer names another model's tag
REFUSED_BAD_HASH = BAD_HASH  # the ONNX bytes or the spec differ from the store's record
REFUSED_BAD_GRAPH = BAD_GRAPH  # ONNX Runtime cannot load or run it, or it does not fit the spec
REFUSED_VERIFICATION = VERIFICATION  # metadata, spec file or threshold
REFUSED_ERROR = "error"  # anything else (a bug)

logger = logging.getLogger("fraud.serving.follow")


class FollowConfigError(ValueError):
    """``FRAUD_FOLLOW_CHAMPION`` or ``FRAUD_FOLLOW_INTERVAL_S`` is not usable here."""


def follow_settings(
    source: str, environ: Mapping[str, str] | None = None
) -> tuple[bool, float, str]:
    """Whether to follow, the poll interval and the mode, for a model chosen by ``source``.

    ``source`` is how the served model was chosen: ``bento`` (packed in a built bento),
    ``tag`` (``FRAUD_MODEL_TAG``) or ``pointer`` (the champion pointer).
    """
    env = os.environ if environ is None else environ
    mode = (env.get(FOLLOW_ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise FollowConfigError(f"{FOLLOW_ENV}={mode!r} is not one of {', '.join(MODES)}")
    raw = (env.get(INTERVAL_ENV) or "").strip()
    try:
        interval = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError as err:
        raise FollowConfigError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds") from err
    if not 0.05 <= interval <= 3600:
        raise FollowConfigError(f"{INTERVAL_ENV}={interval} must be between 0.05 and 3600 seconds")
    if mode == "on" and source == "bento":
        raise FollowConfigError(
            f"{FOLLOW_ENV}=on, but a built bento serves only the model it packs: serve the "
            "checkout to follow the champion, or let the release roll the fleet of images"
        )
    follow = mode == "on" or (mode == "auto" and source == "pointer")
    return follow, interval, mode


Mark = tuple[tuple[int, ...] | None, ...]


def pointer_mark(bentoml_home: Path, model_name: str) -> Mark:
    """What changes whenever a pointer file (or the legacy shared one) is rewritten, resized,
    replaced or its permissions change: one ``stat`` each, nothing read."""
    marks: list[tuple[int, ...] | None] = []
    for path in (pointer_path(bentoml_home, model_name), bentoml_home / LEGACY_POINTER_FILE):
        try:
            st = path.stat()
        except FileNotFoundError:
            marks.append(None)
        except OSError as err:  # reading it will say why
            marks.append((err.errno or -1,))
        else:
            marks.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
    return tuple(marks)


@dataclass
class FollowStatus:
    """What ``GET /model`` says about following: mode, swaps and the last refusal."""

    mode: str
    following: bool
    pointer: str
    interval_s: float
    swaps: int = 0
    last_swap: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None
    checked_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data (the last 10 events in ``history``)."""
        return {
            "mode": self.mode,
            "following": self.following,
            "pointer": self.pointer,
            "interval_s": self.interval_s,
            "swaps": self.swaps,
            "last_swap": self.last_swap,
            "refused": self.refused,
            "checked_at": self.checked_at,
            "history": self.history[-10:],
        }


class ChampionFollower:
    """Polls the champion pointer and swaps a verified new champion in (module docstring).

    ``load(tag)`` returns a verified runtime or raises :class:`ModelLoadError` /
    :class:`ModelNotFoundError`; ``install(runtime)`` makes it the served model (and drains the
    old one). Both run on the follower's thread, never on the event loop.
    """

    def __init__(
        self,
        *,
        bentoml_home: Path,
        model_name: str,
        served_tag: str,
        load: Callable[[str], ModelRuntime],
        install: Callable[[ModelRuntime], None],
        status: FollowStatus,
        on_swap: Callable[[], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.bentoml_home = Path(bentoml_home)
        self.model_name = model_name
        self.served_tag = served_tag
        self.status = status
        self._load = load
        self._install = install
        self._on_swap = on_swap or (lambda: None)
        self._on_refused = on_refused or (lambda reason: None)
        self._mark: Mark | None = None  # the pointer as last looked at (None: never)
        self._refused: tuple[Mark | None, str | None, str] | None = None  # the last refusal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one poll -------------------------------------------------------------------------
    def check_once(self) -> str | None:
        """Look at the pointer once; swap or refuse. Returns ``swapped``, ``refused`` (a new
        refusal) or None (nothing changed, or the pointer names the served model)."""
        self.status.checked_at = time.time()
        mark = pointer_mark(self.bentoml_home, self.model_name)
        if mark == self._mark:
            return None  # the pointer is as it was: so is the outcome
        self._mark = mark
        try:
            tag = read_champion_pointer(self.bentoml_home, self.model_name, strict=True)
        except PointerError as err:
            return self._refuse(None, err.reason, str(err))
        if tag is None:
            return self._refuse(
                None, REFUSED_MISSING, f"the champion pointer {self.status.pointer} is gone"
            )
        try:
            name, _ = parse_tag(tag)
        except ValueError as err:
            return self._refuse(tag[:100], REFUSED_UNDECODABLE, str(err)[:300])
        if name != self.model_name:
            detail = f"the pointer names {tag}, not a {self.model_name} model"
            return self._refuse(tag, REFUSED_WRONG_MODEL, detail)
        if tag == self.served_tag:
            self._clear()
            return None
        return self._try(tag)

    def _try(self, tag: str) -> str:
        started = time.monotonic()
        try:
            runtime = self._load(tag)
        except ModelNotFoundError as err:
            return self._refuse(tag, REFUSED_MISSING, str(err))
        except ModelLoadError as err:
            return self._refuse(tag, err.reason, str(err))
        except Exception as err:  # an unexpected failure must not stop the serving worker
            return self._refuse(tag, REFUSED_ERROR, f"{type(err).__name__}: {err}")
        loaded_s = time.monotonic() - started
        previous = self.served_tag
        self._install(runtime)
        self.served_tag = tag
        self._refused = None
        event = {
            "event": "swapped",
            "from": previous,
            "to": tag,
            "at": time.time(),
            "load_seconds": round(loaded_s, 3),
            "swap_seconds": round(time.monotonic() - started, 3),
        }
        self.status.swaps += 1
        self.status.last_swap = event
        self.status.refused = None
        self.status.history.append(event)
        self._on_swap()
        logger.info(
            "champion swapped in: %s -> %s",
            previous,
            tag,
            extra={
                "from_tag": previous,
                "model_tag": tag,
                "model_version": runtime.model_version,
                "sha256": runtime.sha256,
                "spec_hash": runtime.spec_hash,
                "load_seconds": event["load_seconds"],
            },
        )
        return "swapped"

    def _refuse(self, tag: str | None, reason: str, detail: str) -> str | None:
        """Show, count and log a refusal: once per pointer change (``_mark``)."""
        key = (self._mark, tag, reason)
        if key == self._refused:
            return None
        self._refused = key
        event = {
            "event": "refused",
            "tag": tag,
            "reason": reason,
            "detail": detail,
            "at": time.time(),
            "serving": self.served_tag,
        }
        self.status.refused = event
        self.status.history.append(event)
        try:
            self._on_refused(reason)
        except Exception:  # a metrics failure must not hide the refusal
            logger.exception("counting a refused champion failed")
        logger.error(
            "new champion %s REFUSED (%s): %s; %s keeps serving",
            tag or "(no tag)",
            reason,
            detail,
            self.served_tag,
            extra={"model_tag": tag, "reason": reason, "serving": self.served_tag},
        )
        return "refused"

    def _clear(self) -> None:
        """The pointer names the served model again: a refusal shown before is over."""
        self._refused = None
        if self.status.refused is not None:
            self.status.refused = None
            self.status.history.append({"event": "cleared", "at": time.time()})
            logger.info(
                "champion pointer names the served %s again; the last refusal is cleared",
                self.served_tag,
                extra={"model_tag": self.served_tag},
            )

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        """Poll in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.status.interval_s):
            try:
                self.check_once()
            except Exception as err:  # never let a bad poll end following; once per change
                self._refuse(None, REFUSED_ERROR, f"{type(err).__name__}: {err}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling (a swap in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
