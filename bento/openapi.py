"""The OpenAPI document of the prediction endpoints, generated from the spec's request models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bento.request_model import BatchPrediction, ErrorResponse, Prediction


def add_prediction_paths(
    spec: dict[str, Any],
    record_model: type[BaseModel],
    batch_model: type[BaseModel],
    max_batch_records: int,
) -> dict[str, Any]:
    """BentoML's OpenAPI document plus the two prediction paths, schemas from the spec."""
    ref = "#/components/schemas/{model}"
    components: dict[str, Any] = dict(spec.get("components") or {})
    schemas: dict[str, Any] = dict(components.get("schemas") or {})
    for model in (
        record_model,
        batch_model,
        Prediction,
        BatchPrediction,
        ErrorResponse,
    ):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    components["schemas"] = schemas

    def op(summary: str, request: str, response: str) -> dict[str, Any]:
        def content(name: str) -> dict[str, Any]:
            return {"application/json": {"schema": {"$ref": ref.format(model=name)}}}

        return {
            "post": {
                "tags": ["Service APIs"],
                "summary": summary,
                "requestBody": {"required": True, "content": content(request)},
                "responses": {
                    "200": {"description": "Scored", "content": content(response)},
                    "400": {
                        "description": "Invalid Content-Length header",
                        "content": content("ErrorResponse"),
                    },
                    "413": {"description": "Body too large", "content": content("ErrorResponse")},
                    "431": {"description": "Request headers too large (no JSON body)"},
                    "415": {"description": "Not JSON", "content": content("ErrorResponse")},
                    "422": {"description": "Invalid input", "content": content("ErrorResponse")},
                    "503": {
                        "description": "The model is not loaded yet (starting or stopping)",
                        "content": content("ErrorResponse"),
                    },
                },
            }
        }

    paths = dict(spec.get("paths") or {})
    paths["/predict"] = op(
        "Score one transaction (JSON object keyed by feature name)",
        record_model.__name__,
        "Prediction",
    )
    paths["/predict_batch"] = op(
        f"Score up to {max_batch_records} transactions; invalid records are "
        "reported by index, valid ones scored",
        batch_model.__name__,
        "BatchPrediction",
    )
    return {**spec, "paths": paths, "components": components}
