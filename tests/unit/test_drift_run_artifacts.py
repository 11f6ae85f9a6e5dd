"""What the drift-check run shows in Prefect (summary with the deciding signal, per-column table,
links) and the history of recent checks read back from the MLflow monitoring runs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows.core.settings import Settings
from flows.monitoring import run_artifacts
from flows.monitoring.history import recent_checks, with_current
from flows.monitoring.reports import log_monitoring_run, mlflow_run_url
from flows.monitoring.results import decided_by, links, signals
from flows.monitoring.run_artifacts import column_table, result_markdown
from flows.monitoring.verdict import DriftPolicy, not_enough_data
from tests.support.drift import result

SECRET = "s3cr3t-pa55"


def linked(**update):
    return result().model_copy(update={
        "mlflow_run_url": "http://127.0.0.1:5000/#/runs/run-42",
        "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/d1",
        "release_run_url": "http://127.0.0.1:4200/runs/flow-run/0f6b1c2d",
        **update,
    })  # fmt: skip


def test_signals_say_which_one_decided_and_keep_a_slot_for_realized_performance():
    both = result()
    assert [(s.name, s.status) for s in signals(both)] == [
        ("input drift", "decided"), ("score drift", "decided"),
        ("realized performance", "not measured")]  # fmt: skip
    assert decided_by(both) == "input drift and score drift"
    score_only = both.model_copy(update={"policy": DriftPolicy(drift_share=0.9)})
    assert decided_by(score_only) == "score drift"
    assert signals(score_only)[0].detail == "2 of 3 features drifted (67% < 90%)"
    assert decided_by(result(drifted=False, triggered=False)).startswith("nothing: every signal")
    short = both.model_copy(update={"verdict": not_enough_data(12, DriftPolicy())})
    assert {s.status for s in signals(short)[:2]} == {"not judged"}


def test_markdown_summary_leads_with_the_deciding_signal_and_links():
    md = result_markdown(linked())
    lines = md.splitlines()
    assert lines[0].startswith("## fraud-detector v3: DRIFT")
    assert lines[2] == "**Decided by: input drift and score drift.**"
    assert "| realized performance | not measured |" in md
    assert "- [MLflow run run-42](http://127.0.0.1:5000/#/runs/run-42)" in md
    assert "(http://127.0.0.1:4200/runs/flow-run/0f6b1c2d)" in md


def test_column_table_has_every_column_drifted_first():
    rows = column_table(result())
    assert [r["column"] for r in rows] == ["amount", "merchant_category", "score", "channel"]
    assert rows[0] == {
        "column": "amount", "kind": "numeric", "test": "Wasserstein distance (normed)",
        "statistic": 0.4731, "threshold": 0.1, "drifted": True, "p_value": 0.0,
        "p_value_test": "KS", "noise_floor": 0.012, "what_changed": "median 56.87 → 103.1",
    }  # fmt: skip


def test_links_are_those_the_check_has_and_are_scrubbed():
    found = links(linked())
    assert [link.key for link in found] == [
        "drift-report", "drift-mlflow-run", "drift-check-run", "drift-release-run"]  # fmt: skip
    assert found[0].url == "file:///h/drift_reports/x/drift_report.html"
    assert "make mlflow-ui" in found[1].note and "brisk-heron" in found[3].text
    bare = links(result().model_copy(update={"report_html": None}))
    assert bare == []
    leaky = links(linked(mlflow_run_url=f"https://u:{SECRET}@mlflow.internal/#/runs/r"), [SECRET])
    assert leaky[1].url == "https://***@mlflow.internal/#/runs/r"
    assert SECRET not in result_markdown(linked(problems=[f"token {SECRET}"]), [SECRET])


def test_mlflow_run_url_follows_the_tracking_server(tmp_path):
    assert mlflow_run_url(Settings(home=tmp_path), "r1") == "http://127.0.0.1:5000/#/runs/r1"
    remote = Settings(home=tmp_path, mlflow_tracking_uri="http://mlflow:5000/")
    assert mlflow_run_url(remote, "r1") == "http://mlflow:5000/#/runs/r1"
    secured = Settings(home=tmp_path, mlflow_tracking_uri=f"https://ops:{SECRET}@mlflow.internal")
    assert mlflow_run_url(secured, "r1") == "https://***@mlflow.internal/#/runs/r1"
    db = Settings(home=tmp_path, mlflow_tracking_uri="postgresql://u:p@db/mlflow")
    assert mlflow_run_url(db, "r1") is None


def test_publish_creates_the_summary_table_and_link_artifacts(monkeypatch):
    made: list[tuple[str, dict]] = []
    for name in ("create_markdown_artifact", "create_table_artifact", "create_link_artifact"):
        monkeypatch.setattr(run_artifacts, name,
                            lambda name=name, **kw: made.append((name, kw)))  # fmt: skip
    run_artifacts.publish(linked())
    kinds = [name for name, _ in made]
    assert kinds == [
        "create_markdown_artifact",
        "create_table_artifact",
        *["create_link_artifact"] * 4,
    ]
    assert made[0][1]["key"] == "drift-check" and "Decided by" in made[0][1]["markdown"]
    assert made[1][1]["key"] == "drift-columns" and len(made[1][1]["table"]) == 4
    release = made[-1][1]
    assert release["key"] == "drift-release-run"
    assert release["link"] == "http://127.0.0.1:4200/runs/flow-run/0f6b1c2d"


def test_history_reads_this_models_checks_with_a_verdict_oldest_first(tmp_path):
    settings = Settings(home=tmp_path / "home")
    first = result(drifted=False, triggered=False)
    second = result().model_copy(update={"checked_at": first.checked_at + timedelta(hours=6)})
    short = first.model_copy(
        update={
            "verdict": not_enough_data(12, DriftPolicy()),
            "checked_at": first.checked_at + timedelta(hours=3),
        }
    )
    other = second.model_copy(update={"model_name": "other-model"})
    for checked in (second, short, first, other):  # logged out of order on purpose
        log_monitoring_run(settings, checked, {})
    points = recent_checks(settings, "fraud-detector")
    assert [p.checked_at for p in points] == [first.checked_at, second.checked_at]
    assert [p.outcome for p in points] == ["no drift", "drift"]
    assert points[1].values == {"drift_share": pytest.approx(2 / 3), "drift.score": 0.2585}
    now = second.model_copy(update={"checked_at": second.checked_at + timedelta(hours=6)})
    assert (
        len(with_current(points, now)) == 3 and with_current(points, now, limit=2)[0] == points[1]
    )
    assert with_current(points, short) == points  # not enough data: no point
    assert recent_checks(Settings(home=tmp_path / "empty"), "fraud-detector") == []
