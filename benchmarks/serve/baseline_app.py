"""The baseline: the usual hand-rolled serving of this model, as the seed article writes it.

FastAPI, pydantic request and response models written by hand, a plain ``def`` endpoint,
onnxruntime, one uvicorn worker. It lives here, not in the product: it is what the bento's
numbers are compared against. Model and threshold come from ``BASELINE_MODEL_DIR`` (a BentoML
store model folder: ``model.onnx`` + ``feature_spec.json``) and ``BASELINE_THRESHOLD``.

    BASELINE_MODEL_DIR=... uvicorn benchmarks.serve.baseline_app:app --workers 1
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel, Field

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", "."))
THRESHOLD = float(os.environ.get("BASELINE_THRESHOLD", "0.5"))


class Transaction(BaseModel):
    amount: float = Field(..., ge=0, le=50000)
    merchant_category: str
    channel: Literal["pos", "ecommerce", "atm", "moto"]
    device_type: Literal["mobile", "desktop", "tablet", "terminal"] | None
    hour_of_day: int = Field(..., ge=0, le=23)
    day_of_week: int = Field(..., ge=0, le=6)
    card_present: bool
    country_mismatch: bool
    is_new_device: bool
    txn_count_1h: int = Field(..., ge=0, le=500)
    txn_count_24h: int = Field(..., ge=0, le=2000)
    amount_sum_24h: float = Field(..., ge=0, le=1_000_000)
    avg_amount_30d: float | None = Field(..., ge=0, le=50000)
    amount_to_avg_ratio: float | None = Field(..., ge=0, le=10000)
    minutes_since_last_txn: float | None = Field(..., ge=0, le=525600)
    distance_from_home_km: float | None = Field(..., ge=0, le=20040)
    distance_from_last_txn_km: float | None = Field(..., ge=0, le=20040)
    account_age_days: int = Field(..., ge=0, le=36500)
    failed_pin_attempts_24h: int = Field(..., ge=0, le=20)
    credit_limit: float = Field(..., ge=0, le=200000)
    customer_age: int = Field(..., ge=18, le=110)


class PredictionResponse(BaseModel):
    request_id: str
    fraud_probability: float = Field(..., ge=0.0, le=1.0)
    is_fraud: bool
    model_version: str


state: dict[str, object] = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    inputs = [i.name for i in session.get_inputs()]
    if inputs != list(Transaction.model_fields):
        raise RuntimeError(f"model inputs {inputs} differ from the request model")
    spec = json.loads((MODEL_DIR / "feature_spec.json").read_text())
    state["session"] = session
    state["categorical"] = {f["name"] for f in spec["features"] if f["kind"] == "categorical"}
    yield


app = FastAPI(title="Fraud Detection Service (baseline)", version="1.0", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict", response_model=PredictionResponse)
def predict(request: Transaction) -> PredictionResponse:
    session: ort.InferenceSession = state["session"]  # type: ignore[assignment]
    categorical: set[str] = state["categorical"]  # type: ignore[assignment]
    feed = {}
    for name, value in request.model_dump().items():
        if name in categorical:
            feed[name] = np.array([["__missing__" if value is None else value]], dtype=object)
        else:
            feed[name] = np.array([[np.nan if value is None else value]], dtype=np.float32)
    probability = float(session.run(["probabilities"], feed)[0][0, 1])
    return PredictionResponse(
        request_id=uuid.uuid4().hex,
        fraud_probability=probability,
        is_fraud=probability >= THRESHOLD,
        model_version="baseline",
    )
