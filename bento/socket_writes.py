"""One socket write per answer: what a protocol writes in one event-loop turn goes out in one
``send``.

uvicorn writes an answer's head when the app sends ``http.response.start`` and its body when it
sends ``http.response.body``: two ``send`` calls, and on a loopback or LAN socket each one runs
the kernel's whole transmit path. A profile of single rows at c=8 put uvicorn's two writes at
about a fifth of the worker's samples. :class:`CoalescingTransport` stands between the protocol
and its transport: writes made in one turn of the loop are joined and written once, at the end
of that turn (``call_soon``), before anything else touches the socket; closing flushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport whose writes in one event-loop turn reach the socket as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is pending now (a no-op when nothing is)."""
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)
