"""The canary of a rollout: a share of the traffic to the new version before the full shift.

The balancer first sends ``share`` of the requests to the new replicas (HAProxy weights) for
``seconds``; then the new version's error ratio and response time, read from HAProxy's own
per-server counters, are compared with the old version's over the same window. A new version
worse beyond the tolerances is refused (:func:`judge` returns the reasons) and the rollout is
abandoned like any other failed step. Too little traffic to judge is said, not hidden: the
version then goes on with its readiness and reference-record checks as the evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flows.serving.balancer import ServerState

MAX_WEIGHT = 256  # HAProxy's server weights are 0..256


@dataclass(frozen=True)
class CanaryPolicy:
    """How long, how much traffic, and how much worse the new version may be."""

    seconds: float = 5.0
    share: float = 0.1
    min_requests: int = 20
    max_error_ratio_increase: float = 0.01
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"canary seconds must be >= 0 (got {self.seconds})")
        if not 0 <= self.share < 1:
            raise ValueError(f"canary share must be in [0, 1) (got {self.share})")

    @property
    def enabled(self) -> bool:
        return self.seconds > 0 and self.share > 0

    def weights(self) -> tuple[int, int]:
        """(old, new) server weights giving the new replicas ``share`` of the requests."""
        new = max(1, round(MAX_WEIGHT * self.share))
        return MAX_WEIGHT - new, new


@dataclass(frozen=True)
class VersionFigures:
    """One version's requests, errors and mean response time in the canary window."""

    version: str
    requests: int
    errors: int
    response_ms: float

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def text(self) -> str:
        return (
            f"v{self.version}: {self.requests} requests, {self.errors} errors "
            f"({100 * self.error_ratio:.2f}%), mean response {self.response_ms:.1f} ms"
        )


def figures(
    version: str,
    names: Sequence[str],
    start: Mapping[str, ServerState],
    end: Mapping[str, ServerState],
) -> VersionFigures:
    """A version's figures over the window: counter deltas of its servers, and their mean
    response time weighted by the requests each served."""
    requests = errors = 0
    weighted = 0.0
    for name in names:
        before, after = start.get(name), end.get(name)
        if after is None:
            continue
        served = after.requests - (before.requests if before else 0)
        requests += max(served, 0)
        errors += max(after.errors - (before.errors if before else 0), 0)
        weighted += after.response_ms * max(served, 0)
    return VersionFigures(version, requests, errors, weighted / requests if requests else 0.0)


@dataclass(frozen=True)
class Verdict:
    """The canary's outcome with its reasons and both versions' figures."""

    passed: bool
    reasons: list[str]
    old: VersionFigures
    new: VersionFigures

    def text(self) -> str:
        head = "passed" if self.passed else "FAILED"
        return f"canary {head} ({self.new.text()}; {self.old.text()}): " + "; ".join(self.reasons)


def judge(old: VersionFigures, new: VersionFigures, policy: CanaryPolicy) -> Verdict:
    """Whether the new version is no worse than the old beyond the policy's tolerances."""
    if new.requests < policy.min_requests:
        return Verdict(
            True,
            [
                f"only {new.requests} canary requests (< {policy.min_requests}): too few to "
                "judge; passed on its readiness and reference-record checks"
            ],
            old,
            new,
        )
    reasons, passed = [], True
    allowed = old.error_ratio + policy.max_error_ratio_increase
    if new.error_ratio > allowed:
        passed = False
        reasons.append(
            f"error ratio {100 * new.error_ratio:.2f}% > old {100 * old.error_ratio:.2f}% "
            f"+ {100 * policy.max_error_ratio_increase:.2f}%"
        )
    else:
        reasons.append(f"error ratio {100 * new.error_ratio:.2f}% within {100 * allowed:.2f}%")
    limit = old.response_ms * policy.max_latency_ratio + policy.latency_slack_ms
    if new.response_ms > limit:
        passed = False
        reasons.append(
            f"mean response {new.response_ms:.1f} ms > {limit:.1f} ms (old "
            f"{old.response_ms:.1f} ms x {policy.max_latency_ratio} + "
            f"{policy.latency_slack_ms} ms)"
        )
    else:
        reasons.append(f"mean response {new.response_ms:.1f} ms within {limit:.1f} ms")
    return Verdict(passed, reasons, old, new)
