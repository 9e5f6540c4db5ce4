"""What a lab configures, as data: sysctls and `ip` commands for the node and each host.

Each host netns is joined to the node netns by a veth pair. The host side is
``eth0`` with /32 and /128 addresses and default routes to link-local
gateways on the node side (169.254.1.1 with ``onlink``, fe80::1); the node side
holds those gateway addresses and a host route per host address, and forwards.
Commands are argument lists; `ip -batch` lines are joined from them only after
every token is checked to be a plain word (no quoting, comments or spaces).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Sequence

GATEWAY_V4: Final = "169.254.1.1"
GATEWAY_V6: Final = "fe80::1"
HOST_IFNAME: Final = "eth0"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The node forwards; DAD is off so addresses are usable at once.
NODE_SYSCTLS: Final[tuple[tuple[str, str], ...]] = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)
#: Set before the host's eth0 exists: a new interface copies the "default" values.
HOST_SYSCTLS: Final[tuple[tuple[str, str], ...]] = (
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)

_PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9._:/-]+$")


def parse_addresses(ips: Sequence[str]) -> tuple[Address, ...]:
    """Validated host addresses: plain IPv4/IPv6 addresses, no duplicates, not the gateways."""
    if isinstance(ips, str):
        raise TypeError("ips must be a list of addresses, not a string")
    if not ips:
        raise ValueError("a host needs at least one address")
    addresses = tuple(ipaddress.ip_address(ip) for ip in ips)
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"duplicate address in {list(ips)}")
    for address in addresses:
        if str(address) in (GATEWAY_V4, GATEWAY_V6):
            raise ValueError(f"{address} is the lab's gateway address")
        if address.is_loopback or address.is_multicast or address.is_unspecified or address.is_link_local:
            raise ValueError(f"{address} cannot be a host address")
    return addresses


def node_link_commands(ifname: str, host_netns: str, addresses: Sequence[Address]) -> list[list[str]]:
    """Commands run in the node netns: create the veth pair (host end straight into its netns) and route to it."""
    commands = [
        ["link", "add", ifname, "type", "veth", "peer", "name", HOST_IFNAME, "netns", host_netns],
        ["addr", "add", f"{GATEWAY_V4}/32", "dev", ifname],
        ["addr", "add", f"{GATEWAY_V6}/64", "dev", ifname, "nodad"],
        ["link", "set", ifname, "up"],
    ]
    for address in addresses:
        commands.append(["route", "add", f"{address}/{address.max_prefixlen}", "dev", ifname])
    return commands


def host_commands(addresses: Sequence[Address]) -> list[list[str]]:
    """Commands run in a host netns: addresses on eth0 and default routes via the node."""
    commands = [["link", "set", "lo", "up"]]
    for address in addresses:
        flags = ["nodad"] if address.version == 6 else []
        commands.append(["addr", "add", f"{address}/{address.max_prefixlen}", "dev", HOST_IFNAME, *flags])
    commands.append(["link", "set", HOST_IFNAME, "up"])
    if any(a.version == 4 for a in addresses):
        commands.append(["route", "add", "0.0.0.0/0", "via", GATEWAY_V4, "dev", HOST_IFNAME, "onlink"])
    if any(a.version == 6 for a in addresses):
        commands.append(["route", "add", "::/0", "via", GATEWAY_V6, "dev", HOST_IFNAME])
    return commands


def node_commands() -> list[list[str]]:
    return [["link", "set", "lo", "up"]]


def batch_script(commands: Sequence[Sequence[str]]) -> str:
    """The stdin of `ip -batch -` for these commands."""
    for command in commands:
        for token in command:
            if not _PLAIN_TOKEN.match(token):
                raise ValueError(f"refusing a non-plain token in an ip command: {token!r}")
    return "".join(" ".join(command) + "\n" for command in commands)
