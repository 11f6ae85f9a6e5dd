"""Benchmark of calibrated scores: are the served ``fraud_probability`` values probabilities?

On each table a release's own steps run twice on the same split (the project's split, the
``quick`` model search and refit): once as releases were (``calibration: none``), once
calibrated (cross-fitted centred isotonic regression, :mod:`flows.training.calibration`).
Printed per table:

- the served scores (the calibrated ONNX graph on the holdout): mean against the fraud rate,
  ECE (10 equal-width bins) and Brier, beside the uncalibrated model's;
- the reference: the same configuration calibrated by scikit-learn's ``CalibratedClassifierCV``
  (isotonic, 3 stratified folds on the training rows, an ensemble of the three fold models), and
  the served Brier as a share of it (the issue's target: within 10%);
- the ECE a perfectly calibrated model would show on this holdout (labels drawn from the served
  scores, 200 times): the noise floor that ECE cannot go below on a small holdout;
- ONNX parity of the whole calibrated graph (max |p_sklearn - p_onnx|, decision flips);
- holdout F1 of both at their own thresholds, with the paired bootstrap interval of the
  difference (target: no loss beyond the interval);
- cost: the calibration's extra fits (seconds) and ONNX Runtime latency of one row and of a
  1,000-row batch with and without the calibrator's nodes.

Tables: the synthetic card data (``fraud generate-data``), and two tables made with
``sklearn.datasets.make_classification`` in the shapes of a public credit-default table
(10,000 rows, 3% positive) and a credit-scoring one (4,500 rows, 28% positive), written as CSV
with a spec under ``--folder`` when missing, together with 20,000 more rows of the same
generator that no release sees: the served, uncalibrated and reference scores are also judged
there, where ECE is not swamped by a 900-row holdout's noise. On the generated tables a fixed
balanced logistic regression runs too (``--no-logistic`` skips it): the family whose scores
class weights inflate the most. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/calibration.py [--synthetic PATH] [--folder DIR] [--no-logistic]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TABLES = {
    # name: rows, share of the majority class before label noise, features, informative
    # features, class separation, label noise (a random class for that share of rows): about
    # 3% and 28% positive, weak signals as in credit tables
    "credit-default-like": (10_000, 0.9747, 20, 6, 0.5, 0.01),
    "credit-scoring-like": (4_500, 0.7245, 14, 5, 0.5, 0.02),
}
WORK = Path(tempfile.gettempdir()) / "calibration"  # default home of the tables
FRESH = 20_000  # more rows of the same generator: an ECE not swamped by a small holdout's noise


def make_table(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A make_classification table with an id column, its spec, and :data:`FRESH` more rows
    of the same generator that no release sees (written once)."""
    from sklearn.datasets import make_classification

    data, spec, fresh = (folder / f"{name}{end}" for end in (".csv", ".json", "-fresh.csv"))
    if data.exists() and spec.exists() and fresh.exists():
        return data, spec, fresh
    rows, majority, features, informative, sep, noise = TABLES[name]
    x, y = make_classification(
        n_samples=rows + FRESH, n_features=features, n_informative=informative, n_redundant=2,
        weights=[majority], flip_y=noise, class_sep=sep, random_state=7,
    )  # fmt: skip
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame.insert(0, "row_id", [f"{name[:3]}-{i:05d}" for i in range(rows + FRESH)])
    frame["label"] = y
    folder.mkdir(parents=True, exist_ok=True)
    frame.head(rows).to_csv(data, index=False)
    frame.tail(FRESH).to_csv(fresh, index=False)
    spec.write_text(json.dumps({
        "name": name, "id_column": "row_id",
        "label": {"name": "label", "positive": 1, "negative": 0},
        "features": [{"name": f"f{i}", "kind": "numeric"} for i in range(features)],
    }, indent=2))  # fmt: skip
    return data, spec, fresh


def ece_noise_floor(scores: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Mean ECE of labels drawn from the scores themselves: what a perfect model would show."""
    from flows.training.calibration_evidence import ece

    rng = np.random.default_rng(seed)
    return float(np.mean([ece((rng.random(len(scores)) < scores).astype(int), scores)
                          for _ in range(draws)]))  # fmt: skip


def reference_isotonic(splits: Any, spec: Any, params: Any) -> tuple[Any, float]:
    """The configuration calibrated by CalibratedClassifierCV (isotonic, 3 stratified folds on
    the training rows, the three fold models averaged), and the seconds its fit took."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    from data_contracts.schemas import LABEL_INT, model_frame
    from flows.training.train import build_pipeline, fit_threads

    folds = StratifiedKFold(3, shuffle=True, random_state=params.random_state)
    model = CalibratedClassifierCV(build_pipeline(spec, params), method="isotonic", cv=folds)
    start = time.perf_counter()
    with fit_threads(len(splits.train)):
        model.fit(model_frame(splits.train, spec), splits.train[LABEL_INT].to_numpy())
    return model, time.perf_counter() - start


def quality(prefix: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``<prefix>_mean``, ``_ece`` and ``_brier`` of scores against labels."""
    from flows.training.calibration_evidence import brier, ece

    return {f"{prefix}_mean": float(np.mean(scores)), f"{prefix}_ece": ece(y, scores),
            f"{prefix}_brier": brier(y, scores)}  # fmt: skip


def latency(model_bytes: bytes, rows: pd.DataFrame, spec: Any) -> tuple[float, float]:
    """Median ONNX Runtime seconds for one row and for a 1,000-row batch."""
    from data_contracts.schemas import model_frame, onnx_feed
    from flows.training.onnx_export import PROBABILITIES, onnx_session

    session = onnx_session(model_bytes)
    one = onnx_feed(model_frame(rows.head(1), spec), spec)
    batch = onnx_feed(model_frame(rows.head(1000), spec), spec)
    out = []
    for feed, repeat in ((one, 2000), (batch, 50)):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.run([PROBABILITIES], feed)
            times.append(time.perf_counter() - start)
        out.append(float(np.median(times)))
    return out[0], out[1]


def measure(
    name: str,
    data: Path,
    spec_path: Path | None,
    fresh: Path | None = None,
    family: str | None = None,
) -> dict[str, Any]:
    """Every figure of one table: the release's search, or the fixed ``family``."""
    from data_contracts.schemas import LABEL_INT, model_frame, validate_frame
    from data_contracts.spec import default_spec, load_spec
    from flows.core.tables import load_table
    from flows.training.calibration import calibrate
    from flows.training.onnx_export import export_onnx, onnx_predict_proba, onnx_session, parity
    from flows.training.release import train_candidate
    from flows.training.search import splits_by_time
    from flows.training.splitting import SplitPolicy, apply_split
    from flows.training.train import TrainParams
    from flows.training.uncertainty import paired_f1_bootstrap

    spec = load_spec(spec_path) if spec_path else default_spec()
    splits = apply_split(validate_frame(load_table(data), spec, labelled=True).valid, spec,
                         SplitPolicy())  # fmt: skip
    y = splits.holdout[LABEL_INT].to_numpy()
    search, fixed = ("off", {"classifier": family}) if family else ("quick", {})
    runs = {}
    for calibration in ("none", "isotonic"):
        start = time.perf_counter()
        cand = train_candidate(splits, spec, TrainParams(calibration=calibration, **fixed),
                               search=search, time_ordered=splits_by_time(splits))  # fmt: skip
        runs[calibration] = (cand, time.perf_counter() - start)
    (raw, raw_s), (cal, cal_s) = runs["none"], runs["isotonic"]
    start = time.perf_counter()  # the calibration alone: cross-fitting and the calibrator
    calibrate(cal.pipeline.pipeline, splits.train, spec, cal.params)
    calibrate_s = time.perf_counter() - start
    model_bytes = export_onnx(cal.pipeline, spec)
    session = onnx_session(model_bytes)
    served = onnx_predict_proba(session, splits.holdout, spec).astype(float)
    report = parity(cal.holdout_scores, served, cal.threshold, 1e-4)
    reference, ref_s = reference_isotonic(splits, spec, raw.params)
    ref_scores = reference.predict_proba(model_frame(splits.holdout, spec))[:, 1]
    boot = paired_f1_bootstrap(y, (served >= cal.threshold).astype(int),
                               (raw.holdout_scores >= raw.threshold).astype(int))  # fmt: skip
    one_raw, batch_raw = latency(export_onnx(raw.pipeline, spec), splits.holdout, spec)
    one_cal, batch_cal = latency(model_bytes, splits.holdout, spec)
    out = {
        "table": name + (f" ({family}, fixed)" if family else ""), "split": splits.kind,
        "holdout_rows": len(y), "positives": int(y.sum()), "rate": float(y.mean()),
        "winner": raw.search.winner.name if raw.search else family,
        **quality("raw", y, raw.holdout_scores), **quality("served", y, served),
        **quality("ref", y, ref_scores), "ece_floor": ece_noise_floor(served),
        "parity": report.max_abs_diff, "flips": report.decision_flips,
        "f1_raw": raw.metrics.f1, "f1_cal": boot.candidate.estimate,
        "f1_cal_interval": (boot.candidate.low, boot.candidate.high),
        "f1_diff": boot.difference.estimate if boot.difference else 0.0,
        "f1_diff_interval": (boot.difference.low, boot.difference.high) if boot.difference
        else (0.0, 0.0),
        "threshold_raw": raw.threshold, "threshold_cal": cal.threshold,
        "threshold_from": cal.threshold_from, "calibration": cal.calibration_text(),
        "train_s_raw": raw_s, "train_s_cal": cal_s, "reference_s": ref_s,
        "calibrate_s": calibrate_s,
        "latency_one_ms": (one_raw * 1e3, one_cal * 1e3),
        "latency_batch_ms": (batch_raw * 1e3, batch_cal * 1e3),
    }  # fmt: skip
    if fresh is not None:  # the same generator's unseen rows: calibration without holdout noise
        rows = validate_frame(load_table(fresh), spec, labelled=True).valid
        yf = rows[LABEL_INT].to_numpy()
        served_f = onnx_predict_proba(session, rows, spec).astype(float)
        x = model_frame(rows, spec)
        out |= {"fresh_rows": len(yf), "fresh_rate": float(yf.mean()),
                **quality("fresh_raw", yf, raw.pipeline.predict_proba(x)[:, 1]),
                **quality("fresh_served", yf, served_f),
                **quality("fresh_ref", yf, reference.predict_proba(x)[:, 1]),
                "fresh_floor": ece_noise_floor(served_f)}  # fmt: skip
    return out


def print_figures(rows: list[dict[str, Any]]) -> None:
    """The summary tables, then one paragraph per table."""
    print("| table | rate | uncalibrated mean / ECE / Brier | served (calibrated ONNX) mean / "
          "ECE / Brier | isotonic CV reference mean / ECE / Brier | Brier vs reference | "
          "ECE floor | parity | holdout F1 uncal -> cal (diff, 95%) |")  # fmt: skip
    print("| --- " * 9 + "|")
    for r in rows:
        lo, hi = r["f1_diff_interval"]
        print(
            f"| {r['table']} ({r['holdout_rows']:,} holdout rows, {r['positives']} pos) | "
            f"{r['rate']:.3f} | {r['raw_mean']:.3f} / {r['raw_ece']:.4f} / {r['raw_brier']:.4f} "
            f"| {r['served_mean']:.3f} / {r['served_ece']:.4f} / {r['served_brier']:.4f} | "
            f"{r['ref_mean']:.3f} / {r['ref_ece']:.4f} / {r['ref_brier']:.4f} | "
            f"{r['served_brier'] / r['ref_brier'] - 1:+.1%} | {r['ece_floor']:.4f} | "
            f"{r['parity']:.1e}, {r['flips']} flips | {r['f1_raw']:.4f} -> {r['f1_cal']:.4f} "
            f"({r['f1_diff']:+.4f}, {lo:+.4f} to {hi:+.4f}) |"
        )
    fresh = [r for r in rows if "fresh_rows" in r]
    if fresh:
        print(f"\nOn {FRESH:,} more rows of the same generator (no release saw them):\n")
        print("| table | rate | uncalibrated mean / ECE / Brier | served mean / ECE / Brier | "
              "reference mean / ECE / Brier | Brier vs reference | ECE floor |")  # fmt: skip
        print("| --- " * 7 + "|")
    for r in fresh:
        print(
            f"| {r['table']} | {r['fresh_rate']:.3f} | {r['fresh_raw_mean']:.3f} / "
            f"{r['fresh_raw_ece']:.4f} / {r['fresh_raw_brier']:.4f} | "
            f"{r['fresh_served_mean']:.3f} / {r['fresh_served_ece']:.4f} / "
            f"{r['fresh_served_brier']:.4f} | {r['fresh_ref_mean']:.3f} / "
            f"{r['fresh_ref_ece']:.4f} / {r['fresh_ref_brier']:.4f} | "
            f"{r['fresh_served_brier'] / r['fresh_ref_brier'] - 1:+.1%} | "
            f"{r['fresh_floor']:.4f} |"
        )
    for r in rows:
        lat1, latb = r["latency_one_ms"], r["latency_batch_ms"]
        print(
            f"\n{r['table']}: {r['split']} split, model {r['winner']}; calibration "
            f"{r['calibration']}; threshold {r['threshold_raw']:.4f} (uncalibrated) -> "
            f"{r['threshold_cal']:.4f} (calibrated, from {r['threshold_from']}); training "
            f"{r['train_s_raw']:.1f} s -> {r['train_s_cal']:.1f} s, of which the calibration "
            f"{r['calibrate_s']:.1f} s (reference CalibratedClassifierCV "
            f"{r['reference_s']:.1f} s); ONNX Runtime one row "
            f"{lat1[0]:.3f} -> {lat1[1]:.3f} ms, 1,000 rows {latb[0]:.2f} -> {latb[1]:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--synthetic",
        type=Path,
        default=WORK / "synthetic.parquet",
        help="synthetic card data (generated with 200,000 rows when missing)",
    )
    parser.add_argument("--folder", type=Path, default=WORK)
    parser.add_argument("--tables", nargs="*", default=["synthetic", *TABLES])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-logistic", dest="logistic", action="store_false",
                        help="skip the fixed logistic model on the generated tables")  # fmt: skip
    args = parser.parse_args()
    rows = []
    for name in args.tables:
        if name == "synthetic":
            if not args.synthetic.exists():
                from data_contracts.synthetic import GeneratorConfig, generate

                args.synthetic.parent.mkdir(parents=True, exist_ok=True)
                generate(GeneratorConfig(rows=200_000)).to_parquet(args.synthetic, index=False)
            rows.append(measure(name, args.synthetic, None))
        else:
            data, spec, fresh = make_table(args.folder, name)
            rows.append(measure(name, data, spec, fresh))
            if args.logistic:  # a well-regularised family: class weights inflate it the most
                rows.append(measure(name, data, spec, fresh, family="logistic"))
        print(f"measured {name}", flush=True)
    print_figures(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
