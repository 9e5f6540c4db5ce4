"""Names of a lab's network namespaces.

Every name carries the owning process (pid and its start time, so a reused pid
is not mistaken for the owner) and a random lab id, so parallel labs never
collide and a crashed lab's leftovers can be recognised and removed.

    <prefix>-<pid>.<start time>-<lab id>-node
    <prefix>-<pid>.<start time>-<lab id>-h<index>
    <prefix>-<pid>.<start time>-<lab id>-s<index>     (a secondary network's segment)
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from typing import Final

DEFAULT_PREFIX: Final = "knl"
PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9]{0,15}$")
NETNS_NAME_RE: Final = re.compile(
    r"^(?P<prefix>[a-z][a-z0-9]{0,15})-(?P<pid>\d+)\.(?P<start>\d+)-(?P<lab>[0-9a-f]{6})-(?P<role>node|h\d+|s\d+)$"
)
#: Interface names must fit IFNAMSIZ - 1.
MAX_IFNAME: Final = 15
#: Every name that says which process made it: lab namespaces and ``owned_name``'s,
#: ``<prefix>-<pid>.<start time>-<id>[-<role>]``. scripts/leak_check.py reads it.
OWNED_NAME_RE: Final = re.compile(
    r"^(?P<prefix>[a-z][a-z0-9-]*?)-(?P<pid>\d+)\.(?P<start>\d+)-(?P<id>[0-9a-f]{6})(?:-[a-z0-9]+)?$"
)
OWNED_PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


@dataclass(frozen=True)
class Owner:
    """A process, identified so that a later process reusing the pid is not it."""

    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/<pid>/stat

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        start = process_start_time(pid)
        if start is None:  # our own /proc entry always exists
            raise RuntimeError("cannot read /proc/self/stat")
        return cls(pid, start)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    """Start time of a live process, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    after_comm = text[text.rindex(b")") + 2 :].split()
    return int(after_comm[22 - 3])


def owned_name(prefix: str) -> str:
    """A unique name (a network namespace, a table) that says which process made it.

    A test's leftover is then recognisable as such, and as a leftover once its
    maker has exited (scripts/leak_check.py), among whatever else the machine runs.
    """
    if not OWNED_PREFIX_RE.match(prefix):
        raise ValueError(f"name prefix must match {OWNED_PREFIX_RE.pattern}: {prefix!r}")
    owner = Owner.current()
    return f"{prefix}-{owner.pid}.{owner.start_time}-{secrets.token_hex(3)}"


def name_owner(name: str) -> Owner | None:
    """The process a name made by ``owned_name`` (or a lab) names, or None for any other name."""
    match = OWNED_NAME_RE.match(name)
    return None if match is None else Owner(int(match["pid"]), int(match["start"]))


@dataclass(frozen=True)
class LabNames:
    """The namespace and interface names of one lab."""

    prefix: str
    owner: Owner
    lab_id: str

    @classmethod
    def new(cls, prefix: str = DEFAULT_PREFIX) -> "LabNames":
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"lab prefix must match {PREFIX_RE.pattern}: {prefix!r}")
        return cls(prefix, Owner.current(), secrets.token_hex(3))

    @property
    def _stem(self) -> str:
        return f"{self.prefix}-{self.owner.pid}.{self.owner.start_time}-{self.lab_id}"

    def node_netns(self) -> str:
        return f"{self._stem}-node"

    def host_netns(self, index: int) -> str:
        return f"{self._stem}-h{index}"

    def segment_netns(self, index: int) -> str:
        """A secondary network's layer-2 segment (a bridge), which bypasses the node namespace."""
        return f"{self._stem}-s{index}"

    @staticmethod
    def node_ifname(index: int) -> str:
        """The node side of host ``index``'s veth (names only need to be unique inside the node netns)."""
        name = f"veth{index}"
        if len(name) > MAX_IFNAME:
            raise ValueError(f"too many hosts for interface names: {index}")
        return name


@dataclass(frozen=True)
class ParsedNetnsName:
    prefix: str
    owner: Owner
    lab_id: str
    role: str  # "node", "h<index>" or "s<index>"


def parse_netns_name(name: str) -> ParsedNetnsName | None:
    """The parts of a lab namespace name, or None for any other namespace."""
    match = NETNS_NAME_RE.match(name)
    if match is None:
        return None
    owner = Owner(int(match["pid"]), int(match["start"]))
    return ParsedNetnsName(match["prefix"], owner, match["lab"], match["role"])
