"""Tear open labs down on SIGINT/SIGTERM and at interpreter exit.

One process-wide handler per signal is installed while any lab is open (only
possible from the main thread). It closes every open lab, then hands the
signal to whatever handler was there before: Python's default SIGINT handler
still raises KeyboardInterrupt, a default SIGTERM still terminates the
process, a caller's own handler still runs. A signal the caller ignores stays
ignored. When the last lab closes, the previous handlers are put back (unless
someone replaced ours meanwhile).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from types import FrameType
from typing import Any, Protocol

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Closable(Protocol):
    def close(self) -> None: ...


_lock = threading.RLock()
_open: dict[int, Closable] = {}  # id -> lab, in opening order
_previous: dict[int, Any] = {}  # signal -> handler before ours


def register(lab: Closable) -> None:
    with _lock:
        _open[id(lab)] = lab
        if threading.current_thread() is threading.main_thread():
            _install()


def unregister(lab: Closable) -> None:
    with _lock:
        _open.pop(id(lab), None)
        if not _open and threading.current_thread() is threading.main_thread():
            _restore()


def close_all() -> None:
    """Close every open lab, newest first; a failing close does not stop the others."""
    with _lock:
        labs = list(_open.values())
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception:  # noqa: BLE001 - teardown of the others must still run
            pass


def _install() -> None:
    for signum in SIGNALS:
        if signum in _previous:
            continue
        current = signal.getsignal(signum)
        if current in (signal.SIG_IGN, None):
            continue  # ignored, or set from C code we cannot chain to: leave it alone
        _previous[signum] = current
        signal.signal(signum, _on_signal)


def _restore() -> None:
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)
        del _previous[signum]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    close_all()
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        # Die of the signal as if we had never been here.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


atexit.register(close_all)
# A forked child inherits the registry but not the labs: it must not tear them down.
os.register_at_fork(after_in_child=_open.clear)
