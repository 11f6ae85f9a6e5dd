"""``fraud stack``: start, stop and inspect the local servers, on either profile.

The embedded default is a local Prefect server on SQLite, its workers and a mail catcher; the
production profile (``--profile production``) adds PostgreSQL, a Prefect server and an MLflow
tracking server on it, the Evidently UI service and Prometheus. Every server is started in its
own session with a PID file and a log file, and stopped by PID
(:mod:`flows.core.processes`); every default is in :mod:`flows.stack.config`.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess  # nosec B404 # only to name TimeoutExpired
import sys

from flows.cli.options import add_fleet_up_arguments

DESCRIPTION = (
    "Start, stop and inspect the local stack. Servers log to $FRAUD_HOME/logs/NAME.log and are "
    "stopped by the PID in $FRAUD_HOME/run/NAME.pid. Talk to the stack from your shell with "
    'eval "$(fraud stack env)". With PREFECT_API_URL set, an existing Prefect server is used '
    "instead of a local one."
)
SETTINGS_EPILOG = (
    "settings (environment, with their defaults): {embedded}; production: {production}"
)


def settings_help() -> str:
    """Every stack setting with its default, read from the one place they are defined."""
    from pydantic_core import PydanticUndefined

    from flows.stack.config import ProductionConfig, StackConfig

    def listed(kind: type) -> str:
        items = []
        for name, field in kind.model_fields.items():
            if field.default in (None, PydanticUndefined) or field.validation_alias:
                continue
            items.append(f"FRAUD_{name.upper()}={field.default}")
        return ", ".join(items)

    return SETTINGS_EPILOG.format(embedded=listed(StackConfig), production=listed(ProductionConfig))


ACTIONS: dict[str, str] = {
    "up": "start what is not running (servers this stack started and that still run are reused; "
    "a port held by anything else is an error naming it)",
    "down": "stop what the stack started, by PID",
    "status": "show what is running",
    "env": 'print the environment to talk to this stack (eval "$(fraud stack env)")',
    "deploy": "create the work pools, deploy prefect.yaml and the crashed-run automations",
    "release": "run train-and-release/fraud-detector and wait",
    "drift": "run drift-check/fraud-detector now and wait",
    "summary": "where things are: Prefect UI, MLflow run, model versions",
    "serve": "bentoml serve the champion on 127.0.0.1:3000 in the background",
    "monitor-ui": "the Evidently UI over the drift dashboard on 127.0.0.1:8000",
    "demo-drift": "the monitoring story on the running stack: serve, traffic, no drift, drifted "
    "traffic, drift, email, retraining, the served version follows the champion",
    "fleet-up": "the serving fleet behind HAProxy (installs haproxy when missing)",
    "fleet-down": "stop the fleet (balancer by PID, replicas by container id)",
    "install": "apt-get install what a server or test needs when missing (root): haproxy, "
    "chromium, postgresql, prometheus",
    "pg-up": "production: only the PostgreSQL cluster and the role",
    "pg-down": "production: stop the cluster, by PID",
    "drop-db": "production: drop this profile's databases (FRAUD_PROD_DB_PREFIX)",
    "pg-remove": "production: stop and delete the cluster, only when this profile created it",
    "mlflow-password": "production: `rotate --user admin|pipeline|reader` gives that MLflow user "
    "a new random password, on the running server and in its 0600 credentials file",
}
PRODUCTION_ONLY = {"pg-up", "pg-down", "drop-db", "pg-remove", "mlflow-password"}


def add_param(parser: argparse.ArgumentParser) -> None:
    """``--param KEY=VALUE`` (repeatable), passed to ``prefect deployment run``."""
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a flow parameter for this run (JSON values allowed), e.g. build_image=false",
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``fraud stack [--profile P] ACTION`` on ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = settings_help()
    parser.add_argument(
        "--profile", choices=("embedded", "production"), default="embedded",
        help="embedded (default): Prefect on SQLite under FRAUD_HOME; production: PostgreSQL, "
        "Prefect and MLflow servers, state under FRAUD_PROD_HOME (default $FRAUD_HOME/prod)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in ACTIONS.items():
        child = sub.add_parser(name, help=text, description=text)
        if name in {"release", "drift"}:
            add_param(child)
        elif name == "fleet-up":
            add_fleet_up_arguments(child)
        elif name == "mlflow-password":
            child.add_argument("operation", choices=("rotate",))
            child.add_argument("--user", required=True, choices=("admin", "pipeline", "reader"))
        elif name == "install":
            child.add_argument(
                "packages", nargs="+", choices=("haproxy", "chromium", "postgresql", "prometheus")
            )


def run(args: argparse.Namespace) -> int:
    """Run one stack action; expected failures are one line on stderr and exit 1."""
    from flows.core.processes import ProcessError
    from flows.stack.config import StackConfigError
    from flows.stack.embedded import StackError
    from flows.stack.packages import PackageError
    from flows.stack.prometheus import PrometheusError

    try:
        return _run(args)
    except PrometheusError as err:
        if err.details:
            print(err.details.rstrip(), file=sys.stderr)
        print(f"[stack] {err}", file=sys.stderr)
        return 1
    except (ProcessError, StackError, StackConfigError, PackageError) as err:
        print(f"[stack] {err}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as err:
        print(
            f"[stack] {shlex.join(map(str, err.cmd))} took over {err.timeout:.0f} s",
            file=sys.stderr,
        )
        return 1
    except OSError as err:  # a folder that cannot be made, a tool missing from .venv, not root
        where = f" ({err.filename})" if err.filename else ""
        print(f"[stack] {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[stack] interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from flows.stack import packages
    from flows.stack.config import ProductionConfig, StackConfig, load
    from flows.stack.embedded import EmbeddedStack, StackError

    action = args.action
    params = [arg for value in getattr(args, "param", []) for arg in ("--param", value)]
    if action == "install":
        for package in args.packages:
            packages.ensure(package, load(StackConfig).log_dir)
        return 0
    if args.profile == "production":
        from flows.stack.production import ProductionStack

        prod = ProductionStack(load(ProductionConfig))
        stack = prod.stack
        handlers = {
            "up": prod.up, "down": prod.down, "pg-up": prod.pg_up, "pg-down": prod.pg_down,
            "drop-db": prod.drop_databases, "pg-remove": prod.pg_remove,
        }  # fmt: skip
        if action in handlers:
            handlers[action]()
            return 0
        if action == "status":
            return _print(prod.status())
        if action == "mlflow-password":
            from flows.stack.credentials import rotate_mlflow_password

            try:
                rotate_mlflow_password(prod.config, args.user)
            except (RuntimeError, ValueError) as err:
                raise StackError(str(err)) from None
            where = prod.config.mlflow_user_file(args.user)
            print(f"[stack] new MLflow password of {args.user} in {where}")
            return 0
        if action == "deploy":
            prod.deploy()
            return 0
        if action == "release":
            return prod.release(params)
        if action == "drift" and prod.docker_pool is not None:
            return stack.drift(params, prod.docker_pool.drift_deployment)
    else:
        if action in PRODUCTION_ONLY:
            print(f"[stack] {action} belongs to the production profile: fraud stack "
                  f"--profile production {action}", file=sys.stderr)  # fmt: skip
            return 2
        stack = EmbeddedStack(load(StackConfig))
        if action == "up":
            stack.up()
            return 0
        if action == "down":
            stack.down()
            return 0
        if action == "status":
            return _print(stack.status())
    simple = {"deploy": stack.deploy, "serve": stack.serve, "monitor-ui": stack.monitor_ui}
    if action in simple:
        simple[action]()
        return 0
    if action == "demo-drift":
        from flows.stack.demo import drift_demo

        return drift_demo(stack)
    if action == "env":
        return _print(stack.env_lines(), sys.stdout)
    if action == "release":
        return stack.release(params)
    if action == "drift":
        return stack.drift(params)
    if action == "summary":
        return stack.fraud("summary")
    if action == "fleet-up":
        fleet = ["--replicas", str(args.replicas)]
        fleet += ["--port", str(args.port)] if args.port else []
        fleet += ["--version", args.version] if args.version else []
        return stack.fleet_up(fleet)
    if action == "fleet-down":
        return stack.fleet_down()
    raise AssertionError(f"unhandled stack action {action}")


def _print(lines: list[str], stream=None) -> int:
    print("\n".join(lines), file=stream or sys.stdout)
    return 0
