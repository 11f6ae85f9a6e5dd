"""Email content, and the HTML bodies rendered from jinja2 templates with autoescape.

The templates live in ``flows/alerting/templates/`` (packaged with ``flows``); every value is
escaped by jinja2, so callers pass raw text and never build HTML by hand.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict


class EmailContent(BaseModel):
    """What a message says: subject, HTML body and a plain-text alternative."""

    model_config = ConfigDict(frozen=True)

    subject: str
    html: str
    text: str


@functools.cache
def _environment() -> Any:
    """The template environment, built on first use (nothing happens on import)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("flows.alerting", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` (HTML-escaped)."""
    return _environment().get_template(template).render(**context)
