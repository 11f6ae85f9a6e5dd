"""Where a person reads the gate's intervals: the release artifact, version tags and metrics,
and the summary command."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_contracts.artifacts import (
    TAG_F1_VS_CHAMPION,
    TAG_HOLDOUT_F1,
    TAG_HOLDOUT_F1_INTERVAL,
    TAG_HOLDOUT_POSITIVES,
)
from data_contracts.schemas import LABEL_INT
from flows.cli.summary import evidence_lines
from flows.registry.tracking import evidence_metrics
from flows.registry.version_record import evidence_tags
from flows.training.gate import ChampionScore, GatePolicy, gate_release
from flows.training.onnx_export import ParityReport
from flows.training.reporting import release_markdown
from flows.training.train import evaluate

PARITY = ParityReport(rows=10, max_abs_diff=0.0, decision_flips=0, tolerance=1e-4, threshold=0.5)


def released(spec, with_champion: bool = True):
    rng = np.random.default_rng(0)
    rows = 3000
    y = (rng.random(rows) < 0.1).astype(np.int64)
    cand = np.where(rng.random(rows) < 0.9, y, 1 - y).astype(np.float64)
    champ = np.where(rng.random(rows) < 0.85, y, 1 - y).astype(np.float64)
    holdout = pd.DataFrame(
        {
            "channel": rng.choice(["pos", "ecommerce", "atm|x"], rows),
            "merchant_category": "grocery",
            "device_type": None,
            LABEL_INT: y,
        }
    )
    champion = (
        ChampionScore(
            version="4", spec_hash="s", f1=evaluate(y, champ, 0.5).f1, threshold=0.5, scores=champ
        )
        if with_champion
        else None
    )
    metrics = evaluate(y, cand, 0.5)
    policy = GatePolicy(max_slice_drop=0.5)
    return metrics, champion, gate_release(metrics, cand, PARITY, champion, holdout, spec, policy)


def test_the_release_artifact_shows_intervals_and_segments(spec):
    metrics, champion, decision = released(spec)
    md = release_markdown(model_name="m", decision=decision, metrics=metrics, champion=champion,
                          facts={"version": "5"})  # fmt: skip
    boot = decision.evidence.f1
    assert f"| F1 95% interval (estimate [low, high]) | {boot.candidate.text()} | " in md
    assert f"| F1 candidate minus champion | {boot.difference.text(signed=True)} |" in md
    assert "| channel=atm\\|x |" in md  # a '|' in a category does not break the table
    assert "| device_type=(missing) | 3,000 |" in md
    assert "| slices | yes |" in md


def test_version_tags_and_metrics_carry_the_intervals(spec):
    _, champion, decision = released(spec)
    tags = evidence_tags(decision, champion)
    boot = decision.evidence.f1
    assert tags[TAG_HOLDOUT_F1_INTERVAL] == (
        f"{boot.candidate.low:.4f} to {boot.candidate.high:.4f} (95%)"
    )
    assert tags[TAG_F1_VS_CHAMPION].endswith(" vs v4")
    assert tags[TAG_F1_VS_CHAMPION].startswith(f"{boot.difference.estimate:+.4f} (95% interval ")
    metrics = evidence_metrics(decision)
    assert metrics["f1_difference_low"] == boot.difference.low
    assert metrics["slice/channel/pos/champion_f1"] >= 0
    assert "slice/channel/atm_x/rows" in metrics

    _, _, first = released(spec, with_champion=False)
    assert TAG_F1_VS_CHAMPION not in evidence_tags(first, None)
    assert "f1_difference" not in evidence_metrics(first)


def test_the_summary_prints_the_interval_from_the_tags():
    lines = evidence_lines(
        {
            TAG_HOLDOUT_F1: "0.812345",
            TAG_HOLDOUT_F1_INTERVAL: "0.7811 to 0.8420 (95%)",
            TAG_HOLDOUT_POSITIVES: "135",
            TAG_F1_VS_CHAMPION: "+0.0120 (95% interval -0.0051 to +0.0290) vs v3",
        }
    )
    assert lines == [
        "holdout F1:        0.8123, interval 0.7811 to 0.8420 (95%), 135 positives",
        "vs champion:       +0.0120 (95% interval -0.0051 to +0.0290) vs v3",
        "calibration:       not recorded",
    ]
    assert evidence_lines({}) == []
    calibrated = evidence_lines(
        {TAG_HOLDOUT_F1: "0.8", "calibration": "isotonic (...)", "holdout_ece": "0.0017 [..]"}
    )
    assert calibrated[-1] == "calibration:       isotonic (...); holdout ECE 0.0017 [..]"


def test_the_run_result_carries_the_interval(spec):
    from flows.promotion.outcome import outcome_data

    metrics, champion, decision = released(spec)
    out = outcome_data(model_name="m", version="5", run_id="r", decision=decision,
                       holdout_f1=metrics.f1, champion=champion, refused=None,
                       unchanged=False)  # fmt: skip
    boot = decision.evidence.f1
    assert out["holdout_f1_interval"] == [boot.candidate.low, boot.candidate.high]
    assert out["f1_vs_champion"] == boot.difference_text()
