"""Notice nftables ruleset changes as they happen: a netlink socket on the NFNLGRP_NFTABLES group.

Every nf_tables transaction of the network namespace (any table, ours or
not, and iptables-nft's, which are nf_tables transactions too) sends its
objects to this group; the packet path updating a dynamic set (the new-flow
limiter) does not. The messages are not decoded: any of them only means
"look again", and ``Dataplane.repair`` reads what it needs. Changes made with
iptables-legacy send nothing here; the periodic check covers them.

Why a socket and not ``nft monitor``: no process to supervise, one fd to
wait on, and nothing to parse.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Final

from kube_netpol.dataplane.netlink import NETLINK_NETFILTER

NFNLGRP_NFTABLES: Final = 7
_RECV_BUFFER: Final = 1 << 16


class MonitorError(RuntimeError):
    """The netlink socket cannot be opened or subscribed (no CAP_NET_ADMIN, old kernel)."""


class NftablesMonitor:
    """``wait(timeout)``: True once the ruleset changed since the last call. Use as a context manager."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise MonitorError(f"cannot open a netfilter netlink socket: {e.strerror}") from e
        try:
            self._sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
            self._sock.setblocking(False)
        except OSError as e:
            self._sock.close()
            raise MonitorError(f"cannot subscribe to nftables events: {e.strerror}") from e
        self._buffer = bytearray(_RECV_BUFFER)
        self._wake_read, self._wake_write = os.pipe()  # interrupt() ends a wait at once

    def __enter__(self) -> NftablesMonitor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def interrupt(self) -> None:
        """End a ``wait`` now (from another thread): the agent is stopping."""
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # closed already, or the pipe is full: a wait ends either way

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds (or until ``interrupt``) for a change; True if one came
        (all pending ones are consumed)."""
        ready, _, _ = select.select([self._sock.fileno(), self._wake_read], [], [], max(0.0, timeout))
        if self._wake_read in ready:
            return False
        return bool(ready) and self.drain()

    def drain(self) -> bool:
        """Consume every pending message without blocking; True if there was any."""
        changed = False
        while True:
            try:
                self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return changed
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # events were lost: something changed, that is all we need
                    changed = True
                    continue
                raise
            changed = True
