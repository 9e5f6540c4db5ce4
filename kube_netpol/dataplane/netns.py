"""Entering a network namespace from a thread (setns(2); Python 3.11 has no os.setns).

setns changes only the calling thread, and a socket stays in the namespace it
was created in: a thread that enters a pod's namespace, opens a netlink socket
there (an NFQUEUE binding) and returns home leaves the socket serving that
namespace. The process's main thread is never moved (``entered`` refuses).
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from typing import Callable, Final, Iterator, TypeVar

CLONE_NEWNET: Final = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int

T = TypeVar("T")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Run the block with the calling (non-main) thread in the namespace, then return it home."""
    if threading.current_thread() is threading.main_thread():
        raise RuntimeError("the main thread must stay in its namespace")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def run_in_netns(path: str, work: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``work`` on a short-lived thread inside the namespace at ``path``; its result or its exception."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with entered(fd):
                    result.append(work())
            finally:
                os.close(fd)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            failure.append(err)

    thread = threading.Thread(target=target, name="netns-enter", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"work in network namespace {path} took more than {timeout} s")
    if failure:
        raise failure[0]
    return result[0]
