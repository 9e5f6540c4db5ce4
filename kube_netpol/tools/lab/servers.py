"""The services every lab host offers: TCP and UDP echo, and an SCTP INIT observer.

This kernel has no SCTP stack, so an SCTP "service" is a raw IPPROTO_SCTP
socket that reports the INIT packets reaching the host for a served port.
Everything here runs on the lab's event loop thread.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, cast

from kube_netpol.tools.lab.netns import socket_in
from kube_netpol.tools.lab.sctp import SctpInit, parse_init, strip_ipv4_header

PROTOCOLS = ("TCP", "UDP", "SCTP")
_LISTEN_BACKLOG = 1024
_WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class _TcpEcho(asyncio.Protocol):
    def __init__(self, transports: set[asyncio.BaseTransport]) -> None:
        self._transports = transports
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transports.discard(self._transport)


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is not registered as a DatagramTransport subclass.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        assert self._transport is not None
        self._transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply; the server keeps serving


class _SctpObserver:
    """Reads a raw SCTP socket and reports INITs to served ports."""

    def __init__(self, sock: socket.socket, ports: set[int], on_init: Callable[[SctpInit], None]) -> None:
        self._sock = sock
        self._ports = ports
        self._on_init = on_init
        self._ipv4 = sock.family == socket.AF_INET
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. a queued ICMP error; nothing to observe
            # A raw IPv4 socket returns the IP header; a raw IPv6 socket does not.
            init = parse_init(strip_ipv4_header(data) if self._ipv4 else data)
            if init is not None and init.dst_port in self._ports:
                self._on_init(init)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


class HostServers:
    """The listeners of one host: TCP echo per (family, port), UDP echo per (address, port), SCTP observers.

    UDP binds each address rather than the wildcard so that a reply leaves from the
    address the probe was sent to (the probe's connected socket accepts nothing else).
    """

    def __init__(self, netns_fd: int, addresses: tuple[str, ...], on_sctp_init: Callable[[SctpInit], None]) -> None:
        self._netns_fd = netns_fd
        self._addresses = addresses
        self._families = sorted({socket.AF_INET6 if ":" in address else socket.AF_INET for address in addresses})
        self._on_sctp_init = on_sctp_init
        self._tcp: dict[tuple[int, int], asyncio.Server] = {}
        self._udp: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self._connections: set[asyncio.BaseTransport] = set()
        self._sctp_ports: set[int] = set()
        self._observers: list[_SctpObserver] = []
        # Every socket made here, closed again at the end whoever owns it by then.
        self._sockets: list[socket.socket] = []

    def _socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        sock = socket_in(self._netns_fd, family, kind, proto)
        self._sockets.append(sock)
        return sock

    async def serve(self, port: int, protocol: str) -> None:
        if protocol == "SCTP":
            self._start_sctp_observers()
            self._sctp_ports.add(port)
            return
        loop = asyncio.get_running_loop()
        if protocol == "TCP":
            for family in self._families:
                if (family, port) not in self._tcp:
                    sock = self._bound(family, _WILDCARD[family], socket.SOCK_STREAM, port)
                    sock.listen(_LISTEN_BACKLOG)
                    self._tcp[family, port] = await loop.create_server(lambda: _TcpEcho(self._connections), sock=sock)
        elif protocol == "UDP":
            for address in self._addresses:
                if (address, port) not in self._udp:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    sock = self._bound(family, address, socket.SOCK_DGRAM, port)
                    transport, _ = await loop.create_datagram_endpoint(_UdpEcho, sock=sock)
                    self._udp[address, port] = transport

    def _bound(self, family: int, address: str, kind: int, port: int) -> socket.socket:
        sock = self._socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 socket serves IPv4
        sock.bind((address, port))
        return sock

    def _start_sctp_observers(self) -> None:
        if self._observers:
            return
        for family in self._families:
            sock = self._socket(family, socket.SOCK_RAW, socket.IPPROTO_SCTP)
            self._observers.append(_SctpObserver(sock, self._sctp_ports, self._on_sctp_init))

    async def close(self) -> None:
        for server in self._tcp.values():
            server.close()
        for transport in self._udp.values():
            transport.close()
        for connection in list(self._connections):
            connection.abort()  # type: ignore[attr-defined]  # no lingering flush of unsent echo data
        for observer in self._observers:
            observer.close()
        # Let the transports' scheduled connection_lost callbacks run (they close the sockets).
        for _ in range(3):
            await asyncio.sleep(0)
        self.close_sockets()
        self._tcp.clear()
        self._udp.clear()
        self._connections.clear()
        self._observers.clear()

    def close_sockets(self) -> None:
        """Close every socket made here (safe to repeat, and from any thread once the loop has stopped)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
