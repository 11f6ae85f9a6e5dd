"""Packaging a registered version for serving, before any promotion: the step sequence.

``import_registered_version`` (:mod:`~flows.packaging.store`) -> ``build_bento``
(:mod:`~flows.packaging.build`) -> ``containerize_with_retries`` (:mod:`~flows.packaging.container`)
-> ``smoke_test`` (:mod:`~flows.packaging.smoke`). Nothing here moves ``latest`` or the champion
pointer (that is :mod:`flows.promotion.champion`'s move); after a failure the version is dropped
from the stores (:func:`flows.packaging.publish.discard_failed`) and the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from data_contracts.spec import FeatureSpec
from flows.core.settings import Settings
from flows.packaging.build import build_bento
from flows.packaging.container import ImageFacts, containerize_with_retries
from flows.packaging.errors import PackagingError
from flows.packaging.publish import discard_failed
from flows.packaging.smoke import SmokeReport, make_smoke_case, smoke_test
from flows.packaging.store import import_registered_version


@dataclass(frozen=True)
class PackagedVersion:
    """A version ready to be promoted: its bento, and its image with the smoke test it passed."""

    tag: str
    image: ImageFacts | None
    smoke: SmokeReport | None
    skipped: str | None = None

    def summary(self) -> dict[str, str]:
        """Facts for the run's summary; says loudly when no image was built."""
        facts = {"bento": self.tag}
        if self.image is None or self.smoke is None:
            facts["image"] = f"NOT BUILT: {self.skipped or 'image step skipped'}"
            return facts
        facts["image"] = f"{self.image.ref} ({self.image.size_mb:.0f} MB, user {self.image.user})"
        facts["smoke test"] = (
            f"{self.smoke.records} records, max |dp| {self.smoke.max_abs_diff:.1e}, "
            f"ready in {self.smoke.start_to_ready_s:.1f} s"
        )
        return facts


def package_version(
    settings: Settings,
    model_name: str,
    version: str,
    reference: pd.DataFrame,
    spec: FeatureSpec,
    *,
    build_image: bool = True,
    repository: str | None = None,
) -> PackagedVersion:
    """Import, build, containerize and smoke-test a registered version, before any promotion.

    ``reference`` holds rows the smoke test may send (e.g. the holdout). On failure the
    version's bento and store model are dropped and both stores point back at the champion,
    then the :class:`PackagingError` propagates; the ``latest`` image is never touched here.
    """
    stored = import_registered_version(settings, model_name, version)
    try:
        bento = build_bento(settings, stored)
        if not build_image:
            return PackagedVersion(
                bento, None, None, "the image step was switched off for this run (no Docker)"
            )
        facts = containerize_with_retries(settings, bento, repository=repository)
        case = make_smoke_case(stored.model_bytes, spec, reference, stored.threshold)
        report = smoke_test(settings, facts.ref, case, model_version=stored.model_version)
    except PackagingError:
        discard_failed(settings, stored.tag)
        raise
    return PackagedVersion(bento, facts, report)
