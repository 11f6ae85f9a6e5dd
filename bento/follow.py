"""Following the champion: a checkout's ``bentoml serve`` moves to a new champion without a restart.

A release or a rollback records the champion in a pointer file
(``<FRAUD_HOME>/bentoml/champions/<model>``, see :mod:`bento.store`). :class:`ChampionFollower`
polls that file (one ``stat`` every ``FRAUD_FOLLOW_INTERVAL_S``, default 2 s) from a thread of
the serving worker. When it names another model, the follower loads it beside the served one and
verifies it exactly as start-up does (sha256 of the ONNX bytes, spec hash, graph inputs, a
warm-up prediction: :func:`bento.runtime.load_runtime`), then hands it to the service, which
swaps it in with one assignment. Requests already running keep the model they started with;
the next request gets the new one. A model that fails verification is **refused**: the served
model keeps answering, the refusal is logged at ERROR, counted
(``fraud_model_swaps_refused_total{reason}``) and shown on ``GET /model``, and the same pointer
is not tried again until it changes.

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

from bento.runtime import ModelLoadError, ModelRuntime
from bento.store import ModelNotFoundError
from data_contracts.artifacts import parse_tag, pointer_path, read_champion_pointer

FOLLOW_ENV = "FRAUD_FOLLOW_CHAMPION"
INTERVAL_ENV = "FRAUD_FOLLOW_INTERVAL_S"
DEFAULT_INTERVAL_S = 2.0
MODES = ("auto", "on", "off")
# why a new champion was refused (the label values of fraud_model_swaps_refused_total)
REFUSED_MISSING = "missing"  # the pointer names a model the store does not hold
REFUSED_VERIFICATION = "verification"  # sha256, spec hash, graph or warm-up check failed
REFUSED_WRONG_MODEL = "wrong_model"  # the pointer names another model's tag
REFUSED_ERROR = "error"  # anything else (a bug, an unreadable store)

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


@dataclass(frozen=True)
class PointerState:
    """What the pointer file says, and a stamp that changes whenever the file is rewritten."""

    tag: str | None
    stamp: tuple[int, int, str | None]


def read_pointer(bentoml_home: Path, model_name: str) -> PointerState:
    """The champion tag of ``model_name`` and the pointer file's stamp (mtime, inode, tag)."""
    path = pointer_path(bentoml_home, model_name)
    try:
        st = path.stat()
        mark = (st.st_mtime_ns, st.st_ino)
    except FileNotFoundError:
        mark = (0, 0)
    tag = read_champion_pointer(bentoml_home, model_name)
    return PointerState(tag, (*mark, tag))


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
        self._refused_stamp: tuple[int, int, str | None] | None = None
        self._missing_logged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one poll -------------------------------------------------------------------------
    def check_once(self) -> str | None:
        """Look at the pointer once; swap or refuse. Returns ``swapped``, ``refused`` or None."""
        state = read_pointer(self.bentoml_home, self.model_name)
        self.status.checked_at = time.time()
        if state.tag is None:
            if not self._missing_logged:
                logger.warning(
                    "champion pointer of %s is gone; %s keeps serving",
                    self.model_name,
                    self.served_tag,
                    extra={"pointer": self.status.pointer, "model_tag": self.served_tag},
                )
                self._missing_logged = True
            return None
        self._missing_logged = False
        if state.tag == self.served_tag or state.stamp == self._refused_stamp:
            return None
        return self._try(state)

    def _try(self, state: PointerState) -> str:
        tag = str(state.tag)
        started = time.monotonic()
        try:
            name, _ = parse_tag(tag)
            if name != self.model_name:
                raise _Refusal(
                    REFUSED_WRONG_MODEL, f"the pointer names {tag}, not a {self.model_name} model"
                )
            runtime = self._load(tag)
        except _Refusal as refusal:
            return self._refuse(state, refusal.reason, str(refusal))
        except ModelNotFoundError as err:
            return self._refuse(state, REFUSED_MISSING, str(err))
        except ModelLoadError as err:
            return self._refuse(state, REFUSED_VERIFICATION, str(err))
        except Exception as err:  # an unexpected failure must not stop the serving worker
            return self._refuse(state, REFUSED_ERROR, f"{type(err).__name__}: {err}")
        loaded_s = time.monotonic() - started
        previous = self.served_tag
        self._install(runtime)
        self.served_tag = tag
        self._refused_stamp = None
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

    def _refuse(self, state: PointerState, reason: str, detail: str) -> str:
        self._refused_stamp = state.stamp
        event = {
            "event": "refused",
            "tag": state.tag,
            "reason": reason,
            "detail": detail,
            "at": time.time(),
            "serving": self.served_tag,
        }
        self.status.refused = event
        self.status.history.append(event)
        self._on_refused(reason)
        logger.error(
            "new champion %s REFUSED (%s): %s; %s keeps serving",
            state.tag,
            reason,
            detail,
            self.served_tag,
            extra={"model_tag": state.tag, "reason": reason, "serving": self.served_tag},
        )
        return "refused"

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
            except Exception:  # never let a bad poll end following
                logger.exception("champion pointer check failed")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling (a swap in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
