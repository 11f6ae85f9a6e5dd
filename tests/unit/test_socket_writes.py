"""Writes made in one event-loop turn leave as one transport write, in order; close flushes."""

from __future__ import annotations

import asyncio

from bento.socket_writes import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """A transport that records what reaches it (the unit under test is the wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_writes_in_one_turn_are_joined_and_turns_stay_apart():
    async def run() -> RecordingTransport:
        real = RecordingTransport()
        out = CoalescingTransport(real, asyncio.get_running_loop())
        out.write(b"HTTP/1.1 200 OK\r\n\r\n")
        out.write(b"")
        out.write(bytearray(b"body-1"))
        assert real.writes == [] and out.get_write_buffer_size() == 7 + 25
        await asyncio.sleep(0)
        out.writelines([b"head-2|", b"body-2"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert out.get_extra_info("peername") == ("127.0.0.1", 1)
        return real

    real = asyncio.run(run())
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-1", b"head-2|body-2"]


def test_close_flushes_first_and_nothing_is_written_after_it():
    async def run() -> RecordingTransport:
        real = RecordingTransport()
        out = CoalescingTransport(real, asyncio.get_running_loop())
        out.write(b"answer")
        out.close()
        out.write(b"late")  # pending, then dropped: the transport is closing
        await asyncio.sleep(0)
        assert out.is_closing()
        return real

    real = asyncio.run(run())
    assert real.writes == [b"answer"] and real.closed
