"""Benchmark of the model search: the searched model vs the fixed model on the same split.

Synthetic data (default 200k and 1M rows): holdout F1 and PR-AUC of ``search=quick`` vs
``search=off`` and the training wall time of both, with their ratio (target at 1M rows: quick
within 1.5x of off). Bring-your-own-data tables (the breast cancer table scikit-learn bundles,
the project's credit-risk example): the chosen family, its CV average precision and the holdout
F1. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_search.py [--sizes 200000 1000000] [--no-tables]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "data_contracts" / "examples"


def breast_cancer_csv(folder: Path) -> Path:
    """The bundled breast cancer table as a user would export it: snake_case, text label, id."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.insert(0, "sample_id", [f"s-{i:04d}" for i in range(len(frame))])
    frame["diagnosis"] = data.target.map({0: "malignant", 1: "benign"})
    path = folder / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path


def splits_of(data: Path | pd.DataFrame, spec_path: Path | None):
    from data_contracts.schemas import validate_frame
    from data_contracts.spec import default_spec, load_spec
    from flows.core.tables import load_table
    from flows.training.train import split

    spec = load_spec(spec_path) if spec_path else default_spec()
    raw = load_table(data) if isinstance(data, Path) else data
    valid = validate_frame(raw, spec, labelled=True).valid
    return spec, split(valid, spec, 0.2, 0.2)


def timed(splits, spec, search: str):
    from flows.training.release import train_candidate
    from flows.training.train import TrainParams

    start = time.perf_counter()
    candidate = train_candidate(splits, spec, TrainParams(), search=search)
    return candidate, time.perf_counter() - start


def synthetic(rows: int) -> None:
    from data_contracts.synthetic import GeneratorConfig, generate

    spec, splits = splits_of(generate(GeneratorConfig(rows=rows, seed=3)), None)
    off, t_off = timed(splits, spec, "off")
    quick, t_quick = timed(splits, spec, "quick")
    s = quick.search
    print(f"\nsynthetic {rows:,} rows (train {len(splits.train):,}, holdout "
          f"{len(splits.holdout):,} with {off.metrics.positives:,} positives)")  # fmt: skip
    print(f"{'model':<22} {'F1':>7} {'PR-AUC':>7} {'thresh':>7} {'train s':>8}")
    for label, cand, secs in (("off (fixed hgb)", off, t_off),
                              (f"quick -> {s.winner.name}", quick, t_quick)):  # fmt: skip
        m = cand.metrics
        print(f"{label:<22} {m.f1:7.4f} {m.pr_auc:7.4f} {m.threshold:7.3f} {secs:8.1f}")
    print(
        f"quick threshold from {quick.threshold_from}; the search's out-of-fold threshold "
        f"{s.threshold:.3f} would give holdout F1 {oof_f1(splits, quick, s.threshold):.4f}"
    )
    print(f"quick / off wall time: {t_quick / t_off:.2f}x (search {s.seconds:.1f} s on "
          f"{s.search_rows:,} rows, refit {t_quick - s.seconds:.1f} s, final params "
          f"{quick.params.classifier} max_iter={quick.params.max_iter})")  # fmt: skip
    for c in s.ranking:
        ap = f"{c.cv_ap_mean:.4f} +- {c.cv_ap_std:.4f}" if c.ok else ""
        print(f"  {c.name:<12} {c.status:<16} {ap:<18} {c.fit_seconds:6.1f} s {c.params}")


def oof_f1(splits, candidate, threshold: float) -> float:
    """The candidate's holdout F1 at another threshold (the search's out-of-fold one)."""
    from data_contracts.schemas import LABEL_INT
    from flows.training.train import evaluate

    y = splits.holdout[LABEL_INT].to_numpy()
    return evaluate(y, candidate.holdout_scores, threshold).f1


def table(name: str, data: Path, spec_path: Path) -> None:
    spec, splits = splits_of(data, spec_path)
    off, _ = timed(splits, spec, "off")
    quick, secs = timed(splits, spec, "quick")
    from data_contracts.schemas import LABEL_INT
    from flows.training.uncertainty import paired_f1_bootstrap

    w = quick.search.winner
    y = splits.holdout[LABEL_INT].to_numpy()
    boot = paired_f1_bootstrap(
        y, quick.holdout_scores >= quick.threshold, off.holdout_scores >= off.threshold
    )
    print(f"{name:<14} rows {sum(map(len, (splits.train, splits.validation, splits.holdout))):>5}"
          f"  chosen {w.name:<11} CV AP {w.cv_ap_mean:.4f} +- {w.cv_ap_std:.4f}"
          f"  holdout F1 {quick.metrics.f1:.4f}, {boot.candidate_text()} (fixed hgb "
          f"{off.metrics.f1:.4f}; "
          f"difference {boot.difference_text()}, {int(y.sum())} positives)"
          f"  PR-AUC {quick.metrics.pr_auc:.4f} (fixed {off.metrics.pr_auc:.4f})"
          f"  {secs:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[200_000, 1_000_000])
    parser.add_argument("--no-tables", action="store_true", help="skip the real tables")
    args = parser.parse_args()
    if not args.no_tables:
        print("bring-your-own-data tables, search=quick vs the fixed model (off)")
        with tempfile.TemporaryDirectory() as tmp:
            table("breast-cancer", breast_cancer_csv(Path(tmp)), EXAMPLES / "breast_cancer.yaml")
        table("credit-risk", EXAMPLES / "credit_risk.csv", EXAMPLES / "credit_risk.yaml")
    for rows in args.sizes:
        synthetic(rows)


if __name__ == "__main__":
    main()
