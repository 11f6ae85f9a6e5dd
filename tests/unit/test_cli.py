"""The ``fraud`` command: help for every subcommand, argument errors, dispatch, lazy imports."""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flows.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("mlflow", "prefect", "pandas", "sklearn", "pyarrow", "bentoml", "evidently")

# the options each subcommand's --help must mention
OPTIONS = {
    "api-keys": ["rotate", "retire", "status", "--settle", "FRAUD_API_KEYS_FILE"],
    "rollback": ["--version", "--model", "--reason", "--actor", "--no-image"],
    "history": ["--model"],
    "fleet": ["up", "down", "status", "restore", "roll", "fleet.json", "balancer.log"],
    "summary": ["--model-name"],
    "served": ["--url", "--wait", "--timeout", "champion"],
    "generate-data": ["output", "--rows", "--seed", "--invalid-rows", "--amount-scale"],
    "traffic": ["--url", "--rows", "--batch", "--amount-scale", "--broken-feed"],
    "automations": ["PREFECT_API_URL", "FRAUD_HEARTBEAT_SECONDS"],
    "work-pools": ["POOL", "--type", "PREFECT_API_URL"],
    "k8s": ["render", "push", "check"],
    "stack": ["--profile", "up", "down", "status", "env", "FRAUD_PREFECT_PORT", "PREFECT_API_URL"],
    "prometheus": ["up", "down", "status", "register", "check"],
}


def run_cli(argv: list[str], capsys, **kwargs) -> tuple[int, str, str]:
    """Run ``fraud ARGV`` in process; (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv, **kwargs)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_is_covered_here():
    assert {c.name for c in cli.COMMANDS} == set(OPTIONS)


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: fraud")
    for name in OPTIONS:
        assert name in out


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_command_help_exits_0_and_names_its_options(name, capsys):
    code, out, _ = run_cli([name, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: fraud {name}")
    for option in OPTIONS[name]:
        assert option in out, f"`fraud {name} --help` does not mention {option}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["deploy"], "invalid choice: 'deploy'"),
        (["rollback"], "the following arguments are required: --version"),
        (["rollback", "--version"], "argument --version: expected one argument"),
        (["generate-data"], "the following arguments are required: output"),
        (["traffic", "--rows", "many"], "argument --rows: invalid int value: 'many'"),
        (["summary", "--bogus"], "unrecognized arguments: --bogus"),
        (["fleet"], "the following arguments are required: ACTION"),
        (["fleet", "up", "--replicas", "two"], "argument --replicas: invalid int value: 'two'"),
    ],
)
def test_argument_errors_exit_2_with_the_reason(argv, message, capsys):
    code, out, err = run_cli(argv, capsys, runners=dict.fromkeys(OPTIONS, _must_not_run))
    assert code == 2
    assert out == ""
    assert "usage: fraud" in err and message in err


def _must_not_run(args: argparse.Namespace) -> int:
    raise AssertionError(f"ran with {args}")


def test_dispatch_reaches_the_named_command_with_its_options(capsys):
    seen: list[tuple[str, argparse.Namespace]] = []

    def recorder(name: str, code: int):
        def runner(args: argparse.Namespace) -> int:
            seen.append((name, args))
            return code

        return runner

    codes = {name: 10 + i for i, name in enumerate(sorted(OPTIONS))}
    runners = {name: recorder(name, code) for name, code in codes.items()}
    argv = ["rollback", "--version", "3", "--reason", "bad model", "--no-image"]
    assert run_cli(argv, capsys, runners=runners)[0] == codes["rollback"]
    [(name, args)] = seen
    assert name == "rollback"
    assert (args.version, args.reason, args.image, args.model) == ("3", "bad model", False, None)

    seen.clear()
    code, *_ = run_cli(["generate-data", "out.csv", "--rows", "7"], capsys, runners=runners)
    assert code == codes["generate-data"]
    assert [n for n, _ in seen] == ["generate-data"]
    assert (str(seen[0][1].output), seen[0][1].rows, seen[0][1].seed) == ("out.csv", 7, 7)


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_each_command_points_at_a_real_parser_and_runner(command):
    module = importlib.import_module(command.module)
    assert callable(getattr(module, command.configure))
    assert callable(getattr(module, command.run))


def test_the_real_runner_is_used_without_a_seam(tmp_path, capsys):
    # generate-data refuses an unknown suffix with exit 2 before writing anything
    code, _, err = run_cli(["generate-data", str(tmp_path / "rows.txt"), "--rows", "5"], capsys)
    assert code == 2
    assert "must end in .parquet or .csv" in err
    assert not list(tmp_path.iterdir())


def test_python_dash_m_flows_cli_is_the_fraud_command(capsys, monkeypatch):
    """`python -m flows.cli ARGS` is `fraud ARGS`: same help, same argument errors."""
    monkeypatch.setenv("COLUMNS", "100")  # one help width here and in the child process
    for argv in (["--help"], ["generate-data", "--help"], ["rollback"], ["summary", "--bogus"]):
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", *argv],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip
        expected = run_cli(argv, capsys, runners=dict.fromkeys(OPTIONS, _must_not_run))
        assert (result.returncode, result.stdout, result.stderr) == expected, argv
        assert (result.stdout + result.stderr).startswith("usage: fraud")


@pytest.mark.parametrize(
    "path",
    sorted(set((ROOT / "flows" / "cli").glob("*.py")) - {ROOT / "flows/cli/main.py"}),
    ids=lambda p: p.name,
)
def test_only_the_fraud_command_builds_a_command_line(path):
    """Subcommand modules declare options on a parser they are given: no `main()`, no
    `if __name__ == "__main__"`, no parser of their own (`python -m flows.cli.X` is gone)."""
    tree = ast.parse(path.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "main" not in functions
    assert "__name__" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not {"ArgumentParser", "argparse.ArgumentParser"} & calls


def _option_actions(parser: argparse.ArgumentParser, where: str):
    """(command path, action) for every option of ``parser`` and of its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _option_actions(child, f"{where} {name}")
        elif action.option_strings and action.dest != "help":
            yield where, action


# one name, different options: each command's own meaning, default or requirement
DIFFERENT_OPTIONS = {
    "--version": "the version to roll back to, to serve (default champion), to roll to",
    "--rows": "rows of a data set to write vs transactions to send",
    "--seed": "the data set's seed vs the traffic's seed",
    "--pipeline-image": "render: an optional override; push: the required local image",
}


def test_an_option_several_commands_take_has_one_default_and_one_help():
    declared: dict[str, dict[tuple[str, bool, str | None], list[str]]] = {}
    for command in cli.COMMANDS:
        parser = argparse.ArgumentParser()
        command.load(command.configure)(parser)
        for where, action in _option_actions(parser, command.name):
            kind = (repr(action.default), action.required, action.help)
            declared.setdefault(action.option_strings[-1], {}).setdefault(kind, []).append(where)
    differing = {
        name: kinds
        for name, kinds in declared.items()
        if len(kinds) > 1 and name not in DIFFERENT_OPTIONS
    }
    assert not differing, f"declare these once, in flows/cli/options.py: {differing}"


DRIFT_DEFAULTS = {
    "amount_scale": 1.0,
    "merchant_shift": 0.0,
    "broken_feed": False,
    "new_fraud_pattern": 0.0,
}


def test_generate_data_and_traffic_take_the_same_drift_knobs(capsys):
    seen: dict[str, argparse.Namespace] = {}

    def keep(name: str):
        return lambda args: seen.update({name: args}) or 0

    runners = {name: keep(name) for name in OPTIONS}
    run_cli(["generate-data", "out.parquet"], capsys, runners=runners)
    run_cli(["traffic"], capsys, runners=runners)
    for name in ("generate-data", "traffic"):
        assert {k: getattr(seen[name], k) for k in DRIFT_DEFAULTS} == DRIFT_DEFAULTS, name
    # the knobs only the generator has
    assert (seen["generate-data"].drift_fraud_rate, seen["generate-data"].start_day) == (None, 0)
    argv = ["--amount-scale", "1.8", "--merchant-shift", "0.3", "--broken-feed"]
    argv += ["--new-fraud-pattern", "0.5"]  # every shared knob, set
    seen.clear()
    run_cli(["generate-data", "out.parquet", *argv], capsys, runners=runners)
    run_cli(["traffic", *argv], capsys, runners=runners)
    drifted = dict(amount_scale=1.8, merchant_shift=0.3, broken_feed=True, new_fraud_pattern=0.5)
    for name in ("generate-data", "traffic"):
        assert {k: getattr(seen[name], k) for k in DRIFT_DEFAULTS} == drifted, name


def test_help_imports_no_heavy_library():
    """`fraud --help` and every `fraud X --help` stay fast: no MLflow, Prefect, pandas, ..."""
    code = (
        "import sys\n"
        "from flows.cli.main import main\n"
        f"for argv in [['--help'], *([name, '--help'] for name in {sorted(OPTIONS)!r})]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"


def test_console_script_is_declared_and_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fraud"] == "flows.cli.main:main"
    script = Path(sys.executable).parent / "fraud"
    if not script.is_file():
        message = f"{script} is not installed (run `uv sync --frozen`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)  # CI installs the project: a missing script is a defect
        pytest.skip(message)
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "usage: fraud" in result.stdout
