import pytest

from flows.training.gate import ChampionScore, GatePolicy, decide_promotion
from flows.training.onnx_export import ParityReport
from flows.training.train import Metrics

POLICY = GatePolicy(f1_floor=0.6, champion_tolerance=0.01, parity_tolerance=1e-4)
GOOD_PARITY = ParityReport(rows=100, max_abs_diff=1e-7, decision_flips=0, tolerance=1e-4,
                           threshold=0.5)  # fmt: skip


def metrics(f1: float) -> Metrics:
    return Metrics(f1=f1, precision=f1, recall=f1, pr_auc=f1, roc_auc=0.9, threshold=0.5,
                   rows=100, positives=10, tn=80, fp=5, fn=5, tp=10)  # fmt: skip


def champion(f1: float | None) -> ChampionScore:
    return ChampionScore(version="3", spec_hash="abc", f1=f1, note="spec changed")


def test_first_candidate_above_floor_is_promoted():
    d = decide_promotion(metrics(0.8), GOOD_PARITY, None, POLICY)
    assert d.promote and d.reasons == []


def test_below_floor_is_blocked_with_the_numbers():
    d = decide_promotion(metrics(0.5), GOOD_PARITY, None, POLICY)
    assert not d.promote
    assert d.reasons == ["f1_floor: holdout F1 0.5000 vs floor 0.6000"]


@pytest.mark.parametrize(("cand", "champ", "promote"), [(0.80, 0.80, True), (0.791, 0.80, True),
                         (0.789, 0.80, False), (0.90, 0.80, True)])  # fmt: skip
def test_champion_comparison_with_tolerance(cand, champ, promote):
    d = decide_promotion(metrics(cand), GOOD_PARITY, champion(champ), POLICY)
    assert d.promote is promote
    if not promote:
        assert "champion v3 0.8000 - tolerance 0.0100 = 0.7900" in d.reasons[0]


def test_champion_that_cannot_be_scored_blocks():
    d = decide_promotion(metrics(0.9), GOOD_PARITY, champion(None), POLICY)
    assert not d.promote and "could not be scored" in d.reasons[0]


@pytest.mark.parametrize(("diff", "flips"), [(2e-4, 0), (1e-6, 1)])
def test_parity_failure_blocks(diff, flips):
    parity = ParityReport(rows=100, max_abs_diff=diff, decision_flips=flips, tolerance=1e-4,
                          threshold=0.5)  # fmt: skip
    d = decide_promotion(metrics(0.9), parity, None, POLICY)
    assert not d.promote
    assert d.reasons[0].startswith("onnx_parity:")


def test_every_failed_check_is_listed():
    parity = ParityReport(rows=1, max_abs_diff=1.0, decision_flips=1, tolerance=1e-4,
                          threshold=0.5)  # fmt: skip
    d = decide_promotion(metrics(0.1), parity, champion(0.9), POLICY)
    assert [r.split(":")[0] for r in d.reasons] == ["f1_floor", "champion", "onnx_parity"]


def test_promotion_refused_when_the_champion_moved():
    from flows.delivery.champion import ChampionMoved, check_champion_unchanged

    check_champion_unchanged("3", "3", "5")
    check_champion_unchanged(None, None, "1")
    with pytest.raises(
        ChampionMoved, match="compared against champion v3, but the champion is now v4"
    ):
        check_champion_unchanged("4", "3", "5")
    with pytest.raises(ChampionMoved, match=r"compared against champion \(none\)"):
        check_champion_unchanged("1", None, "2")
