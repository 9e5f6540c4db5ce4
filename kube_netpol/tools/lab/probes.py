"""Probes: one new connection (fresh ephemeral source port) from a host to an address.

- TCP succeeds when the connection opens and the payload comes back;
- UDP when the datagram comes back (resent a few times within the timeout);
- SCTP when the destination's observer reports the INIT carrying this probe's
  initiate tag (also resent within the timeout).

Blocked traffic is dropped, so a blocked probe costs its whole timeout; the
caller runs a set of probes concurrently. Everything runs on the lab's loop thread.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from dataclasses import dataclass
from typing import Final

from kube_netpol.tools.lab.netns import socket_in
from kube_netpol.tools.lab.sctp import SctpInit, build_init

#: Sends of a UDP datagram or SCTP INIT within one timeout (the first plus resends).
SENDS_PER_TIMEOUT: Final = 4
#: Linux's default ephemeral range (net.ipv4.ip_local_port_range); used for SCTP's self-chosen ports.
EPHEMERAL_PORTS: Final = (32768, 60999)


@dataclass(frozen=True)
class Probe:
    """One probe: from the host named ``src`` to ``dst_ip``:``port`` over ``protocol`` (TCP, UDP, SCTP)."""

    src: str
    dst_ip: str
    port: int
    protocol: str
    src_ip: str = ""  # the source address ("": the host's first eth0 address of the family)


def _payload() -> bytes:
    return b"kube-netpol-lab:" + secrets.token_hex(8).encode()


async def probe_tcp(netns_fd: int, family: int, src_ip: str, dst_ip: str, port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    sock = socket_in(netns_fd, family, socket.SOCK_STREAM)
    payload = _payload()
    try:
        async with asyncio.timeout(timeout):
            sock.bind((src_ip, 0))
            await loop.sock_connect(sock, (dst_ip, port))
            await loop.sock_sendall(sock, payload)
            echoed = b""
            while len(echoed) < len(payload):
                chunk = await loop.sock_recv(sock, len(payload) - len(echoed))
                if not chunk:
                    return False
                echoed += chunk
            return echoed == payload
    except (TimeoutError, OSError):
        return False
    finally:
        sock.close()


async def probe_udp(netns_fd: int, family: int, src_ip: str, dst_ip: str, port: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    sock = socket_in(netns_fd, family, socket.SOCK_DGRAM)
    payload = _payload()
    deadline = loop.time() + timeout
    try:
        sock.bind((src_ip, 0))
        sock.connect((dst_ip, port))  # only replies from the destination are read
        # One timeout scope per send (no nesting: 3.11's wait_for can swallow an outer cancel).
        while (remaining := deadline - loop.time()) > 0:
            try:
                sock.send(payload)
            except BlockingIOError:
                pass  # counts as a lost send; the next resend tries again
            try:
                async with asyncio.timeout(min(remaining, timeout / SENDS_PER_TIMEOUT)):
                    while await loop.sock_recv(sock, 2048) != payload:
                        pass
                return True
            except TimeoutError:
                continue
        return False
    except OSError:
        return False  # includes ECONNREFUSED from an ICMP port unreachable
    finally:
        sock.close()


class SctpProber:
    """Sends SCTP INITs and learns from the destinations' observers which ones arrived."""

    def __init__(self) -> None:
        # initiate tag -> (future, source port, destination port) of the probes in flight
        self._waiting: dict[int, tuple[asyncio.Future[None], int, int]] = {}

    def init_seen(self, init: SctpInit) -> None:
        """Called by an observer for every INIT reaching its host on a served port."""
        waiting = self._waiting.get(init.initiate_tag)
        if waiting is None:
            return
        future, src_port, dst_port = waiting
        if (init.src_port, init.dst_port) == (src_port, dst_port) and not future.done():
            future.set_result(None)

    def _new_tag(self) -> int:
        while True:
            tag = secrets.randbits(32)
            if tag and tag not in self._waiting:
                return tag

    async def probe(self, netns_fd: int, family: int, src_ip: str, dst_ip: str, port: int, timeout: float) -> bool:
        tag = self._new_tag()
        src_port = random.randint(*EPHEMERAL_PORTS)
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = (arrived, src_port, port)
        packet = build_init(src_port, port, tag, secrets.randbits(32))
        sock = socket_in(netns_fd, family, socket.SOCK_RAW, socket.IPPROTO_SCTP)
        try:
            # This socket also receives the SCTP reaching the source host; it reads nothing, keep its buffer small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            sock.bind((src_ip, 0))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    sock.sendto(packet, (dst_ip, 0))
                except BlockingIOError:
                    pass  # counts as a lost send; the next resend tries again
                await asyncio.wait({arrived}, timeout=min(remaining, timeout / SENDS_PER_TIMEOUT))
                if arrived.done():
                    return True
            return False
        except OSError:
            return False
        finally:
            sock.close()
            self._waiting.pop(tag, None)
            arrived.cancel()
