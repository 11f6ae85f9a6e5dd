"""The drift dashboard in a real browser: `make monitor-ui` over 90 daily checks, in Chromium.

90 checks (drift creeping up, realized F1 sliding) are recorded the way the drift check records
them; `fraud stack monitor-ui` starts the Evidently UI on a free port (by PID, log file);
headless Chromium loads the project page, and the rendered page must show the panels with
their data points. The screenshot is kept beside the test's files for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from data_contracts.spec import default_spec
from flows.core.http import free_port
from flows.monitoring.dashboard import record_check
from flows.monitoring.performance import RealizedPerformance
from tests.support.drift import result

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--window-size=1400,2400",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is missing: fraud stack install chromium (.ci/run does)"
    return found


def record_days(root: Path, days: int) -> str:
    from flows.monitoring.dashboard import open_workspace

    spec = default_spec()
    base = result()
    workspace = open_workspace(root, None)
    project = None
    for day in range(days):
        perf = RealizedPerformance(
            status="within limits", detail="d", coverage=0.2 + day / 200, f1=0.82 - day / 400,
            f1_low=0.78 - day / 400, f1_high=0.86 - day / 400, precision=0.8, recall=0.7,
        )  # fmt: skip
        creeping = base.verdict.model_copy(update={"drift_share": 0.05 + day / 300})
        check = base.model_copy(
            update={
                "checked_at": base.checked_at + timedelta(days=day),
                "performance": perf,
                "verdict": creeping,
            }
        )
        project = record_check(check, spec.feature_names, root, workspace=workspace)
    assert project is not None
    return project


def test_the_dashboard_renders_90_daily_checks_in_chromium(tmp_path):
    browser = chromium()
    home = tmp_path / "home"
    started = time.perf_counter()
    project = record_days(home / "evidently", 90)
    recorded = time.perf_counter() - started
    port = free_port()
    env = {**os.environ, "FRAUD_HOME": str(home), "FRAUD_EVIDENTLY_PORT": str(port)}
    env.pop("FRAUD_EVIDENTLY_DIR", None)
    up = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "fraud"), "stack", "monitor-ui"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/projects", timeout=10) as reply:
            assert project in json.dumps(json.loads(reply.read()))
        page = f"{base}/projects/{project}"
        shot = tmp_path / "dashboard.png"
        started = time.perf_counter()
        dom = subprocess.run(
            [browser, *CHROMIUM_FLAGS, "--virtual-time-budget=20000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        loaded = time.perf_counter() - started
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, "--virtual-time-budget=20000", f"--screenshot={shot}", page],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
    finally:
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "fraud"), "stack", "down"], env=env, timeout=120
        )
    print(f"recorded 90 checks in {recorded:.1f} s; Chromium rendered the page in {loaded:.1f} s")
    assert "Share of drifted features" in dom and "Realized F1 on labelled feedback" in dom
    assert "Label coverage" in dom
    # plotted data: the SVG of the line plots holds one marker per check
    assert dom.count("<svg") >= 2, dom[:2000]
    assert "No data" not in dom
    assert shot.stat().st_size > 20_000
    assert not (home / "run" / "evidently-ui.pid").exists()  # stopped by PID
