"""A seedable generator of realistic card transactions that follow the default fraud spec.

Fraud is not one leaking column: three fraud patterns (card-not-present fraud, account takeover,
skimmed cards at night) each shift several features at once, legitimate customers sometimes look
similar (travellers, new phones), and a small share of labels is noisy. Knobs in
:class:`DriftKnobs` change the world for the monitoring work: amounts, merchant mix, fraud rate
and a broken upstream feed. The generator is pure (no I/O);
``flows/cli/generate_data.py`` is its CLI.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

MERCHANTS = (
    "grocery", "gas", "restaurant", "travel", "electronics", "online_retail",
    "jewelry", "gaming", "pharmacy", "entertainment", "money_transfer",
)  # fmt: skip
LEGIT_MERCHANT_P = np.array([0.24, 0.12, 0.16, 0.05, 0.05, 0.17, 0.01, 0.03, 0.08, 0.08, 0.01])
CNP_MERCHANT_P = np.array([0.02, 0.01, 0.02, 0.10, 0.30, 0.25, 0.08, 0.14, 0.01, 0.02, 0.05])
ATO_MERCHANT_P = np.array([0.03, 0.02, 0.03, 0.08, 0.15, 0.15, 0.10, 0.09, 0.02, 0.03, 0.30])
SKIM_MERCHANT_P = np.array([0.15, 0.25, 0.05, 0.02, 0.15, 0.0, 0.15, 0.03, 0.05, 0.15, 0.0])
CHANNELS = ("pos", "ecommerce", "atm", "moto")
DEVICES = ("mobile", "desktop", "tablet", "terminal")
START = np.datetime64("2026-01-01T00:00:00", "s")
CHUNK = 100_000


class DriftKnobs(BaseModel):
    """Ways the world can change after training; all neutral by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount_scale: float = Field(1.0, gt=0, description="Multiply every amount (inflation, FX).")
    merchant_shift: float = Field(
        0.0, ge=0, le=1, description="Share of legitimate traffic moved to gaming/money_transfer."
    )
    fraud_rate: float | None = Field(None, gt=0, lt=0.5, description="Override the fraud rate.")
    broken_feed: bool = Field(
        False, description="Upstream bug: distances arrive null and velocity counts as zero."
    )
    start_day: int = Field(0, ge=0, description="Days after 2026-01-01 the data starts.")
    new_fraud_pattern: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of frauds in a pattern unseen before (synthetic identities): "
        "legitimate-looking payments of very young customers with very high credit limits. "
        "Inputs barely move; a model trained before misses them.",
    )


class GeneratorConfig(BaseModel):
    """What to generate: size, seed, fraud rate, contract-breaking rows and drift knobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int = Field(100_000, ge=1)
    seed: int = 7
    fraud_rate: float = Field(0.02, gt=0, lt=0.5)
    invalid_rows: int = Field(0, ge=0, description="Rows that break the contract on purpose.")
    days: int = Field(30, ge=1)
    drift: DriftKnobs = DriftKnobs()


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(np.log(median), sigma, n)


def _chunk(rng: np.random.Generator, n: int, offset: int, cfg: GeneratorConfig) -> pd.DataFrame:
    d = cfg.drift
    rate = d.fraud_rate if d.fraud_rate is not None else cfg.fraud_rate
    fraud = rng.random(n) < rate
    # pattern: 0 legit, 1 card-not-present, 2 account takeover, 3 skimmed card
    pattern = np.where(fraud, rng.choice([1, 2, 3], size=n, p=[0.5, 0.3, 0.2]), 0)
    novel = np.zeros(n, dtype=bool)
    if d.new_fraud_pattern:  # drawn only when asked, so every other stream stays as it was
        novel = fraud & (rng.random(n) < d.new_fraud_pattern)
        pattern = np.where(novel, 0, pattern)  # looks legitimate in every old signal
    is_ = [pattern == k for k in range(4)]
    u = rng.random

    merchant_p = LEGIT_MERCHANT_P.copy()
    if d.merchant_shift:
        merchant_p = merchant_p * (1 - d.merchant_shift)
        merchant_p[MERCHANTS.index("gaming")] += d.merchant_shift * 0.6
        merchant_p[MERCHANTS.index("money_transfer")] += d.merchant_shift * 0.4
    merchant = np.empty(n, dtype=object)
    for k, p in enumerate((merchant_p, CNP_MERCHANT_P, ATO_MERCHANT_P, SKIM_MERCHANT_P)):
        idx = np.flatnonzero(is_[k])
        merchant[idx] = np.asarray(MERCHANTS, dtype=object)[
            rng.choice(len(MERCHANTS), size=len(idx), p=p / p.sum())
        ]

    # channel and card presence
    channel = np.where(u(n) < 0.55, "pos", np.where(u(n) < 0.85, "ecommerce", "atm"))
    channel = np.where(u(n) < 0.02, "moto", channel).astype(object)
    channel[is_[1]] = np.where(u(int(is_[1].sum())) < 0.85, "ecommerce", "moto")
    channel[is_[3]] = np.where(u(int(is_[3].sum())) < 0.6, "atm", "pos")
    card_present = np.isin(channel, ["pos", "atm"]) & (u(n) < 0.97)

    # hours: legit peaks in daytime, skimming at night
    hour = np.clip(np.round(rng.normal(14, 4.5, n)), 0, 23) % 24
    night = rng.integers(0, 6, n)
    hour = np.where(is_[3] & (u(n) < 0.7), night, hour)
    hour = np.where(is_[2] & (u(n) < 0.4), night, hour).astype(np.int64)
    day = rng.integers(0, 7, n)

    customer_age = np.clip(np.round(rng.normal(45, 15, n)), 18, 95).astype(np.int64)
    account_age = np.clip(rng.exponential(1500, n), 0, 36000).astype(np.int64)
    account_age = np.where(is_[1] & (u(n) < 0.5), rng.integers(0, 60, n), account_age)
    credit_limit = np.round(np.clip(_lognormal(rng, 5000, 0.6, n), 300, 100_000), -2)
    if novel.any():
        k = int(novel.sum())
        customer_age[novel] = rng.integers(18, 22, k)
        credit_limit[novel] = np.round(np.clip(_lognormal(rng, 30_000, 0.25, k), 300, 100_000), -2)

    avg30 = np.clip(_lognormal(rng, 55, 0.7, n), 2, 5000)
    amount = avg30 * _lognormal(rng, 1.0, 0.6, n)
    amount = np.where(is_[1], _lognormal(rng, 320, 0.8, n), amount)
    amount = np.where(is_[2], _lognormal(rng, 700, 0.9, n), amount)
    amount = np.where(is_[3] & (channel == "atm"), rng.choice([200, 300, 400, 500], n), amount)
    amount = np.clip(np.round(amount * d.amount_scale, 2), 0.5, 49_000)
    avg30 = np.where(account_age < 30, np.nan, np.round(avg30, 2))
    ratio = np.round(amount / avg30, 4)

    txn_1h = rng.poisson(0.3, n)
    txn_1h = np.where(is_[2], rng.poisson(4.5, n), txn_1h)
    txn_1h = np.where(is_[1], rng.poisson(1.5, n), txn_1h)
    txn_24h = txn_1h + rng.poisson(3, n) + np.where(is_[2], rng.poisson(6, n), 0)
    amount_sum = np.round(amount * (1 + txn_24h * _lognormal(rng, 0.8, 0.5, n)), 2)
    minutes_since = np.where(
        txn_1h > 0, rng.uniform(0.5, 60, n), _lognormal(rng, 600, 1.2, n)
    ).round(1)
    minutes_since = np.where(is_[2], rng.uniform(0.2, 8, n), minutes_since)
    minutes_since = np.where(u(n) < 0.01, np.nan, np.clip(minutes_since, 0, 525_000))

    home_km = _lognormal(rng, 8, 1.2, n)
    traveller = u(n) < 0.04
    home_km = np.where(traveller, _lognormal(rng, 1500, 1.0, n), home_km)
    home_km = np.where(is_[3], _lognormal(rng, 600, 1.3, n), home_km)
    home_km = np.where(is_[1] & card_present, _lognormal(rng, 800, 1.0, n), home_km)
    home_km = np.round(np.clip(home_km, 0, 20_000), 2)
    last_km = np.round(np.clip(home_km * rng.uniform(0, 1.2, n), 0, 20_000), 2)
    last_km = np.where(is_[2], np.round(_lognormal(rng, 900, 1.0, n).clip(0, 20_000), 2), last_km)
    home_km = np.where(u(n) < 0.03, np.nan, home_km)
    last_km = np.where(u(n) < 0.03, np.nan, last_km)

    country_mismatch = np.where(traveller, u(n) < 0.6, u(n) < 0.02)
    country_mismatch = np.where(is_[1], u(n) < 0.45, country_mismatch)
    country_mismatch = np.where(is_[3], u(n) < 0.35, country_mismatch)

    new_device = np.where(channel == "ecommerce", u(n) < 0.06, False)
    new_device = np.where(is_[1], u(n) < 0.65, new_device)
    new_device = np.where(is_[2], u(n) < 0.5, new_device)
    device = np.where(
        card_present,
        "terminal",
        np.where(u(n) < 0.6, "mobile", np.where(u(n) < 0.8, "desktop", "tablet")),
    ).astype(object)
    device[u(n) < 0.05] = None

    pin = np.where(u(n) < 0.02, rng.integers(1, 3, n), 0)
    pin = np.where(is_[3] & (u(n) < 0.5), rng.integers(1, 6, n), pin)
    pin = np.where(is_[2] & (u(n) < 0.3), rng.integers(1, 4, n), pin)

    if d.broken_feed:
        home_km = np.full(n, np.nan)
        last_km = np.full(n, np.nan)
        txn_1h = np.zeros(n, dtype=np.int64)
        txn_24h = np.zeros(n, dtype=np.int64)

    # 1% label noise: chargebacks filed by mistake, and fraud never reported
    label = fraud.copy()
    flip = u(n) < 0.002
    label[flip] = ~label[flip]

    seconds = rng.integers(0, cfg.days * 86_400, n) + d.start_day * 86_400
    event_time = pd.to_datetime(START + seconds.astype("timedelta64[s]"), utc=True)
    ids = np.char.add("tx-", np.char.zfill((np.arange(n) + offset).astype(str), 9))
    ids = np.char.add(f"{cfg.seed:04d}-{d.start_day:04d}-", ids)

    return pd.DataFrame(
        {
            "transaction_id": ids.astype(object),
            "event_time": event_time,
            "amount": amount,
            "merchant_category": merchant,
            "channel": channel,
            "device_type": device,
            "hour_of_day": hour,
            "day_of_week": day,
            "card_present": card_present,
            "country_mismatch": country_mismatch,
            "is_new_device": new_device,
            "txn_count_1h": txn_1h,
            "txn_count_24h": txn_24h,
            "amount_sum_24h": np.clip(amount_sum, 0, 1_000_000),
            "avg_amount_30d": avg30,
            "amount_to_avg_ratio": np.clip(ratio, 0, 10_000),
            "minutes_since_last_txn": minutes_since,
            "distance_from_home_km": home_km,
            "distance_from_last_txn_km": last_km,
            "account_age_days": account_age,
            "failed_pin_attempts_24h": pin,
            "credit_limit": credit_limit,
            "customer_age": customer_age,
            "is_fraud": label.astype(np.int64),
        }
    )


# (what breaks, column, value); a value of None copies the first row's id (a duplicate id)
INVALID_KINDS: tuple[tuple[str, str, object], ...] = (
    ("negative amount", "amount", -12.5),
    ("unknown channel", "channel", "fax"),
    ("infinite ratio", "amount_to_avg_ratio", np.inf),
    ("hour out of range", "hour_of_day", 27),
    ("null credit limit", "credit_limit", np.nan),
    ("duplicate id", "transaction_id", None),
    ("label outside the set", "is_fraud", 7),
)


def break_rows(df: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """Make ``count`` rows break the contract, cycling through the kinds in INVALID_KINDS."""
    df = df.copy()
    rng = np.random.default_rng(seed + 1_000_003)
    rows = rng.choice(np.arange(1, len(df)), size=min(count, len(df) - 1), replace=False)
    for k, i in enumerate(sorted(rows)):
        _, column, value = INVALID_KINDS[k % len(INVALID_KINDS)]
        if value is None:
            value = df[column].iloc[0]
        if isinstance(value, str) and df[column].dtype != object:
            df[column] = df[column].astype(object)
        df.loc[df.index[int(i)], column] = value
    return df


def iter_chunks(cfg: GeneratorConfig) -> Iterator[pd.DataFrame]:
    """Yield the data set in chunks of up to 100k rows; the result is the same for any consumer."""
    seeds = np.random.SeedSequence(cfg.seed).spawn((cfg.rows + CHUNK - 1) // CHUNK)
    for k, seq in enumerate(seeds):
        n = min(CHUNK, cfg.rows - k * CHUNK)
        yield _chunk(np.random.default_rng(seq), n, k * CHUNK, cfg)


def generate(cfg: GeneratorConfig) -> pd.DataFrame:
    """The whole data set as one frame (deterministic for a given config)."""
    df = pd.concat(list(iter_chunks(cfg)), ignore_index=True)
    if cfg.invalid_rows:
        df = break_rows(df, cfg.invalid_rows, cfg.seed)
    return df
