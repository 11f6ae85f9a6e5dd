"""The fraud-detector BentoML service.

Start it from the repository with ``bentoml serve`` (serves the champion recorded by the release
flow, or ``FRAUD_MODEL_TAG``), or serve a built bento with ``bentoml serve fraud-detector:latest``.

What BentoML gives: the process model and lifecycle, ``/healthz``, ``/livez``, ``/readyz``,
``/metrics`` (its own metrics plus ours), the OpenAPI page at ``/``, packing the model into the
bento and the container image. The prediction endpoints are a lean ASGI app mounted into the
service (see :mod:`bento.http_app`): BentoML's generic API layer would spend most of the time
per request on framework work rather than on the model.

At import (which BentoML needs to pack the model at ``bentoml build``) the service decides which
stored model it serves and checks its files (sha256, spec hash): a missing, corrupt or
mismatched model stops ``bentoml serve`` and ``bentoml build`` right there, with the reason.
The model is loaded, checked against its spec and warmed up when the service starts; ``/readyz``
turns ready only after that.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bentoml

from bento import internals, store
from bento.auth import api_key_gate
from bento.config import ServingConfig
from bento.follow import ChampionFollower, FollowConfigError, FollowStatus, follow_settings
from bento.http_app import ServingApp
from bento.inference_log import InferenceLogWriter
from bento.logs import configure_json_logging
from bento.memory import tune_allocator
from bento.metrics import ServiceMetrics, service_metrics
from bento.model_page import describe_runtime
from bento.runtime import ModelLoadError, ModelRuntime, load_runtime, verify_files
from data_contracts.api_keys import ApiKeyError
from data_contracts.artifacts import MODEL_TAG_ENV, pointer_path
from data_contracts.id_key import serving_id_key

logger = logging.getLogger("fraud.serving")
PREDICTION_PATHS = ["/predict", "/predict_batch"]
# a request runs at most traffic.timeout (30 s); twice that, then the old log writer closes
DRAIN_TIMEOUT_S = 60.0


def _model_reference() -> tuple[bentoml.models.BentoModel, str]:
    """The stored model this process serves, and how it was chosen (``bento``, ``tag`` or
    ``pointer``; see :func:`bento.store.resolve_model_tag`).

    Inside a built bento the only packed model is used. From a checkout without
    ``BENTOML_HOME``, the project's store under ``FRAUD_HOME`` is used, so that a plain
    ``bentoml serve`` finds the champion.
    """
    from bentoml.exceptions import NotFound

    packed: list[str] | None = None
    root = store.bento_root(Path(__file__))
    if root is not None:
        packed = store.packed_model_tags(root)
    elif not os.environ.get("BENTOML_HOME"):
        internals.use_model_store(store.fraud_home() / "bentoml" / "models")
    tag = store.resolve_model_tag(packed_tags=packed)
    source = "tag" if os.environ.get(MODEL_TAG_ENV) else "pointer"
    source = "bento" if packed is not None else source
    try:
        stored = bentoml.models.get(tag)
    except NotFound as err:
        raise store.ModelNotFoundError(
            f"model {tag} is not in the BentoML model store "
            f"{internals.model_store_path()}: import it with the "
            "release flow, or point BENTOML_HOME at the store that holds it"
        ) from err
    # integrity first, in every process that imports the service (CLI, build, workers)
    verify_files(Path(stored.path), stored.info.metadata, tag=str(stored.tag))
    return bentoml.models.BentoModel(stored.tag), source


def _load_stored(tag: str) -> ModelRuntime:
    """Load and verify ``tag`` from the model store (a new champion, beside the served one)."""
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(tag)
    except NotFound as err:
        raise store.ModelNotFoundError(
            f"model {tag} is not in the BentoML model store {internals.model_store_path()}"
        ) from err
    return load_runtime(
        Path(stored.path), stored.info.metadata, tag=str(stored.tag), labels=stored.info.labels
    )


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` in the serving process.

    pyarrow imports pandas on its first array when pandas is installed (as in the development
    environment; the bento image has none): a second of start-up and about 60 MB of memory for
    a library the service never uses. Refusing it makes the process behave like the image.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by the serving process")
        return None


def _keep_pandas_out() -> None:
    """Install :class:`_NoPandas` unless pandas is already loaded (tests, notebooks)."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


# young-generation threshold after start-up: most request objects die by reference count, so
# collections are rarer without being longer, and the oldest generation is walked seldom
GC_THRESHOLDS = (20_000, 20, 100)
# how long a thread that holds the interpreter lock keeps it once another thread asks (CPython's
# default is 5 ms): a batch's check and scoring threads run Python code, and at 5 ms every
# event-loop turn of a single-row request waited up to that long behind them
SWITCH_INTERVAL_S = 0.001


@contextlib.asynccontextmanager
async def _freeze_heap(_: Any) -> AsyncIterator[None]:
    """After start-up, move every object alive into the permanent GC generation.

    The service imports a large object graph (BentoML, pydantic, onnxruntime); without this,
    every full collection walks it and stalls requests for tens of milliseconds. The
    collector's thresholds are raised too (:data:`GC_THRESHOLDS`): at the defaults a
    collection ran every 700 allocations, and the oldest generation every 70,000. Threads
    hand the interpreter lock over after :data:`SWITCH_INTERVAL_S`.
    """
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logger.info("start-up heap frozen", extra={"frozen_objects": gc.get_freeze_count()})
    yield
    sys.setswitchinterval(switch)
    gc.set_threshold(*before)
    gc.unfreeze()


def _model_info(metrics: ServiceMetrics, runtime: ModelRuntime) -> Any:
    """The ``fraud_model_info`` series of ``runtime`` (1 while it answers, 0 after a swap)."""
    return metrics.model_info.labels(
        model_version=runtime.model_version,
        tag=runtime.tag,
        sha256=runtime.sha256,
        spec_hash=runtime.spec_hash,
    )


SERVING = ServingApp(lifespan=_freeze_heap)
# bounded request heads and route-labelled HTTP metrics: must be in place before the worker
# builds its ASGI app and uvicorn server, which happens after this import (see the module)
internals.install()


@bentoml.asgi_app(SERVING.app, path="/")
@bentoml.service(
    name="fraud-detector",
    workers=1,
    traffic={"timeout": 30},
    # per-request access lines and tracing spans are the largest costs of the stack; predictions
    # are logged (inference log, JSON log lines for refusals) and counted (metrics) instead
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": PREDICTION_PATHS},
)
class FraudDetector:
    """Scores card transactions with the champion ONNX model and its pinned feature spec."""

    model_ref, model_source = _model_reference()

    def __init__(self) -> None:
        config = ServingConfig.from_env()
        log = configure_json_logging(logging.DEBUG if config.log_requests else logging.INFO)
        try:
            follow, interval, mode = follow_settings(self.model_source)
            gate = api_key_gate()  # None: no key configured (the embedded default)
        except (FollowConfigError, ApiKeyError) as err:
            log.error("start-up refused: %s", err)
            raise
        SERVING.app.gate = gate
        _keep_pandas_out()
        tuned = tune_allocator()
        stored = self.model_ref
        tag = str(stored.tag)
        try:
            runtime = load_runtime(
                Path(stored.path), stored.info.metadata, tag=tag, labels=stored.info.labels
            )
        except ModelLoadError as err:
            log.error("start-up refused: %s", err, extra={"model_tag": tag})
            raise
        metrics = service_metrics(tuple(runtime.spec.feature_names))
        _model_info(metrics, runtime).set(1)
        self.config, self.metrics = config, metrics
        self.writer = self._new_writer(runtime)
        SERVING.bind(runtime, config, self.writer, metrics)
        SERVING.set_openapi_source(lambda: FraudDetector.openapi_spec.asdict())
        SERVING.set_model_source(self._describe)
        self.runtime = runtime
        home = store.fraud_home() / "bentoml"
        model_name = runtime.tag.partition(":")[0]
        self.follow = FollowStatus(
            mode=mode,
            following=follow,
            pointer=str(pointer_path(home, model_name)),
            interval_s=interval,
        )
        self.follower: ChampionFollower | None = None
        if follow:
            self.follower = ChampionFollower(
                bentoml_home=home,
                model_name=model_name,
                served_tag=tag,
                load=_load_stored,
                install=self._install,
                status=self.follow,
                on_swap=metrics.model_swaps.inc,
                on_refused=lambda reason: metrics.model_swaps_refused.labels(reason=reason).inc(),
            )
        log.info(
            "model loaded and verified",
            extra={
                "model_tag": tag,
                "model_version": runtime.model_version,
                "sha256": runtime.sha256,
                "spec_hash": runtime.spec_hash,
                "threshold": runtime.threshold,
                "inference_log": str(config.inference_log_dir)
                if config.inference_log_enabled
                else "off",
                "labels": dict(runtime.labels),
                "allocator_tuned": tuned,
                "follow_champion": self.follow.pointer if follow else f"off ({mode})",
                "api_keys": gate.source.describe() if gate is not None else "off",
            },
        )
        if self.follower is not None:
            self.follower.start()

    def _id_key(self) -> bytes:
        """The transaction-id hash key, read once; a bad key setting stops start-up here."""
        if getattr(self, "_key", None) is None:
            self._key, warning = serving_id_key()
            if warning:
                logger.warning("inference log: %s", warning)
        return self._key

    def _new_writer(self, runtime: ModelRuntime) -> InferenceLogWriter | None:
        """An inference log writer for ``runtime``'s version (None when the log is off)."""
        config, metrics = self.config, self.metrics
        if not config.inference_log_enabled:
            return None
        writer = InferenceLogWriter(
            config.inference_log_dir,
            runtime.spec,
            runtime.model_version,
            flush_interval_s=config.log_flush_interval_s,
            flush_records=config.log_flush_records,
            on_written=metrics.log_written.inc,
            on_lost=lambda n, _reason: metrics.log_lost.inc(n),
            on_state=lambda ok: metrics.log_writable.set(1 if ok else 0),
            id_key=self._id_key(),
        )
        writer.warm_up()
        writer.start()
        return writer

    def _install(self, runtime: ModelRuntime) -> None:
        """Serve a verified new champion from the next request on; drain the old one.

        Runs on the follower's thread. Requests already running finish on the old model and
        write to the old log writer, which is closed (flushed) once they are done.
        """
        old_runtime, old_writer = self.runtime, self.writer
        writer = self._new_writer(runtime)
        self.metrics.set_features(runtime.spec.feature_names)
        previous = SERVING.bind(runtime, self.config, writer, self.metrics)
        self.runtime, self.writer = runtime, writer
        _model_info(self.metrics, runtime).set(1)
        _model_info(self.metrics, old_runtime).set(0)
        if previous is not None:
            still = SERVING.drain(previous, timeout_s=DRAIN_TIMEOUT_S)
            if still:
                logger.warning(
                    "%d requests still ran on %s after %.0f s; its log writer is closed anyway",
                    still,
                    old_runtime.tag,
                    DRAIN_TIMEOUT_S,
                )
        if old_writer is not None:
            old_writer.close()

    def _describe(self) -> dict[str, Any]:
        """``GET /model``: the model answering now, and the follower's status."""
        runtime = SERVING.runtime or self.runtime
        log = self.writer.status() if self.writer is not None else None
        return describe_runtime(runtime) | {"follow": self.follow.as_dict(), "inference_log": log}

    def __is_ready__(self) -> bool:
        """Ready once the verified model is bound to the prediction endpoints."""
        return SERVING.bound

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop following, stop taking predictions and flush the inference log."""
        if self.follower is not None:
            self.follower.stop()
        SERVING.unbind()
        if self.writer is not None:
            self.writer.close()
            logger.info(
                "inference log flushed",
                extra={"written": self.writer.written, "lost": self.writer.lost},
            )
