"""What keeps a large batch from holding single rows: its records checked from a body parsed in
slices (the same answers and refusals as from one parse), and the collector paused meanwhile."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest

import bento.json_slices
from bento.memory import CollectorPause
from bento.record_checker import RecordChecker
from bento.request_body import check_batch
from bento.request_model import build_request_model
from data_contracts.schemas import validate_frame
from data_contracts.synthetic import GeneratorConfig, generate
from flows.packaging.smoke import request_records


@pytest.fixture(scope="module")
def records(spec) -> list[dict[str, Any]]:
    valid = validate_frame(generate(GeneratorConfig(rows=4000, seed=3)), spec).valid
    rows = request_records(valid.head(120), spec)
    # ids holding what a naive cut would split on
    return [r | {"transaction_id": f'tx-{i}"}},{{"]'} for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def checker(spec) -> RecordChecker:
    return RecordChecker(build_request_model(spec), spec)


def outcome(checked) -> tuple[Any, ...]:
    errors = [(e.index, e.field, e.problem, e.message) for e in checked.budget.errors]
    models = None if checked.records is None else [m.__dict__ for m in checked.records]
    return checked.request_id, checked.detail, models, checked.positions, errors


def both_ways(checker, body: bytes, monkeypatch) -> tuple[tuple, tuple]:
    """check_batch's outcome with the body parsed whole, and in slices of about 300 bytes."""
    whole = outcome(check_batch(checker, 1000, body, "hdr"))
    calls: list[bool] = []
    real = bento.json_slices.parse_records

    def spy(*args: Any) -> Any:
        out = real(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(bento.json_slices, "SLICE_BYTES", 300)
    monkeypatch.setattr(bento.json_slices, "parse_records", spy)
    sliced = outcome(check_batch(checker, 1000, body, "hdr"))
    assert calls, "the sliced parse was not tried"
    return whole, sliced


def test_a_valid_batch_in_slices_is_checked_as_one_parse(checker, records, monkeypatch):
    body = json.dumps({"request_id": "r-1", "records": records}).encode()
    whole, sliced = both_ways(checker, body, monkeypatch)
    assert sliced == whole and whole[2] is not None and len(whole[3]) == len(records)


def test_refused_records_in_slices_name_the_same_index_and_field(checker, records, monkeypatch):
    bad = [dict(r) for r in records]
    bad[7]["amount"] = "NaN"
    bad[63]["channel"] = 5
    bad[119]["hour_of_day"] = 2.5
    del bad[90]["amount"]
    body = json.dumps({"records": bad, "request_id": "r-2"}).encode()
    whole, sliced = both_ways(checker, body, monkeypatch)
    assert sliced == whole
    assert {(i, f) for i, f, *_ in whole[4]} == {
        (7, "amount"),
        (63, "channel"),
        (119, "hour_of_day"),
        (90, "amount"),
    }


@pytest.mark.parametrize(
    "tail",
    [
        b'{"amount": 1,}]}',
        b'{"amount": 1}, {"a": 1, "a": NaN}]}',
        b'{"x": "\xff"}]}',
        b"[" * 300 + b"]" * 300 + b"]}",
    ],
)
def test_a_malformed_body_gets_the_whole_parse_refusal(checker, records, monkeypatch, tail):
    body = json.dumps({"records": records}).encode()[:-2] + b", " + tail
    whole, sliced = both_ways(checker, body, monkeypatch)
    assert sliced[1:] == whole[1:]  # the request id is made up when the body does not parse


def test_the_pause_keeps_the_collector_off_until_the_last_batch_is_done():
    assert gc.isenabled()
    pause = CollectorPause()
    try:
        with pause:
            assert not gc.isenabled()
            with pause:
                assert not gc.isenabled() and pause.active == 2
            assert not gc.isenabled()
        assert gc.isenabled() and pause.active == 0
        with pytest.raises(RuntimeError), pause:
            raise RuntimeError("a failed batch")
        assert gc.isenabled() and pause.active == 0
    finally:
        gc.enable()


def test_a_long_pause_collects_the_young_generations_and_stays_paused():
    pause = CollectorPause(max_pause_s=0.0)
    try:
        with pause, pause:
            assert pause.collections == 1 and not gc.isenabled()
        assert gc.isenabled()
    finally:
        gc.enable()


def test_a_collector_switched_off_elsewhere_stays_off():
    gc.disable()
    try:
        with CollectorPause():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
