"""What a registered version says about itself: its identity key (a rerun maps to the version
it registered before), its tags (gate outcome, evidence, split, provenance) and the registry's
descriptions, all derived from the release's :class:`~flows.registry.tracking.ReleaseRecord`.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from data_contracts.artifacts import (
    TAG_CALIBRATION,
    TAG_ECE,
    TAG_F1_VS_CHAMPION,
    TAG_F1_VS_CHAMPION_ROWS,
    TAG_HOLDOUT_F1,
    TAG_HOLDOUT_F1_INTERVAL,
    TAG_HOLDOUT_POSITIVES,
)
from flows.registry import registry
from flows.registry.tracking import ReleaseRecord
from flows.training.gate import ChampionScore, Decision
from flows.training.search import searched_params


def evidence_tags(decision: Decision, champion: ChampionScore | None) -> dict[str, str]:
    """Version tags stating the holdout F1 interval and the difference to the champion."""
    if decision.evidence is None:
        return {}
    evidence = decision.evidence
    boot = evidence.f1
    tags = {
        TAG_HOLDOUT_F1_INTERVAL: boot.candidate_text(),
        TAG_HOLDOUT_POSITIVES: str(boot.positives),
    }
    difference = evidence.paired.difference_text()
    if difference is not None and champion is not None:
        tags[TAG_F1_VS_CHAMPION] = f"{difference} vs v{champion.version}"
        tags[TAG_F1_VS_CHAMPION_ROWS] = evidence.compared
    if evidence.probability is not None:
        tags[TAG_ECE] = evidence.probability.calibration.candidate.ece.text()
    return tags


def release_key(record: ReleaseRecord) -> str:
    """Identity of a candidate: what it was trained from (data digest, spec, hyper-parameters,
    split sizes), the gate policy it faces and what the fitted model does (its holdout scores
    and threshold).

    A rerun of the same release maps to the version it registered before. Neither the ONNX
    bytes (the converter's node order varies with Python's string hashing) nor the git commit
    (an unrelated commit does not change the model) are part of the key.
    """
    scores = np.round(np.asarray(record.candidate.holdout_scores, dtype=np.float64), 6)
    parts = {
        "data_digest": record.data_digest,
        "spec_hash": record.spec.spec_hash(),
        "params": record.params.model_dump(mode="json"),
        "splits": record.splits_sizes,
        "policy": record.policy.model_dump(mode="json"),
        "threshold": f"{record.candidate.threshold:.9f}",
        "holdout_scores": hashlib.sha256(scores.tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def version_tags(record: ReleaseRecord, run_id: str) -> dict[str, str]:
    """Tags that make a registered version self-describing (including why it was blocked)."""
    return {
        registry.KEY_TAG: release_key(record),
        "gate.outcome": record.decision.outcome,
        "gate.reasons": "; ".join(record.decision.reasons) or "all checks passed",
        TAG_HOLDOUT_F1: f"{record.candidate.metrics.f1:.6f}",
        **evidence_tags(record.decision, record.champion),
        "threshold": repr(record.candidate.threshold),
        "threshold.objective": record.candidate.objective,
        TAG_CALIBRATION: record.candidate.calibration_text(),
        "model.family": record.params.classifier,
        "search.preset": record.candidate.search.settings.preset
        if record.candidate.search
        else "off",
        "onnx_sha256": record.exported.sha256,
        "feature_spec_hash": record.spec.spec_hash(),
        "data_digest": record.data_digest,
        "git_commit": record.git_commit,
        "run_id": run_id,
        # the split it was judged on: a later candidate can tell whether this version was trained
        # on rows of its holdout (a hash-split champion against a time holdout)
        **record.split_tags,
    }


def descriptions(record: ReleaseRecord) -> tuple[str, str]:
    """What the registry says about the model and about this version, in plain words."""
    spec, m, params = record.spec, record.candidate.metrics, record.params
    model = (
        f"{spec.description or spec.name}\n\nBinary classifier of `{spec.label.name}` "
        f"(positive: {spec.label.positive!r}) on {len(spec.features)} features of spec "
        f"{spec.name} v{spec.version}, served as ONNX; the `champion` alias marks the version "
        "in service. Each version's description says how it was chosen and how it scored."
    )
    search = record.candidate.search
    goal = "F1" if record.candidate.objective == "f1" else "least expected cost"
    if search is not None:
        chosen = (
            f"Chosen by model search (preset {search.settings.preset}): {search.winner.name} "
            f"ranked first of {len(search.ranking)} candidates by {search.folds_kind} "
            f"cross-validated average precision {search.winner.cv_ap_mean:.4f} "
            f"± {search.winner.cv_ap_std:.4f}; threshold tuned for {goal} on "
            f"{record.candidate.threshold_from}."
        )
    else:
        chosen = f"Fixed model (no search); threshold tuned for {goal} on the validation split."
    hp = ", ".join(f"{k}={v}" for k, v in searched_params(params).items())
    version = (
        f"{params.classifier} ({hp}). {chosen} Holdout ({m.rows:,} rows, {m.positives:,} "
        f"positives): F1 {m.f1:.4f}, precision {m.precision:.4f}, recall {m.recall:.4f}, "
        f"PR-AUC {m.pr_auc:.4f} at threshold {m.threshold:.4f}{_calibration_text(record)}. "
        f"Gate: {record.decision.outcome}"
        f" ({'; '.join(record.decision.reasons) or 'all checks passed'}). Data digest "
        f"{record.data_digest}, commit {record.git_commit}."
    )
    return model, version


def _calibration_text(record: ReleaseRecord) -> str:
    """``; scores calibrated: isotonic ..., holdout ECE 0.0016, Brier 0.00489``."""
    text = f"; scores calibrated: {record.candidate.calibration_text()}"
    evidence = record.decision.evidence
    if evidence is not None and evidence.probability is not None:
        q = evidence.probability.calibration.candidate
        text += f"; holdout ECE {q.ece.estimate:.4f}, Brier {q.brier.estimate:.5f}"
    return text
