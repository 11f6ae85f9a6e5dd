"""Print where things are after a release: Prefect UI, MLflow run and model version, MLflow UI.

``fraud summary [--model-name NAME]``
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from flows.cli.options import add_model_argument, model_name

if TYPE_CHECKING:
    from flows.core.settings import Settings

DESCRIPTION = __doc__.splitlines()[0]


def evidence_lines(tags: dict[str, str]) -> list[str]:
    """The holdout F1 with its interval, the difference to the champion, and how the scores
    were calibrated with their holdout ECE, from version tags."""
    from data_contracts.artifacts import (
        TAG_CALIBRATION,
        TAG_ECE,
        TAG_F1_VS_CHAMPION,
        TAG_F1_VS_CHAMPION_ROWS,
        TAG_HOLDOUT_F1,
        TAG_HOLDOUT_F1_INTERVAL,
        TAG_HOLDOUT_POSITIVES,
    )

    lines = []
    if TAG_HOLDOUT_F1 in tags:
        interval = tags.get(TAG_HOLDOUT_F1_INTERVAL)
        positives = tags.get(TAG_HOLDOUT_POSITIVES)
        lines.append(
            f"holdout F1:        {float(tags[TAG_HOLDOUT_F1]):.4f}"
            + (f", interval {interval}" if interval else "")
            + (f", {positives} positives" if positives else "")
        )
    if TAG_F1_VS_CHAMPION in tags:
        lines.append(f"vs champion:       {tags[TAG_F1_VS_CHAMPION]}")
    if TAG_F1_VS_CHAMPION_ROWS in tags:
        lines.append(f"  compared on:     {tags[TAG_F1_VS_CHAMPION_ROWS]}")
    if TAG_HOLDOUT_F1 in tags:  # a version of this release format: say what its score means
        ece = f"; holdout ECE {tags[TAG_ECE]}" if TAG_ECE in tags else ""
        lines.append(f"calibration:       {tags.get(TAG_CALIBRATION, 'not recorded')}{ece}")
    return lines


def summary_lines(settings: Settings, model_name: str) -> list[str]:
    """Human-readable lines describing the latest version and the champion of ``model_name``."""
    from flows.registry import registry

    client = registry.configure(settings)
    api = os.environ.get("PREFECT_API_URL", "")
    lines = [f"Prefect UI:        {api.removesuffix('/api') or '(ephemeral)'}"]
    versions = client.search_model_versions(f"name = '{model_name}'")
    if not versions:
        return [*lines, f"MLflow:            no version of {model_name!r} registered yet"]
    latest = max(versions, key=lambda v: int(v.version))
    champion = registry.current_champion(client, model_name, settings.champion_alias)
    lines += [
        f"MLflow tracking:   {settings.tracking_uri}",
        f"latest version:    {model_name} v{latest.version} "
        f"({latest.tags.get('gate.outcome', '?')}: {latest.tags.get('gate.reasons', '')})",
        *evidence_lines(latest.tags),
        f"latest run:        {latest.run_id}",
        "champion:          "
        + (
            f"{model_name} v{champion.version} (models:/{model_name}@champion)"
            if champion
            else "none"
        ),
    ]
    if settings.uses_local_mlflow:
        lines.append("MLflow UI:         make mlflow-ui   (then open http://127.0.0.1:5000)")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``fraud summary`` on ``parser``."""
    parser.description = DESCRIPTION
    add_model_argument(parser, "--model-name")


def run(args: argparse.Namespace) -> int:
    """Print the summary lines of ``args.model_name``; returns the exit code."""
    from flows.core.settings import Settings

    print("\n".join(summary_lines(Settings(), model_name(args.model_name))))
    return 0
