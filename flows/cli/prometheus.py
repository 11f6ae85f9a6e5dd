"""``fraud prometheus``: Prometheus scraping the serving fleet and ``make serve``, by PID.

The logic is :mod:`flows.stack.prometheus`; this module declares the actions and prints what
happened. Messages go to stderr prefixed ``[prometheus]``; ``status`` prints to stdout.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

EXIT_FAILED = 1

DESCRIPTION = (
    "Prometheus for the serving stack (Debian's prometheus package, installed as root when "
    "missing), with the project's config and rules (deploy/prometheus/) rendered into "
    "$FRAUD_HOME/prometheus/ and checked with promtool before they are used. It scrapes the "
    "targets in the file_sd files of the scrape-target folder (the fleet's replicas, `make "
    "serve`, the balancer) and evaluates the recording and alert rules."
)
EPILOG = """\
settings (environment):
  FRAUD_PROMETHEUS_HOST                 listen address (127.0.0.1)
  FRAUD_PROMETHEUS_PORT                 port of the UI and API (9090)
  FRAUD_PROMETHEUS_SCRAPE_INTERVAL      how often targets are scraped (15s)
  FRAUD_PROMETHEUS_SCRAPE_TIMEOUT       10s, or the interval when that is shorter
  FRAUD_PROMETHEUS_EVALUATION_INTERVAL  how often rules are evaluated (15s)
  FRAUD_PROMETHEUS_RETENTION            how long samples are kept (15d)
  FRAUD_PROMETHEUS_TARGETS_DIR          the file_sd folder ($FRAUD_HOME/fleet/targets)
state: $FRAUD_HOME/prometheus/ (prometheus.yml, rules/, data/); log:
$FRAUD_HOME/logs/prometheus.log; PID: $FRAUD_HOME/run/prometheus.pid.
exit status: 0 done, 1 failed (check: promtool's exit status), 2 usage error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``fraud prometheus`` and its actions on ``parser``."""
    parser.description = textwrap.fill(DESCRIPTION, 88)
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser(
        "up", help="render, check and start Prometheus (a running one reloads)",
        description="Install Prometheus when missing (root), render the config and rules into "
        "$FRAUD_HOME/prometheus/, check them with promtool and start Prometheus on "
        "FRAUD_PROMETHEUS_HOST:FRAUD_PROMETHEUS_PORT, waiting until /-/ready answers. A running "
        "Prometheus gets the new config instead (as `reload`). Fails when the port is taken.",
    )  # fmt: skip
    sub.add_parser(
        "down", help="stop it, by PID",
        description="SIGTERM to Prometheus' process group, 20 s to exit, then SIGKILL.",
    )  # fmt: skip
    sub.add_parser(
        "status", help="show whether it runs, its UI and its scrape targets",
        description="Whether the recorded PID runs, whether the UI answers (and where its "
        "alerts, targets and rules pages are), and the scrape-target folder.",
    )  # fmt: skip
    sub.add_parser(
        "reload", help="render, check and apply the config to the running server",
        description="Render and check the config as `up` does, install it, then SIGHUP the "
        "running Prometheus. Fails when none runs.",
    )  # fmt: skip
    sub.add_parser(
        "check", help="promtool check config, check rules and test rules",
        description="What `make lint` asks of the config: it renders (with empty target "
        "files of its own), passes `promtool check config` and `check rules`, and the rules' "
        "unit tests in deploy/prometheus/tests/ pass. Nothing is started.",
    )  # fmt: skip
    render = sub.add_parser(
        "render", help="write the config and rules into DIR (nothing is started)",
        description="Write DIR/prometheus.yml (the template with the settings filled in) and "
        "DIR/rules/; nothing is checked or started.",
    )  # fmt: skip
    render.add_argument("dir", metavar="DIR", help="the folder to write into")
    register = sub.add_parser(
        "register", help="write the scrape-target file NAME.json (serve, bento, ...)",
        description="Write NAME.json in the scrape-target folder, atomically, with one target "
        "HOST:PORT and its labels; Prometheus picks it up within 5 s.",
    )  # fmt: skip
    register.add_argument(
        "name", metavar="NAME", help="the file's name: [a-z][a-z0-9_-]* (e.g. serve, bento)"
    )
    register.add_argument("target", metavar="HOST:PORT", help="what to scrape, e.g. 127.0.0.1:3000")
    register.add_argument(
        "labels", nargs="*", metavar="LABEL=VALUE",
        help="labels of the target, e.g. replica=bentoml-serve (values: letters, digits, ._:/@+-)",
    )  # fmt: skip
    unregister = sub.add_parser(
        "unregister", help="remove the scrape-target file NAME.json",
        description="Remove NAME.json from the scrape-target folder (nothing when it is missing).",
    )  # fmt: skip
    unregister.add_argument("name", metavar="NAME", help="the file's name, e.g. serve")


def run(args: argparse.Namespace) -> int:
    """Run the action; an expected failure is a message on stderr and exit status 1."""
    from flows.core.processes import ProcessError
    from flows.stack import prometheus
    from flows.stack.config import StackConfigError

    try:
        if args.action == "up":
            prometheus.up()
        elif args.action == "down":
            prometheus.down()
        elif args.action == "status":
            print("\n".join(prometheus.status()))
        elif args.action == "reload":
            prometheus.reload()
        elif args.action == "check":
            return prometheus.check()
        elif args.action == "render":
            prometheus.render(args.dir)
        elif args.action == "register":
            prometheus.register(args.name, args.target, args.labels)
        elif args.action == "unregister":
            prometheus.unregister(args.name)
        return 0
    except (prometheus.PrometheusError, StackConfigError, ProcessError, OSError) as err:
        details = getattr(err, "details", "")
        if details:
            print(details.rstrip(), file=sys.stderr)
        if isinstance(err, OSError) and err.filename:
            message = f"{args.action}: {err.filename}: {err.strerror or err}"
        else:
            message = str(err)
        prometheus.say(message)
        return EXIT_FAILED
