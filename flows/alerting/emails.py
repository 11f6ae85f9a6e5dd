"""Email content, and the HTML bodies rendered from jinja2 templates with autoescape.

The templates live in ``flows/alerting/templates/`` (packaged with ``flows``); every value is
escaped by jinja2, so callers pass raw text and never build HTML by hand.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict


class InlineImage(BaseModel):
    """An image the HTML body shows with ``<img src="cid:{cid}">`` (a multipart/related part)."""

    model_config = ConfigDict(frozen=True)

    cid: str  # without the angle brackets
    data: bytes
    filename: str
    subtype: str = "png"


class Attachment(BaseModel):
    """A file attached from memory (e.g. a compressed copy of a report)."""

    model_config = ConfigDict(frozen=True)

    filename: str
    data: bytes
    maintype: str = "application"
    subtype: str = "octet-stream"


class EmailContent(BaseModel):
    """What a message says: subject, HTML body, a complete plain-text alternative and the
    images the HTML shows inline."""

    model_config = ConfigDict(frozen=True)

    subject: str
    html: str
    text: str
    images: tuple[InlineImage, ...] = ()


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
