"""Fraud changes while the inputs do not: realized performance on delayed labels retrains.

Real servers: Prefect server + worker, MLflow, `bentoml serve`, SMTP. train-and-release ->
`fraud traffic --feedback` sends transactions whose frauds follow a pattern the champion never
saw (inputs barely move) and writes their labels as the chargeback feed -> drift-check: the
served recall collapsed, the mail says "realized performance dropped", exactly one
train-and-release starts and its candidate passes the gates on the new labelled data. The
id-hash key never appears in the inference log, the reports, the logs or the mail.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_contracts.synthetic import DriftKnobs, GeneratorConfig, generate
from flows.registry import registry
from tests.integration.test_drift_loop import Bento, flow_runs, wait_for_rows, wait_terminal
from tests.support.drift import smtp_env

pytestmark = [pytest.mark.integration, pytest.mark.embedded_only]  # the drift loop covers prod
ROOT = Path(__file__).resolve().parents[2]
NEW_PATTERN = 0.9  # nine frauds in ten follow the unseen pattern


@pytest.fixture(scope="module")
def stack_extra_env(smtp, smtp_port: int) -> dict[str, str]:
    return smtp_env(smtp_port)


def files_under(root: Path) -> Iterator[Path]:
    yield from (p for p in root.rglob("*") if p.is_file())


def test_a_recall_collapse_without_input_drift_retrains_once(stack, smtp, tmp_path):
    home, env = stack.home, stack.env
    train = home / "data" / "train.parquet"
    train.parent.mkdir(parents=True, exist_ok=True)
    generate(GeneratorConfig(rows=40_000, seed=51)).to_parquet(train, index=False)
    run = stack.prefect(
        "deployment", "run", "train-and-release/fraud-detector", "--watch",
        "--param", f"data_path={train}", "--param", "build_image=false",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = registry.configure(stack.settings())
    first = client.get_model_version_by_alias("fraud-detector", "champion")
    holdout_f1 = client.get_run(first.run_id).data.metrics["holdout_f1"]

    # the labelled batch of the new period (retraining learns the pattern from it)
    labelled = home / "labelled" / "batch-001.parquet"
    labelled.parent.mkdir(parents=True, exist_ok=True)
    new_world = DriftKnobs(start_day=60, new_fraud_pattern=NEW_PATTERN)
    generate(GeneratorConfig(rows=40_000, seed=53, drift=new_world)).to_parquet(labelled)

    bento = Bento(env, tmp_path / "bento.log")
    try:
        sent = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "fraud"), "traffic", "--url", bento.base,
             "--rows", "5000", "--seed", "52", "--new-fraud-pattern", str(NEW_PATTERN),
             "--feedback"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
        assert "labels of the 5,000 transactions" in sent.stdout
        wait_for_rows(home, 5000)
    finally:
        bento.stop()

    check = stack.prefect(
        "deployment", "run", "drift-check/fraud-detector", "--watch",
        "--param", 'window={"rows": 5000}',
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    mails = smtp.messages()
    assert len(mails) == 1, [m["Subject"] for m in mails]
    subject = mails[0]["Subject"]
    assert "realized performance dropped" in subject.lower(), subject
    assert f"holdout {holdout_f1:.3f}" in subject
    text = mails[0].get_body(("plain",)).get_content()
    assert "realized performance: decided" in text, text[:3000]
    assert "100.0%" in text  # every scored transaction has its label: the hashes met

    # exactly one retraining, and its candidate passes the gates on the new labelled data
    runs = wait_terminal(stack, "train-and-release", 2)
    assert len(runs) == 2 and runs[1]["state"]["type"] == "COMPLETED", runs[1]["state"]
    assert "drift-triggered" in runs[1]["tags"]
    newest = max(
        client.search_model_versions("name = 'fraud-detector'"), key=lambda v: int(v.version)
    )
    assert newest.tags["gate.outcome"] == "promote", newest.tags
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    assert str(champion.version) == str(newest.version)
    assert len(flow_runs(stack, "train-and-release")) == 2

    # the key hashed every id, and it is nowhere a reader could find it
    key = (home / "secrets" / "id-hash.key").read_text().strip()
    assert len(key) == 64
    raw_mail = b"".join(e.original_content for e in smtp.envelopes)
    assert key.encode() not in raw_mail
    places = [home / "inference_log", home / "drift_reports", home / "feedback", home / "logs"]
    checked = 0
    for place in places:
        for path in files_under(place):
            assert key.encode() not in path.read_bytes(), path
            checked += 1
    assert key.encode() not in (tmp_path / "bento.log").read_bytes()
    assert checked > 5
