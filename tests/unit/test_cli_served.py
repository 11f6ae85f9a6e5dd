"""``fraud served --wait``: it ends when the version answering is the champion and no release
runs, and says whether the version changed, or fails when serving never follows."""

from __future__ import annotations

import argparse

import pytest

from flows.cli import served


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    served.add_arguments(parser)
    return parser.parse_args(["--wait", "--interval", "0", *kw.pop("argv", [])])


def _script(monkeypatch, served_seq, champion_seq, running_seq) -> None:
    """Each poll takes the next value of each sequence (the last one repeats)."""

    def stepper(values):
        state = {"i": 0}

        def step(*_a, **_kw):
            value = values[min(state["i"], len(values) - 1)]
            state["i"] += 1
            return value

        return step

    monkeypatch.setattr(served, "served_version", stepper(served_seq))
    monkeypatch.setattr(served, "champion_version", stepper(champion_seq))
    monkeypatch.setattr(served, "releases_in_progress", stepper(running_seq))


def test_it_waits_for_the_release_and_reports_the_changed_version(monkeypatch, capsys):
    _script(monkeypatch, ["1", "1", "1", "2"], ["1", "1", "2", "2"], [1, 1, 0, 0])
    assert served.run(_args()) == 0
    out = capsys.readouterr().out
    assert "1 release(s) running" in out
    assert "changed: v1 -> v2 (champion)" in out


def test_a_release_that_did_not_promote_ends_the_wait_without_a_change(monkeypatch, capsys):
    _script(monkeypatch, ["1"], ["1"], [1, 0])
    assert served.run(_args()) == 0
    assert "ended without moving the champion: v1 keeps answering" in capsys.readouterr().out


def test_serving_that_never_follows_the_champion_fails_after_the_timeout(monkeypatch, capsys):
    _script(monkeypatch, ["1"], ["2"], [0])
    assert served.run(_args(argv=["--timeout", "0.05"])) == 1
    assert "v1 still answers" in capsys.readouterr().err


def test_nothing_answering_is_a_clear_error(monkeypatch, capsys):
    def refused(*_a, **_kw):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(served, "served_version", refused)
    assert served.run(_args()) == 1
    assert "nothing answers at http://127.0.0.1:3000" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--wait", "--timeout", "--interval"])
def test_help_names_the_options(flag, capsys):
    parser = argparse.ArgumentParser()
    served.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert flag in capsys.readouterr().out
