"""Print where things are after a release: Prefect UI, MLflow run and model version, MLflow UI."""

from __future__ import annotations

import argparse
import os

from data_contracts.spec import default_spec
from flows.core.settings import Settings
from flows.delivery import registry


def summary_lines(settings: Settings, model_name: str) -> list[str]:
    """Human-readable lines describing the latest version and the champion of ``model_name``."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-name", default=default_spec().name)
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(Settings(), args.model_name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
