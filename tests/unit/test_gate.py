"""The release gate: holdout size, F1 floor, the champion's non-inferiority test, segments and
ONNX parity, decided from the same holdout rows scored by candidate and champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_contracts.schemas import LABEL_INT
from data_contracts.spec import parse_spec
from flows.training.gate import ChampionScore, GatePolicy, decide_promotion, gate_release
from flows.training.onnx_export import ParityReport
from flows.training.train import evaluate

POLICY = GatePolicy(f1_floor=0.6, parity_tolerance=1e-4)
GOOD_PARITY = ParityReport(rows=100, max_abs_diff=1e-7, decision_flips=0, tolerance=1e-4,
                           threshold=0.5)  # fmt: skip
SPEC = parse_spec(
    {
        "name": "gate-test",
        "id_column": "id",
        "label": {"name": "y", "positive": 1, "negative": 0},
        "features": [
            {"name": "channel", "kind": "categorical", "categories": ["pos", "web", "atm"]},
            {"name": "amount", "kind": "numeric"},
        ],
    }
)


def holdout_of(y: np.ndarray, channel: np.ndarray | None = None) -> pd.DataFrame:
    channel = channel if channel is not None else np.array(["pos"] * len(y))
    return pd.DataFrame({"id": np.arange(len(y)), "channel": channel, "amount": 1.0, LABEL_INT: y})


def labels(rows: int, positives: int) -> np.ndarray:
    y = np.zeros(rows, dtype=np.int64)
    y[:positives] = 1
    return y


def decisions(y: np.ndarray, caught: int, false_alarms: int, offset: int = 0) -> np.ndarray:
    """Flag ``caught`` positives (from positive ``offset`` on) and ``false_alarms`` negatives."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pred = np.zeros(len(y), dtype=np.float64)
    pred[np.roll(pos, -offset)[:caught]] = 1.0
    pred[neg[:false_alarms]] = 1.0
    return pred


def champion_of(y: np.ndarray, scores: np.ndarray, version: str = "3", **seen) -> ChampionScore:
    f1 = evaluate(y, scores, 0.5).f1
    return ChampionScore(version=version, spec_hash="abc", f1=f1, threshold=0.5, scores=scores,
                         **seen)  # fmt: skip


def judge(y, cand, champ=None, policy=POLICY, parity=GOOD_PARITY, holdout=None):
    holdout = holdout if holdout is not None else holdout_of(y)
    return gate_release(evaluate(y, cand, 0.5), cand, parity, champ, holdout, SPEC, policy)


def check(decision, name):
    return next(c for c in decision.checks if c.name == name)


Y = labels(4000, 400)


def test_first_candidate_above_floor_is_promoted_with_its_interval():
    d = judge(Y, decisions(Y, 340, 40))
    assert d.promote and d.reasons == []
    assert check(d, "champion").detail == "no champion yet"
    boot = d.evidence.f1
    assert boot.candidate.low < boot.candidate.estimate < boot.candidate.high
    assert "95% interval" in check(d, "f1_floor").detail


def test_below_floor_is_blocked_with_the_numbers():
    d = judge(Y, decisions(Y, 160, 40))
    assert not d.promote
    assert d.reasons[0].startswith("f1_floor: holdout F1 0.5333 (95% interval 0.4846 to 0.5800)")
    assert "vs floor 0.6000, judged on the estimate" in d.reasons[0]


def test_clearly_better_candidate_is_promoted_and_named_so():
    d = judge(Y, decisions(Y, 340, 40), champion_of(Y, decisions(Y, 280, 60)))
    assert d.promote
    detail = check(d, "champion").detail
    assert "a clear improvement" in detail and "rule non_inferior" in detail
    assert d.evidence.f1.difference.low > 0


def test_clearly_worse_candidate_is_refused_and_named_so():
    d = judge(Y, decisions(Y, 280, 60), champion_of(Y, decisions(Y, 340, 40)))
    assert not d.promote
    assert d.reasons[0].startswith("champion: F1 candidate minus champion v3: -")
    assert "a clear regression" in d.reasons[0]
    assert d.evidence.f1.difference.high < 0


def test_a_tie_inside_the_noise_is_called_a_tie_and_the_rule_decides():
    # the two models catch the same number of positives, 6 of them different ones
    cand, champ = decisions(Y, 330, 40, offset=6), decisions(Y, 330, 40)
    tie = judge(Y, cand, champion_of(Y, champ))
    diff = tie.evidence.f1.difference
    assert diff.estimate == 0 and diff.low < 0 < diff.high
    assert "a tie within the noise" in check(tie, "champion").detail
    assert tie.promote  # non-inferiority (default): the interval rules out a drop > 0.02
    assert "so ties within the tolerance pass: lower bound" in check(tie, "champion").detail

    superior = POLICY.model_copy(update={"champion_rule": "superior"})
    strict = judge(Y, cand, champion_of(Y, champ), superior)
    assert not strict.promote
    assert (
        "a tie within the noise" in strict.reasons[0]
        and "so ties are blocked: lower bound" in strict.reasons[0]
    )


def test_a_tie_on_a_noisy_holdout_cannot_show_non_inferiority():
    y = labels(2000, 60)
    cand, champ = decisions(y, 50, 5, offset=10), decisions(y, 50, 5)
    d = judge(y, cand, champion_of(y, champ))
    assert not d.promote
    assert "a tie within the noise" in d.reasons[0]
    assert "< -0.0200" in d.reasons[0]
    lenient = POLICY.model_copy(update={"champion_rule": "not_clearly_worse"})
    assert judge(y, cand, champion_of(y, champ), lenient).promote


def test_an_identical_retrain_is_a_tie_with_no_noise():
    pred = decisions(Y, 330, 40)
    d = judge(Y, pred, champion_of(Y, pred.copy()))
    diff = d.evidence.f1.difference
    assert (diff.estimate, diff.low, diff.high) == (0, 0, 0)
    assert d.promote


def test_too_small_a_holdout_blocks_with_its_reason_unless_allowed():
    y = labels(1500, 30)
    pred = decisions(y, 27, 2)
    d = judge(y, pred)
    assert not d.promote
    assert d.reasons == [
        d.reasons[0]
    ] and d.reasons[0].startswith("holdout_size: only 30 positives in 1,500 holdout rows, fewer "
                                  "than the 50 needed to judge F1")  # fmt: skip
    allowed = judge(y, pred, policy=POLICY.model_copy(update={"allow_small_holdout": True}))
    assert allowed.promote
    assert "judged anyway" in check(allowed, "holdout_size").detail


def test_floor_can_be_judged_on_the_lower_bound():
    y = labels(3000, 120)
    pred = decisions(y, 75, 20)  # F1 about 0.70, interval reaching below 0.66
    policy = POLICY.model_copy(update={"f1_floor": 0.66})
    assert judge(y, pred, policy=policy).promote
    strict = judge(y, pred, policy=policy.model_copy(update={"floor_on": "lower_bound"}))
    assert not strict.promote
    assert "judged on the interval's lower bound" in strict.reasons[0]


def test_champion_that_cannot_be_scored_blocks():
    champ = ChampionScore(version="3", spec_hash="abc", f1=None, note="spec changed")
    d = judge(Y, decisions(Y, 340, 40), champ)
    assert not d.promote and "could not be scored" in d.reasons[0]


def test_a_scored_champion_without_scores_is_a_programming_error():
    pred = decisions(Y, 340, 40)
    boot = judge(Y, pred).evidence
    champ = ChampionScore(version="3", spec_hash="abc", f1=0.8, threshold=0.5)
    with pytest.raises(ValueError, match="no holdout scores"):
        decide_promotion(evaluate(Y, pred, 0.5), GOOD_PARITY, champ, POLICY, boot)


@pytest.mark.parametrize(("diff", "flips"), [(2e-4, 0), (1e-6, 1)])
def test_parity_failure_blocks(diff, flips):
    parity = ParityReport(rows=100, max_abs_diff=diff, decision_flips=flips, tolerance=1e-4,
                          threshold=0.5)  # fmt: skip
    d = judge(Y, decisions(Y, 340, 40), parity=parity)
    assert not d.promote
    assert d.reasons[0].startswith("onnx_parity:")


def test_every_failed_check_is_listed():
    parity = ParityReport(rows=1, max_abs_diff=1.0, decision_flips=1, tolerance=1e-4,
                          threshold=0.5)  # fmt: skip
    y = labels(1000, 40)
    d = judge(y, decisions(y, 5, 30), champion_of(y, decisions(y, 38, 2)), parity=parity)
    # hard 0/1 scores that are mostly wrong are also clearly worse calibrated
    assert [r.split(":")[0] for r in d.reasons] == [
        "holdout_size", "f1_floor", "champion", "calibration", "onnx_parity"
    ]  # fmt: skip


def segments_case(candidate_misses_on: str):
    """Three channels: pos and web large (200 and 150 positives), atm tiny (5 positives).
    The champion catches 90% everywhere; the candidate catches half on one channel."""
    sizes = {"pos": (3000, 200), "web": (2000, 150), "atm": (300, 5)}
    channel, y, champ, cand = [], [], [], []
    for name, (rows, pos) in sizes.items():
        yy = labels(rows, pos)
        caught = int(pos * 0.9)
        channel += [name] * rows
        y.append(yy)
        champ.append(decisions(yy, caught, 10))
        cand.append(decisions(yy, pos // 2 if name == candidate_misses_on else caught, 10))
    y_all = np.concatenate(y)
    return y_all, np.concatenate(cand), np.concatenate(champ), holdout_of(y_all, np.array(channel))


SLICED = POLICY.model_copy(
    update={
        "max_slice_drop": 0.1,
        "min_slice_positives": 30,
        "champion_rule": "not_clearly_worse",
        "champion_tolerance": 0.2,
    }
)


def test_slice_check_blocks_a_candidate_much_worse_on_one_big_segment():
    y, cand, champ, holdout = segments_case("web")
    d = judge(y, cand, champion_of(y, champ), SLICED, holdout=holdout)
    assert check(d, "champion").passed  # overall it is close enough: only the segment shows it
    assert not d.promote
    reason = d.reasons[0]
    assert reason.startswith("slices: worse than the champion by more than 0.1000 on channel=web")
    assert "too small to judge (< 30 positives): channel=atm" in reason
    web = next(s for s in d.evidence.slices.segments if s.value == "web")
    assert (web.rows, web.positives, web.judged) == (2000, 150, True)


def test_slice_check_ignores_a_tiny_segment():
    y, cand, champ, holdout = segments_case("atm")
    d = judge(y, cand, champion_of(y, champ), SLICED, holdout=holdout)
    assert d.promote, d.reasons
    assert (
        "2 segments judged, none more than 0.1000 below the champion" in check(d, "slices").detail
    )
    assert "channel=atm" in check(d, "slices").detail
    atm = next(s for s in d.evidence.slices.segments if s.value == "atm")
    assert not atm.judged and atm.drop > 0.1


def test_segments_are_reported_without_the_check_by_default():
    y, cand, champ, holdout = segments_case("web")
    d = judge(y, cand, champion_of(y, champ), POLICY.model_copy(update={"champion_tolerance": 0.2}),
              holdout=holdout)  # fmt: skip
    assert "slices" not in {c.name for c in d.checks}
    assert {s.label for s in d.evidence.slices.segments} == {"channel=pos", "channel=web",
                                                              "channel=atm"}  # fmt: skip


def test_an_unknown_slice_feature_is_named():
    policy = POLICY.model_copy(update={"slice_features": ("chanel",)})
    with pytest.raises(ValueError, match="slice_features: 'chanel' is not a feature of spec"):
        judge(Y, decisions(Y, 340, 40), policy=policy)


def test_champion_score_keeps_its_scores_out_of_json():
    champ = champion_of(Y, decisions(Y, 340, 40))
    assert "scores" not in champ.model_dump_json()
    assert champ.decisions.sum() == 380


def test_promotion_refused_when_the_champion_moved():
    from flows.promotion.champion import ChampionMoved, check_champion_unchanged

    check_champion_unchanged("3", "3", "5")
    check_champion_unchanged(None, None, "1")
    with pytest.raises(
        ChampionMoved, match="compared against champion v3, but the champion is now v4"
    ):
        check_champion_unchanged("4", "3", "5")
    with pytest.raises(ChampionMoved, match=r"compared against champion \(none\)"):
        check_champion_unchanged("1", None, "2")


def memorising_champion(y: np.ndarray, cand: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """A champion as good as the candidate, except perfect on the rows it trained on."""
    champ = cand.copy()
    champ[seen] = y[seen]
    return champ


def test_rows_the_champion_learned_from_are_left_out_of_the_comparison():
    seen = np.zeros(len(Y), dtype=bool)
    seen[::2] = True
    cand = decisions(Y, 330, 40)
    champ = memorising_champion(Y, cand, seen)
    # compared on every row, the rows it memorised make the champion look clearly better
    naive = judge(Y, cand, champion_of(Y, champ))
    assert not naive.promote and "a clear regression" in naive.reasons[0]
    assert "which of them champion v3 learned from is unknown" in naive.reasons[0]

    basis = "its hash holdout by 'id' leaves 2,000 of these rows outside it"
    fair = judge(Y, cand, champion_of(Y, champ, seen=seen, overlap=basis))
    assert fair.promote
    detail = check(fair, "champion").detail
    assert "compared on the 2,000 of 4,000 holdout rows champion v3 never learned from" in detail
    assert basis in detail
    compared = fair.evidence.comparison
    assert compared.rows == 2000 and compared.positives == 200
    assert (compared.difference.low, compared.difference.high) == (0, 0)
    assert fair.evidence.paired is compared
    # the floor still judges every row; the segments compare on the same rows as the check
    assert fair.evidence.f1.rows == 4000 and fair.evidence.f1.champion is None
    assert sum(s.rows for s in fair.evidence.slices.segments) == 2000
    metrics = fair.evidence.metrics()
    assert metrics["champion_compared_rows"] == 2000
    assert metrics["champion_seen_holdout_rows"] == 2000
    assert metrics["f1_difference"] == 0 and metrics["holdout_positives"] == 400


def test_too_few_unseen_positives_compare_every_row_and_say_the_champion_is_favoured():
    seen = np.ones(len(Y), dtype=bool)
    seen[np.flatnonzero(Y == 1)[:20]] = False  # 20 positives left, fewer than the 50 needed
    cand = decisions(Y, 330, 40)
    d = judge(Y, cand, champion_of(Y, memorising_champion(Y, cand, seen), seen=seen,
                                   overlap="its time holdout began at ..."))  # fmt: skip
    assert d.evidence.comparison is None and d.evidence.paired is d.evidence.f1
    assert not d.promote
    assert "so the champion is favoured" in d.reasons[0]
    assert "hold 20 positives, fewer than the 50 needed to judge" in d.reasons[0]
    allowed = POLICY.model_copy(update={"allow_small_holdout": True})
    small = judge(Y, cand, champion_of(Y, memorising_champion(Y, cand, seen), seen=seen),
                  policy=allowed)  # fmt: skip
    assert small.evidence.comparison.positives == 20


def test_a_champion_known_to_have_seen_none_of_the_holdout_is_compared_on_every_row():
    pred = decisions(Y, 330, 40)
    none_seen = np.zeros(len(Y), dtype=bool)
    d = judge(Y, pred, champion_of(Y, pred.copy(), seen=none_seen))
    assert d.promote and d.evidence.comparison is None
    assert d.evidence.metrics()["champion_seen_holdout_rows"] == 0
    assert "all 4,000 holdout rows, none of which champion v3 learned from" in (
        check(d, "champion").detail
    )
