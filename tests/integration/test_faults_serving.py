"""Faults survived by a real ``bentoml serve`` on 127.0.0.1: an altered model, an unwritable log.

A released model is imported into a throw-away BentoML store and built into a bento, as the
release flow leaves them. Altering the model file afterwards must stop the service before it is
ready, naming the expected and actual sha256; an inference log folder that cannot be written
must not stop serving, and its losses are counted in ``/metrics`` and logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.support.serving import (
    BENTOML,
    ROOT,
    BentoServer,
    TinyModel,
    call,
    serve_env,
    start_bento,
    train_tiny_model,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., BentoServer]]:
    """Start ``bentoml serve ARGS``; every process started is stopped at teardown."""
    started: list[BentoServer] = []

    def start(*args: str, env: dict[str, str], cwd: Path = ROOT) -> BentoServer:
        started.append(start_bento(env, tmp_path / f"serve-{len(started)}.log", *args, cwd=cwd))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def readiness(server: BentoServer, timeout: float = 120) -> list[int]:
    """Poll ``/readyz`` until it answers 200 or the process exits; the statuses seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # not listening (yet, or any more)
            seen.append(call(f"{server.base}/readyz")[0])
        if 200 in seen or server.proc.poll() is not None:
            return seen
        time.sleep(0.3)
    pytest.fail(f"neither ready nor exited in {timeout:.0f} s:\n{server.text()[-3000:]}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def released(spec, tmp_path_factory) -> TinyModel:
    """A model imported into a BentoML store and built into the bento ``fraud-detector:v1``."""
    tiny = train_tiny_model(spec, tmp_path_factory.mktemp("release") / "bentoml")
    log = tiny.bentoml_home.parent / "build.log"
    env = serve_env(tiny.bentoml_home.parent, tiny.bentoml_home, FRAUD_MODEL_TAG=tiny.tag)
    name, _, version = tiny.tag.partition(":")
    with log.open("w") as out:
        built = subprocess.run(
            [*BENTOML, "build", "-f", "bentofile.yaml", "--name", name, "--version", version, "."],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False,
        )  # fmt: skip
    assert built.returncode == 0, log.read_text()[-3000:]
    assert (tiny.bentoml_home / "bentos" / name / version / "bento.yaml").is_file()
    return tiny


@pytest.mark.parametrize("served", ["source checkout", "built bento"])
def test_model_altered_in_the_store_after_release_never_becomes_ready(
    served, released, serve, tmp_path
):
    store = tmp_path / "bentoml"
    shutil.copytree(released.bentoml_home, store, symlinks=True)
    name, _, version = released.tag.partition(":")
    model = store / "models" / name / version / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the digest can tell
    model.write_bytes(bytes(data))
    expected, actual = sha256(released.model_bytes), sha256(bytes(data))
    assert expected != actual

    if served == "source checkout":
        env = serve_env(tmp_path, store, FRAUD_MODEL_TAG=released.tag)
        server = serve(env=env)
    else:  # the bento serves the model it packs, from the store it was built in
        server = serve(released.tag, env=serve_env(tmp_path, store), cwd=tmp_path)
    seen = readiness(server)
    log = server.text()
    assert 200 not in seen, log[-3000:]
    assert server.proc.returncode not in (None, 0), log[-3000:]
    assert (
        f"model {released.tag}: model.onnx is corrupt: sha256 {actual} does not match the "
        f"recorded {expected}"
    ) in log, log[-3000:]


def metric(server: BentoServer, name: str) -> float:
    """Sum of a counter over its label sets in ``/metrics``."""
    status, text = call(f"{server.base}/metrics")
    assert status == 200
    values = re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def wait_for(what: Callable[[], bool], server: BentoServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met in {timeout:.0f} s:\n{server.text()[-3000:]}")
        time.sleep(0.2)


LOST = "fraud_inference_log_records_lost_total"
WRITTEN = "fraud_inference_log_records_written_total"


def test_unwritable_inference_log_keeps_serving_and_counts_the_loss(released, serve, tmp_path):
    blocker = tmp_path / "volume"
    blocker.write_text("a regular file where the log folder's parent should be")
    log_dir = blocker / "inference_log"
    env = serve_env(tmp_path, released.bentoml_home, FRAUD_MODEL_TAG=released.tag,
                    FRAUD_INFERENCE_LOG_DIR=str(log_dir),
                    FRAUD_INFERENCE_LOG_FLUSH_S="0.2")  # fmt: skip
    server = serve(env=env)
    assert 200 in readiness(server), server.text()[-3000:]
    assert f"folder {log_dir} cannot be written (NotADirectoryError" in server.text()

    records = released.records(30)
    for i, record in enumerate(records[:10]):
        status, body = call(f"{server.base}/predict", {**record, "request_id": f"lost-{i}"})
        assert status == 200, body
    status, body = call(f"{server.base}/predict_batch", {"records": records[10:]})
    assert status == 200 and body["scored"] == 20, body
    wait_for(lambda: metric(server, LOST) >= 30, server)
    assert metric(server, LOST) == 30 and metric(server, WRITTEN) == 0
    assert "records lost (NotADirectoryError" in server.text()
    assert call(f"{server.base}/readyz")[0] == 200  # still serving

    blocker.unlink()  # the volume is back: the next flush writes again
    for i, record in enumerate(records[:5]):
        status, _ = call(f"{server.base}/predict", {**record, "request_id": f"kept-{i}"})
        assert status == 200
    wait_for(lambda: metric(server, WRITTEN) >= 5, server)
    assert metric(server, LOST) == 30 and metric(server, WRITTEN) == 5
    assert "again; 30 records were lost before" in server.text()
    assert server.stop() == 0
    frame = pd.concat(pd.read_parquet(p) for p in sorted(log_dir.glob("date=*/part-*.parquet")))
    assert sorted(frame["request_id"]) == [f"kept-{i}" for i in range(5)]
    assert set(frame["model_version"]) == {released.tag.rpartition(":v")[2]}
