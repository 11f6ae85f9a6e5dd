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
from bento.config import ServingConfig
from bento.http_app import ServingApp
from bento.inference_log import InferenceLogWriter
from bento.logs import configure_json_logging
from bento.memory import tune_allocator
from bento.metrics import service_metrics
from bento.runtime import ModelLoadError, load_runtime, verify_files

logger = logging.getLogger("fraud.serving")
PREDICTION_PATHS = ["/predict", "/predict_batch"]


def _model_reference() -> bentoml.models.BentoModel:
    """The stored model this process serves (see :func:`bento.store.resolve_model_tag`).

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
    return bentoml.models.BentoModel(stored.tag)


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


@contextlib.asynccontextmanager
async def _freeze_heap(_: Any) -> AsyncIterator[None]:
    """After start-up, move every object alive into the permanent GC generation.

    The service imports a large object graph (BentoML, pydantic, onnxruntime); without this,
    every full collection walks it and stalls requests for tens of milliseconds.
    """
    gc.collect()
    gc.freeze()
    logger.info("start-up heap frozen", extra={"frozen_objects": gc.get_freeze_count()})
    yield
    gc.unfreeze()


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

    model_ref = _model_reference()

    def __init__(self) -> None:
        config = ServingConfig.from_env()
        log = configure_json_logging(logging.DEBUG if config.log_requests else logging.INFO)
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
        metrics.model_info.labels(
            model_version=runtime.model_version,
            tag=tag,
            sha256=runtime.sha256,
            spec_hash=runtime.spec_hash,
        ).set(1)
        self.writer: InferenceLogWriter | None = None
        if config.inference_log_enabled:
            self.writer = InferenceLogWriter(
                config.inference_log_dir,
                runtime.spec,
                runtime.model_version,
                flush_interval_s=config.log_flush_interval_s,
                flush_records=config.log_flush_records,
                on_written=metrics.log_written.inc,
                on_lost=lambda n, _reason: metrics.log_lost.inc(n),
            )
            self.writer.warm_up()
            self.writer.start()
        SERVING.bind(runtime, config, self.writer, metrics)
        SERVING.set_openapi_source(lambda: FraudDetector.openapi_spec.asdict())
        self.runtime = runtime
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
            },
        )

    def __is_ready__(self) -> bool:
        """Ready once the verified model is bound to the prediction endpoints."""
        return SERVING.bound

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop taking predictions and flush the inference log."""
        SERVING.unbind()
        if self.writer is not None:
            self.writer.close()
            logger.info(
                "inference log flushed",
                extra={"written": self.writer.written, "lost": self.writer.lost},
            )
