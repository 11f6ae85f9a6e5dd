"""The ``fraud`` command: help for every subcommand, argument errors, dispatch, lazy imports."""

from __future__ import annotations

import argparse
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


@pytest.mark.parametrize(
    ("module", "argv", "expected"),
    [
        ("flows.cli.ops", ["rollback", "--help"], "--no-image"),
        ("flows.cli.ops", ["history", "--help"], "--model"),
        ("flows.cli.summary", ["--help"], "--model-name"),
        ("flows.cli.served", ["--help"], "--wait"),
        ("flows.cli.generate_data", ["--help"], "--invalid-rows"),
        ("flows.cli.traffic", ["--help"], "--url"),
        ("flows.cli.automations", ["--help"], "PREFECT_API_URL"),
        ("flows.cli.work_pools", ["--help"], "POOL"),
    ],
)
def test_python_dash_m_modules_keep_their_command_lines(module, argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module}") and expected in out


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
