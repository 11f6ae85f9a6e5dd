"""``fraud fleet``: the local serving fleet of the champion image behind HAProxy.

``up`` starts N verified replicas and the balancer on port 3000, ``status`` shows each
replica and the balancer's view of it, ``restore`` restarts replicas that died, ``roll``
moves the fleet to a version without moving any alias, ``down`` stops everything by PID and
container id. The logic is :mod:`flows.serving.fleet` and :mod:`flows.serving.rollout`.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.options import add_fleet_up_arguments, add_model_argument, model_name

EXIT_FAILED = 1
EXIT_DEGRADED = 3

DESCRIPTION = (
    "The local serving fleet: N Docker replicas of the champion image `<model>:v<N>` "
    "(--network host, each on its own port, the shared inference-log folder mounted) behind "
    "HAProxy on 127.0.0.1:3000. Every champion move (release, `fraud rollback`) rolls a "
    "running fleet: new replicas start and must pass /readyz and the smoke test's reference "
    "records, a canary gets a share of the traffic (FRAUD_CANARY_SECONDS, default 5 s at "
    "FRAUD_CANARY_SHARE 0.1) and must not be worse than the old version, then the balancer "
    "shifts to them by graceful reload, the old ones drain and stop; a "
    "failed rollout leaves the old version serving. State: $FRAUD_HOME/fleet/fleet.json; "
    "balancer log: $FRAUD_HOME/logs/balancer.log; replica logs: $FRAUD_HOME/fleet/logs/ "
    "(or `docker logs NAME` while running); Prometheus targets: $FRAUD_HOME/fleet/targets/."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``fraud fleet`` and its actions on ``parser``."""
    parser.description = DESCRIPTION
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser(
        "up", help="start the replicas and the balancer (the champion by default)",
        description="Start REPLICAS verified containers of the champion image (or --version) "
        "and HAProxy on --port. Fails, with nothing left running, when the image is missing, a "
        "port is taken or a replica fails its checks. Exit 0 serving, 1 failed.",
    )  # fmt: skip
    add_fleet_up_arguments(up)
    up.add_argument(
        "--metrics-port", type=int, default=8404,
        help="HAProxy's Prometheus exporter and stats page on 127.0.0.1 (default: 8404)",
    )  # fmt: skip
    add_model_argument(up)
    up.add_argument(
        "--ready-timeout", type=float, default=90, help="seconds a replica may take to be ready"
    )
    sub.add_parser(
        "down", help="stop the balancer and every replica",
        description="Soft-stop HAProxy (requests in flight finish), stop each replica with "
        "SIGTERM (its inference log is flushed), save the replicas' logs, clear the state.",
    )  # fmt: skip
    sub.add_parser(
        "status", help="each replica's container, /readyz and the balancer's view",
        description="Exit 0 when every replica is running, ready and UP in the balancer; "
        f"{EXIT_DEGRADED} when some are not (then `fraud fleet restore`); 1 without a fleet.",
    )  # fmt: skip
    sub.add_parser(
        "restore", help="restart the replicas that died or are not ready",
        description="Restart every replica that is not running and ready, on its own port and "
        "name, verify it, and wait until the balancer has it UP again.",
    )  # fmt: skip
    roll = sub.add_parser(
        "roll", help="roll the fleet to a version without moving the champion alias",
        description="What a champion move does to the fleet, on its own (e.g. after a move "
        "made with the fleet down).",
    )  # fmt: skip
    roll.add_argument("--version", required=True, help="model version to roll to")
    roll.add_argument(
        "--canary-seconds", type=float, default=None,
        help="canary window before the full shift (default: FRAUD_CANARY_SECONDS or 5; 0: none)",
    )  # fmt: skip
    roll.add_argument(
        "--canary-share", type=float, default=None,
        help="share of the traffic the new version gets in the canary (default 0.1)",
    )  # fmt: skip
    add_model_argument(roll)


def run(args: argparse.Namespace) -> int:
    """Run the fleet action; prints what happened and returns the exit code."""
    from flows.core.settings import Settings
    from flows.serving import balancer, fleet, rollout
    from flows.serving import health as fleet_health

    settings = Settings()
    try:
        if args.action == "up":
            state = fleet.up(
                settings, model_name(args.model), replicas=args.replicas,
                port=fleet.DEFAULT_PORT if args.port is None else args.port,
                metrics_port=args.metrics_port, version=args.version,
                ready_timeout_s=args.ready_timeout,
            )  # fmt: skip
            print(f"fleet up: {state.model} v{state.version}, {len(state.replicas)} replicas")
            print(f"serving: {state.url} (/readyz: the balancer's view)")
            print(f"metrics: http://{state.metrics_host}:{state.metrics_port}/metrics (/stats)")
            return 0
        if args.action == "down":
            state = fleet.down(settings)
            print("no fleet was running" if state is None else f"fleet down ({state.image})")
            return 0
        if args.action == "status":
            health = fleet_health.status(settings)
            if health is None:
                print("no fleet running (`fraud fleet up` or `make fleet-up` starts one)")
                return EXIT_FAILED
            print("\n".join(health.lines()))
            return 0 if health.healthy else EXIT_DEGRADED
        if args.action == "restore":
            restarted = fleet_health.restore(settings)
            if not restarted:
                print("every replica is running and ready: nothing to restore")
            for replica in restarted:
                print(f"restored {replica.name} on 127.0.0.1:{replica.port} (v{replica.version})")
            return 0
        from flows.serving.canary import CanaryPolicy

        policy = CanaryPolicy(
            settings.canary_seconds if args.canary_seconds is None else args.canary_seconds,
            settings.canary_share if args.canary_share is None else args.canary_share,
        )
        print(rollout.roll(settings, model_name(args.model), args.version, policy=policy))
        return 0
    except (fleet.FleetError, rollout.RolloutFailed, balancer.BalancerError) as err:
        print(f"fleet {args.action} failed: {err}", file=sys.stderr)
        return EXIT_FAILED
