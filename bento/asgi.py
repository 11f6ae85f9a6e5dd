"""ASGI plumbing of the prediction app: capped body reads, pre-serialised answers, routing.

Nothing here knows a model or a request model: it moves bytes between the ASGI server and the
endpoints of :class:`bento.http_app.ServingApp`, which decide what to answer. Kept apart so that
the endpoints read as request handling, and so that the one place answering an endpoint's
unexpected exception (a 500 with a request id) and giving memory back after a large request is
easy to find.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette

from bento.memory import MemoryReleaser
from bento.request_body import new_request_id
from bento.request_model import ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("fraud.serving")
BODY_BYTES = "fraud.body_bytes"  # scope key: size of the body an endpoint read


class BodyTooLarge(Exception):
    """The body (or its declared Content-Length) is over the endpoint's limit."""


def is_json(content_type: bytes | None) -> bool:
    """True for ``application/json`` and ``application/*+json`` (parameters ignored)."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body, read chunk by chunk; :class:`BodyTooLarge` once it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_value(request_id: str) -> bytes:
    """The request id as an ``X-Request-ID`` value: visible ASCII as is, anything else
    %-escaped, so a caller's id can neither break the response nor add headers to it."""
    if request_id.isascii() and request_id.isprintable() and " " not in request_id:
        return request_id.encode()
    return urllib.parse.quote(request_id, safe=_HEADER_SAFE).encode()


async def send_json(send: Send, status: int, payload: bytes, request_id: str) -> None:
    """Answer with ``payload`` (already JSON) and the request id in ``X-Request-ID``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", header_value(request_id)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_html(send: Send, status: int, body: bytes) -> None:
    """Answer with an HTML page that is never cached."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class LeanStarlette(Starlette):
    """Starlette routing without a second error-middleware stack.

    BentoML's app around it already has one, and every endpoint answers its own errors.
    ``gate`` (the API-key check of :mod:`bento.auth`, None when keys are off) sees each request
    first; it answers and returns False to refuse one.
    """

    gate: Callable[[Scope, Send], Awaitable[bool]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        scope["app"] = self
        if self.gate is not None and not await self.gate(scope, send):
            return
        await self.router(scope, receive, send)


class Endpoint:
    """An ASGI endpoint object (Starlette routes call objects like this without wrapping)."""

    def __init__(
        self,
        handler: Callable[[Scope, Receive, Send], Awaitable[None]],
        memory: MemoryReleaser,
    ) -> None:
        self.handler = handler
        self.memory = memory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.handler(scope, receive, tracked)
        except Exception as err:
            if started:
                # the answer was begun: a second one cannot follow. The usual cause is a client
                # gone mid-answer (a closed transport), not a bug: one line, no traceback
                logger.warning(
                    "answer not completed: %s: %s",
                    type(err).__name__,
                    err,
                    extra={"path": scope.get("path")},
                )
            else:
                request_id = new_request_id()
                logger.exception("prediction failed", extra={"request_id": request_id})
                payload = ErrorResponse(request_id=request_id, detail="internal error")
                await send_json(send, 500, payload.model_dump_json().encode(), request_id)
        # the handler's buffers are gone: give their pages back after a large request
        await self.memory.after(scope.get(BODY_BYTES, 0))
