"""A real ``bentoml serve`` from the checkout follows the champion pointer without a restart."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from data_contracts.artifacts import pointer_path, write_champion_pointer
from tests.support.serving import (
    call,
    failing_graph,
    import_raw_model,
    model_env,
    running_bento,
    serve_env,
    start_bento,
    train_tiny_model,
)

pytestmark = pytest.mark.integration


def _until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and re.match(
            rf"^{re.escape(name)}(\{{|$)", head
        ):
            total += float(value)
    return total


def test_serve_swaps_to_a_new_champion_and_refuses_a_corrupt_one(spec, tmp_path: Path):
    home = tmp_path / "home"
    bentoml_home = home / "bentoml"
    v1 = train_tiny_model(spec, bentoml_home, version=1)
    v2 = train_tiny_model(spec, bentoml_home, version=2, rows=3000)  # other trees, other scores
    write_champion_pointer(bentoml_home, v1.tag)
    log_dir = home / "inference_log"
    env = serve_env(
        home,
        bentoml_home,
        FRAUD_FOLLOW_INTERVAL_S="0.2",
        FRAUD_INFERENCE_LOG_DIR=str(log_dir),
        FRAUD_INFERENCE_LOG_FLUSH_S="3600",  # the old writer's records reach disk by its drain
    )
    record = v1.records(1)[0]
    with running_bento(env, tmp_path / "serve.log") as server:
        status, card = call(f"{server.base}/model")
        assert status == 200 and card["version"] == "1", card
        assert card["follow"]["following"] and card["follow"]["mode"] == "auto"

        # clients keep calling while the champion moves: not one fails, versions never go back
        answers: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                code, body = call(f"{server.base}/predict", record)
                answers.append((code, body.get("model_version") if code == 200 else None))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(1.0)
            write_champion_pointer(bentoml_home, v2.tag)
            _until(lambda: answers and answers[-1][1] == "2", what="version 2 answering")
            time.sleep(0.5)
        finally:
            stop.set()
            sender.join(30)
        codes = Counter(code for code, _ in answers)
        assert codes == {200: len(answers)}, codes
        versions = [v for _, v in answers]
        first_two = versions.index("2")
        assert set(versions[:first_two]) == {"1"} and set(versions[first_two:]) == {"2"}
        status, body = call(f"{server.base}/predict", v2.records(1)[0])
        assert body["fraud_probability"] == pytest.approx(float(v2.offline_scores(1)[0]), abs=1e-6)

        status, card = call(f"{server.base}/model")
        assert card["version"] == "2" and card["follow"]["swaps"] == 1
        assert card["follow"]["last_swap"]["from"] == v1.tag
        metrics = call(f"{server.base}/metrics")[1]
        assert _metric(metrics, "fraud_model_swaps_total") == 1
        assert _metric(metrics, "fraud_model_info", model_version="2") == 1
        assert _metric(metrics, "fraud_model_info", model_version="1") == 0

        # a new champion whose bytes do not match the store's record is refused, loudly
        v3 = train_tiny_model(spec, bentoml_home, version=3)
        with (bentoml_home / "models" / "fraud-detector" / "v3" / "model.onnx").open("ab") as fh:
            fh.write(b"tampered")
        write_champion_pointer(bentoml_home, v3.tag)
        card = _until(
            lambda: (c := call(f"{server.base}/model")[1])["follow"]["refused"] and c,
            what="the refusal of v3",
        )
        assert card["version"] == "2"
        refused = card["follow"]["refused"]
        assert refused["tag"] == v3.tag and refused["reason"] == "bad_hash"
        assert "corrupt" in refused["detail"]
        assert call(f"{server.base}/predict", record)[1]["model_version"] == "2"
        metrics = call(f"{server.base}/metrics")[1]
        assert _metric(metrics, "fraud_model_swaps_refused_total", reason="bad_hash") == 1
        assert "REFUSED" in server.text()

        # the page at / is this model's
        status, page = call(f"{server.base}/")
        assert status == 200
        assert "fraud-detector" in page and "version 2" in page and "corrupt" in page
        assert all(name in page for name in spec.feature_names)
        sent = len(answers) + 2  # and the two single calls after the traffic
    assert server.stop() == 0
    frame = pd.concat(pd.read_parquet(p) for p in sorted(log_dir.glob("date=*/part-*.parquet")))
    # every scored request reached the log, each under the version that answered it
    assert len(frame) == sent
    by_version = frame["model_version"].value_counts().to_dict()
    assert by_version == {"1": first_two, "2": sent - first_two}


def _put(path: Path, content: bytes | int | None) -> None:
    """The pointer's content: bytes, a sparse file of ``content`` bytes, or a directory."""
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if content is None:
        path.mkdir()
    elif isinstance(content, int):
        with path.open("wb") as fh:
            fh.truncate(content)
    else:
        path.write_bytes(content)


# what was put in the pointer, the refusal reason, and a phrase of its detail
BAD_POINTERS = [
    (b"fraud-detector:v999\n", "missing", "is not in the BentoML model store"),
    (b"fraud-detector:v\xff1\n", "undecodable", "is not UTF-8 text"),
    (b"fraud-detec", "undecodable", "must look like"),
    (200_000_000, "oversized", "holds 200000000 bytes"),
    (None, "unreadable", "is not a regular file"),
    (b"credit-risk:v2\n", "wrong_model", "not a fraud-detector model"),
    (b"fraud-detector:v2\n", "bad_hash", "is corrupt: sha256"),
    (b"fraud-detector:v3\n", "bad_graph", "warm-up prediction failed"),
]


def test_every_pointer_the_follower_cannot_serve_is_refused_counted_and_logged_once(
    spec, tmp_path: Path
):
    """Issue 31: a missing version said ``AttributeError: 'ModelStore' object has no attribute
    '_fs'``; a bad pointer was a traceback every 2 s, or one WARNING, or nothing; /model kept
    the last refusal after the pointer was restored; onnxruntime wrote raw lines to the log."""
    home = tmp_path / "home"
    bentoml_home = home / "bentoml"
    v1 = train_tiny_model(spec, bentoml_home, version=1)
    train_tiny_model(spec, bentoml_home, version=2, rows=3000)
    with (bentoml_home / "models" / "fraud-detector" / "v2" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    import_raw_model(spec, bentoml_home, 3, failing_graph(spec))
    write_champion_pointer(bentoml_home, v1.tag)
    pointer = pointer_path(bentoml_home, "fraud-detector")
    env = serve_env(home, bentoml_home, FRAUD_FOLLOW_INTERVAL_S="0.2", FRAUD_INFERENCE_LOG="off")
    counts: Counter[str] = Counter()
    with running_bento(env, tmp_path / "serve.log") as server:
        start = server.log.stat().st_size
        for content, reason, detail in BAD_POINTERS:
            before, written_at = server.log.stat().st_size, time.time()
            _put(pointer, content)
            card = _until(
                lambda since=written_at: (
                    (c := call(f"{server.base}/model")[1]["follow"])["refused"]
                    and c["refused"]["at"] > since
                    and c
                ),
                what=f"the refusal ({reason})",
            )
            assert card["refused"]["reason"] == reason and detail in card["refused"]["detail"]
            time.sleep(1.0)  # five more polls: nothing new is logged or counted
            card = call(f"{server.base}/model")[1]
            assert card["version"] == "1" and card["follow"]["refused"]["reason"] == reason
            assert card["follow"]["checked_at"] > card["follow"]["refused"]["at"] + 0.5
            counts[reason] += 1
            metrics = call(f"{server.base}/metrics")[1]
            for why, n in counts.items():
                assert _metric(metrics, "fraud_model_swaps_refused_total", reason=why) == n, why
            lines = server.log.read_bytes()[before:].decode().splitlines()
            assert [ln for ln in lines if "REFUSED" in ln] == lines and len(lines) == 1, lines
        assert call(f"{server.base}/predict", v1.records(1)[0])[1]["model_version"] == "1"
        _put(pointer, b"fraud-detector:v1\n")  # restored: the refusal is over
        _until(lambda: call(f"{server.base}/model")[1]["follow"]["refused"] is None, what="clear")
        during = server.log.read_bytes()[start:].decode()
    assert "Traceback" not in during and "AttributeError" not in during
    assert all(json.loads(line) for line in during.splitlines())  # JSON only, onnxruntime's too


def test_a_missing_model_at_start_up_says_so(spec, tmp_path: Path):
    home = tmp_path / "home"
    tiny = train_tiny_model(spec, home / "bentoml", version=1)
    env = model_env(home, tiny, FRAUD_MODEL_TAG="fraud-detector:v999")
    server = start_bento(env, tmp_path / "serve.log")
    try:
        server.proc.wait(120)
    finally:
        server.stop()
    text = server.text()
    assert server.proc.returncode != 0
    assert "fraud-detector:v999 is not in the BentoML model store" in text, text[-3000:]
    assert str(home / "bentoml" / "models") in text and "AttributeError" not in text
