"""Ending processes left inside a lab's namespaces (e.g. an agent started there with `ip netns exec`).

A process keeps its namespace (and the veths and nftables in it) alive after
the namespace's name is deleted, so a lab ends them before deleting the names.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable


def _running(pid: int) -> bool:
    """Alive and not a zombie. Zombies are left for their parent to reap (it may want the status)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _wait_gone(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def end_processes(pids: Iterable[int], grace: float = 2.0) -> list[int]:
    """SIGTERM, then SIGKILL whatever still runs after ``grace`` seconds; returns the pids signalled."""
    targets = [pid for pid in pids if pid != os.getpid()]
    if targets:
        _signal(targets, signal.SIGTERM)
        _wait_gone(targets, grace)
        stubborn = [pid for pid in targets if _running(pid)]
        if stubborn:
            _signal(stubborn, signal.SIGKILL)
            _wait_gone(stubborn, 1.0)
    return targets
