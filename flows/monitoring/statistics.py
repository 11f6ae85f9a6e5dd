"""Statistics of our own beside Evidently's: p-values, readable shifts and the no-drift noise floor.

``statistic`` recomputes Evidently's effect sizes (normed Wasserstein distance, Jensen-Shannon
distance) so the noise floor, the same statistic between two disjoint reference samples of the
window's size, is measured with the same yardstick as the verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from flows.monitoring.verdict import ColumnDrift

WASSERSTEIN = "Wasserstein distance (normed)"
JENSEN_SHANNON = "Jensen-Shannon distance"


def _wasserstein_normed(ref: np.ndarray, cur: np.ndarray) -> float:
    norm = max(float(np.std(ref)), 0.001)
    return float(stats.wasserstein_distance(ref, cur) / norm)


def _shares(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(ref.unique()) | set(cur.unique()), key=str)
    r = ref.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=float) / len(ref)
    c = cur.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=float) / len(cur)
    return r, c


def statistic(method: str, ref: pd.Series, cur: pd.Series) -> float | None:
    """Evidently's statistic for ``method`` on non-null values (Wasserstein normed, JS)."""
    ref, cur = ref.dropna(), cur.dropna()
    if ref.empty or cur.empty:
        return None
    if method == WASSERSTEIN:
        return _wasserstein_normed(ref.to_numpy(float), cur.to_numpy(float))
    if method == JENSEN_SHANNON:
        if ref.nunique() > 20 and pd.api.types.is_numeric_dtype(ref):
            both = np.concatenate([ref.to_numpy(float), cur.to_numpy(float)])
            bins = np.histogram_bin_edges(both, bins="sturges")
            r = np.histogram(ref, bins)[0] / len(ref)
            c = np.histogram(cur, bins)[0] / len(cur)
        else:
            r, c = _shares(ref, cur)
        return float(distance.jensenshannon(r, c))
    return None


def p_value(kind: str, ref: pd.Series, cur: pd.Series) -> tuple[str, float | None]:
    """A classical test's p-value beside the effect size: KS for numbers, chi-squared otherwise.

    With tens of thousands of rows even negligible shifts are 'significant'; the decision is
    made on the effect size, the p-value says the shift is not chance.
    """
    if kind in ("categorical", "boolean"):
        r = ref.fillna("__missing__").astype(str)
        c = cur.fillna("__missing__").astype(str)
        keys = sorted(set(r.unique()) | set(c.unique()))
        table = np.vstack(
            [
                r.value_counts().reindex(keys, fill_value=0),
                c.value_counts().reindex(keys, fill_value=0),
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            return "chi-squared", None
        return "chi-squared", float(stats.chi2_contingency(table)[1])
    a, b = ref.dropna().to_numpy(float), cur.dropna().to_numpy(float)
    if len(a) == 0 or len(b) == 0:
        return "KS", None
    return "KS", float(stats.ks_2samp(a, b, method="asymp").pvalue)


def describe_shift(kind: str, ref: pd.Series, cur: pd.Series) -> str:
    """One readable line: median and missing share for numbers, the largest share change else."""
    ref_na, cur_na = float(ref.isna().mean()), float(cur.isna().mean())
    na = f"; missing {ref_na:.1%} → {cur_na:.1%}" if abs(cur_na - ref_na) >= 0.01 else ""
    if kind in ("categorical", "boolean"):
        r, c = ref.dropna().astype(str), cur.dropna().astype(str)
        if r.empty or c.empty:
            return f"no values on one side{na}"
        rs, cs = r.value_counts(normalize=True), c.value_counts(normalize=True)
        keys = rs.index.union(cs.index)
        delta = cs.reindex(keys, fill_value=0) - rs.reindex(keys, fill_value=0)
        top = str(delta.abs().idxmax())
        return f"{top}: {rs.get(top, 0):.1%} → {cs.get(top, 0):.1%}{na}"
    r, c = ref.dropna(), cur.dropna()
    if r.empty or c.empty:
        return f"no values on one side{na}"
    return f"median {r.median():,.4g} → {c.median():,.4g}{na}"


def noise_floor(
    reference: pd.DataFrame, window_size: int, results: list[ColumnDrift], seed: int
) -> dict[str, float]:
    """Each column's statistic between two disjoint reference samples, one of window size.

    That is the value the statistic takes with no drift at all at this window size: when it is
    near the threshold the window is too small for a trustworthy verdict.
    """
    n = len(reference)
    if n < 4:
        return {}
    size = min(window_size, n // 2)
    order = np.random.default_rng(seed + 1).permutation(n)
    a, b = reference.iloc[order[:size]], reference.iloc[order[size:]]
    out = {}
    for r in results:
        if r.column in reference.columns:
            value = statistic(r.method, a[r.column], b[r.column])
            if value is not None:
                out[r.column] = value
    return out
