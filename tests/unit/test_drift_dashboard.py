"""The Evidently dashboard: every check adds one point; a broken workspace never stops a check."""

from __future__ import annotations

from datetime import timedelta

from data_contracts.spec import default_spec
from flows.monitoring.dashboard import check_values, panels, record_check
from flows.monitoring.performance import RealizedPerformance
from tests.support.drift import result


def test_a_check_adds_its_figures_and_leaves_out_what_it_did_not_measure():
    values = check_values(result())
    assert values["drift_share"] > 0 and values["score_drift"] == 0.2585
    assert values["drift.amount"] == 0.4731
    assert not any(k.startswith("realized_") for k in values)  # no labels: no zero F1 either
    perf = RealizedPerformance(
        status="within limits", detail="d", coverage=0.4, f1=0.7, f1_low=0.6, f1_high=0.8,
        precision=0.75, recall=0.66,
    )  # fmt: skip
    labelled = check_values(result().model_copy(update={"performance": perf}))
    assert labelled["realized_f1"] == 0.7 and labelled["label_coverage"] == 0.4


def test_checks_become_points_of_one_project_with_its_panels(tmp_path):
    from evidently.ui.workspace import Workspace

    spec = default_spec()
    first = result()
    later = first.model_copy(update={"checked_at": first.checked_at + timedelta(days=1)})
    project = record_check(first, spec.feature_names, tmp_path / "ws")
    assert record_check(later, spec.feature_names, tmp_path / "ws") == project
    workspace = Workspace(str(tmp_path / "ws"))
    (found,) = workspace.search_project("fraud-detector")
    assert str(found.id) == project
    assert len(workspace.list_runs(found.id)) == 2
    titles = {p.title for p in workspace.get_dashboard(found.id).panels}
    assert titles == {panel.title for panel in panels(spec.feature_names)}
