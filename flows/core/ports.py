"""Who listens on a TCP port, and whether that process is one a given start produced.

``psutil`` reads the listening sockets and the process tree; a server counts as the started one
when it is the started process, in its session, or one of its descendants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Holder:
    """The process listening on a port: its PID, session and command line."""

    pid: int
    sid: int | None
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command[:120]})"


def port_holders(port: int) -> list[Holder]:
    """Every process with a socket listening on TCP ``port`` (a parent that bound it and the
    workers it handed the socket to each count), empty when nothing listens."""
    holders: dict[int, Holder] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:  # a socket of another user, not visible without privileges
            holders[-1] = Holder(pid=-1, sid=None, command="a process of another user")
        else:
            holders[conn.pid] = Holder(conn.pid, _sid(conn.pid), _command(conn.pid))
    return list(holders.values())


def port_holder(port: int) -> Holder | None:
    """A process listening on TCP ``port`` (any address), or None when nothing listens."""
    holders = port_holders(port)
    return holders[0] if holders else None


def started_by(holder: Holder, pid: int) -> bool:
    """Whether ``holder`` is ``pid``, in its session, or a descendant of it (a server may start
    its workers in sessions of their own, as ``bentoml serve`` does)."""
    if holder.pid == pid or holder.sid == pid:
        return True
    try:
        return any(parent.pid == pid for parent in psutil.Process(holder.pid).parents())
    except psutil.Error:
        return False


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
    except psutil.Error:
        return "unknown command"
