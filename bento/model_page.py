"""What the served model is: ``GET /model`` (JSON) and the page at ``/`` (HTML).

Both say which model answers now (name, version, tag, sha256, spec hash, threshold), how it
scored on its release's holdout, its pinned features (name, kind, range or categories) and
where it came from (MLflow run, git commit, data digest); with following on, also the last swap
or refusal (:mod:`bento.follow`). BentoML's own Swagger page moves to ``/docs``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

from bento.runtime import ModelRuntime
from data_contracts.artifacts import LABEL_CALIBRATION
from data_contracts.spec import FeatureKind

HOLDOUT_ORDER = ("f1", "precision", "recall", "pr_auc", "roc_auc", "brier", "ece")
# the page's line about fraud_probability when the stored model says nothing of calibration
UNCALIBRATED = (
    "not calibrated: a class-weighted score, higher than the fraud rate it stands for "
    "(this version was registered before releases calibrated)"
)


def calibration_text(labels: Mapping[str, str]) -> str:
    """How ``fraud_probability`` was calibrated, from the stored model's labels."""
    text = labels.get(LABEL_CALIBRATION, "")
    if not text or text == "none":
        return UNCALIBRATED
    return text


def describe_runtime(runtime: ModelRuntime) -> dict[str, Any]:
    """The served model as JSON-ready data."""
    labels = dict(runtime.labels)
    features = []
    for f in runtime.spec.features:
        entry: dict[str, Any] = {"name": f.name, "kind": f.kind.value, "nullable": f.nullable}
        if f.kind == FeatureKind.CATEGORICAL:
            entry["categories"] = list(f.categories or ())
        elif f.kind != FeatureKind.BOOLEAN:
            entry["min"], entry["max"] = f.min, f.max
        if f.description:
            entry["description"] = f.description
        features.append(entry)
    return {
        "name": labels.get("model_name") or runtime.tag.partition(":")[0],
        "version": runtime.model_version,
        "tag": runtime.tag,
        "sha256": runtime.sha256,
        "spec_hash": runtime.spec_hash,
        "threshold": runtime.threshold,
        "calibration": calibration_text(labels),
        "holdout": dict(runtime.holdout),
        "features": features,
        "source": {
            "mlflow_run": labels.get("run_id", "unknown"),
            "git_commit": labels.get("git_commit", "unknown"),
            "data_digest": labels.get("data_digest", "unknown"),
        },
    }


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)


def _feature_rows(features: list[Mapping[str, Any]]) -> str:
    out = []
    for f in features:
        if "categories" in f:
            allowed = ", ".join(str(c) for c in f["categories"])
        elif "min" in f:
            lo = "-inf" if f["min"] is None else f"{f['min']:g}"
            hi = "+inf" if f["max"] is None else f"{f['max']:g}"
            allowed = f"{lo} to {hi}"
        else:
            allowed = "true / false"
        nullable = "yes" if f.get("nullable") else "no"
        cells = (f["name"], f["kind"], allowed, nullable, f.get("description", ""))
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "".join(out)


def _holdout_rows(holdout: Mapping[str, float]) -> str:
    if not holdout:
        return "<p>No holdout metrics were recorded with this model.</p>"
    keys = [k for k in HOLDOUT_ORDER if k in holdout] + sorted(set(holdout) - set(HOLDOUT_ORDER))
    return "<table>" + _rows([(k, f"{holdout[k]:.4f}") for k in keys]) + "</table>"


def _follow_text(follow: Mapping[str, Any] | None) -> str:
    if not follow:
        return ""
    if not follow.get("following"):
        state = f"not following the champion (FRAUD_FOLLOW_CHAMPION={follow.get('mode')})"
    else:
        state = f"following the champion pointer every {follow.get('interval_s')} s"
    parts = [f"<p>{html.escape(state)}; swaps so far: {int(follow.get('swaps', 0))}.</p>"]
    swap = follow.get("last_swap")
    if swap:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(swap["at"]))
        parts.append(
            f"<p>Last swap: {html.escape(str(swap['from']))} &rarr; "
            f"{html.escape(str(swap['to']))} at {when}.</p>"
        )
    refused = follow.get("refused")
    if refused:
        parts.append(
            f'<p class="refused">Refused {html.escape(str(refused["tag"]))} '
            f"({html.escape(str(refused['reason']))}): {html.escape(str(refused['detail']))}</p>"
        )
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}code{font-size:.9em}
.refused{color:#a00;font-weight:600}nav a{margin-right:1rem}
"""


def render_page(card: Mapping[str, Any]) -> str:
    """The model page: identity, holdout metrics, features, provenance and following."""
    source = card.get("source", {})
    identity = _rows(
        [
            ("version", str(card["version"])),
            ("store tag", str(card["tag"])),
            ("decision threshold", f"{card['threshold']:.6g}"),
            ("fraud_probability calibrated", str(card.get("calibration") or UNCALIBRATED)),
            ("ONNX sha256", str(card["sha256"])),
            ("feature spec hash", str(card["spec_hash"])),
            ("MLflow run", str(source.get("mlflow_run", "unknown"))),
            ("git commit", str(source.get("git_commit", "unknown"))),
            ("training data digest", str(source.get("data_digest", "unknown"))),
        ]
    )
    name = html.escape(str(card["name"]))
    version = html.escape(str(card["version"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name} v{version}</title>
<style>{_STYLE}</style></head><body>
<h1>{name}</h1>
<p class="sub">version {version}, served now</p>
<nav><a href="./docs">API (Swagger)</a><a href="./model">this page as JSON</a>
<a href="./metrics">metrics</a><a href="./readyz">readiness</a></nav>
<h2>Model</h2><table>{identity}</table>
<h2>Holdout metrics</h2>{_holdout_rows(card.get("holdout") or {})}
<h2>Features (pinned order)</h2>
<table><tr><th>name</th><th>kind</th><th>allowed</th><th>nullable</th><th>description</th></tr>
{_feature_rows(card.get("features") or [])}</table>
<h2>Champion following</h2>{_follow_text(card.get("follow")) or "<p>not reported</p>"}
<p>Score with <code>POST /predict</code> (one transaction) or <code>POST /predict_batch</code>
(<code>{{"records": [...]}}</code>).</p>
</body></html>
"""


def loading_page() -> str:
    """The page while no model is bound yet (start-up)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>loading</title></head>"
        "<body><p>The model is being loaded and verified; see <a href='./readyz'>/readyz</a>."
        "</p></body></html>"
    )
