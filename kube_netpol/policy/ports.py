"""Which protocol and destination port a rule admits, compiled once per policy."""

from __future__ import annotations

from typing import Iterable

from kube_netpol.api.evaluator import PortBounds
from kube_netpol.api.packet import PORT_PROTOCOLS, PROTOCOL_BY_NAME
from kube_netpol.api.cluster import PortNames

__all__ = ["ALL_PORTS", "PortBounds", "PortMatcher", "PortNames", "check_port_number", "parse_protocol", "port_bounds_of"]
from kube_netpol.api.errors import InvalidObject


def parse_protocol(value: object, path: str, default: str = "TCP") -> int:
    """A Kubernetes protocol name (TCP, UDP, SCTP; absent means ``default``; "" is refused) as its IP number."""
    if value is None:
        value = default
    number = PROTOCOL_BY_NAME.get(value) if isinstance(value, str) else None
    if number is None:
        raise InvalidObject(f"unsupported protocol {value!r} (expected TCP, UDP or SCTP)", path)
    return number


def check_port_number(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidObject(f"invalid port {value!r}: must be a number from 1 to 65535", path)
    return value


class PortMatcher:
    """A union of port ranges per protocol and of named container ports.

    ``ranges`` holds (protocol, first, last) with both ends included; a named
    port is (name, protocol or None for any protocol), resolved on the pod
    that receives the traffic: it matches when that pod declares a container
    port with that name, the packet's protocol and the packet's port (looked
    up in the pod's ``port_names``).
    """

    __slots__ = ("_ranges", "_named", "matches_all")

    def __init__(
        self,
        ranges: Iterable[tuple[int, int, int]] = (),
        named: Iterable[tuple[str, int | None]] = (),
        matches_all: bool = False,
    ) -> None:
        self._ranges = tuple(ranges)
        self._named = tuple(named)
        self.matches_all = matches_all

    def matches(self, protocol: int, port: int, receiver_port_names: PortNames) -> bool:
        """``receiver_port_names``: ``port_names`` of the receiving pod (NO_PORT_NAMES when it is no pod)."""
        if self.matches_all:
            return True
        for proto, first, last in self._ranges:
            if proto == protocol and first <= port <= last:
                return True
        if self._named:
            names = receiver_port_names.get((protocol, port))
            if names:
                for name, named_protocol in self._named:
                    if (named_protocol is None or named_protocol == protocol) and name in names:
                        return True
        return False

    def add_bounds(self, bounds: PortBounds) -> None:
        """Add where this matcher's answer may change, per protocol (see ``PortBounds``)."""
        if self.matches_all:
            return
        for protocol, first, last in self._ranges:
            points = bounds.setdefault(protocol, set())
            if points is not None:
                points.update((first, last + 1))
        for _, named_protocol in self._named:
            for protocol in PORT_PROTOCOLS if named_protocol is None else (named_protocol,):
                bounds[protocol] = None

    def __repr__(self) -> str:
        if self.matches_all:
            return "PortMatcher(all)"
        return f"PortMatcher(ranges={self._ranges}, named={self._named})"


ALL_PORTS = PortMatcher(matches_all=True)


def port_bounds_of(matchers: Iterable[PortMatcher | None]) -> PortBounds:
    """Where any of these rules' ports may change an answer (None: a rule without ports, all alike)."""
    bounds: PortBounds = {}
    for matcher in matchers:
        if matcher is not None:
            matcher.add_bounds(bounds)
    return bounds
