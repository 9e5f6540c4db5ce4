"""What the agent installs inside a pod's network namespace for its secondary interfaces.

Secondary-network traffic (macvlan, ipvlan, SR-IOV) never crosses the node's
stack, so it is diverted where it flows: in the pod's namespace, one chain
per family in ``mangle``, jumped to from PREROUTING (packets arriving) and
OUTPUT (packets the pod sends), sends the first packet of each connection on
each diverted interface to that interface's queue there. nfnetlink queues
belong to a network namespace, so the agent binds each queue from inside the
pod's namespace (``kube_netpol.dataplane.netns``); ``--queue-bypass`` when
failing open lets packets through while no reader is bound.

The chain is the xtables NFQUEUE target, which every kernel with iptables
(legacy or nft) offers. Commands are argument lists (``nsenter --net=PATH
iptables ...``); interface names come from the pod's annotation and are
checked to be plain interface names first.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

CHAIN: Final = "KUBE-NETPOL-SECONDARY"
TABLE: Final = "mangle"
HOOKS: Final = ("PREROUTING", "OUTPUT")
BINARIES: Final = {4: "iptables", 6: "ip6tables"}
_TIMEOUT_S: Final = 20
#: What Linux accepts as an interface name (IFNAMSIZ - 1), without '/', ':' or spaces.
_IFNAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
#: ICMPv6 neighbour discovery (router and neighbour solicitation/advertisement) is never judged.
_NEIGHBOUR_DISCOVERY: Final = ("133", "134", "135", "136")

Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


class SecondaryRulesError(RuntimeError):
    """A command in a pod's namespace failed; the message has its stderr."""


@dataclass(frozen=True)
class Diverted:
    """One interface of a pod whose new connections go to ``queue_num`` in the pod's namespace."""

    interface: str
    queue_num: int


def check_interface(name: str) -> str:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def chain_rules(family: int, diverted: Sequence[Diverted], bypass: bool) -> list[list[str]]:
    """The chain's rules (the arguments after ``-A CHAIN``), in order."""
    rules = [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]]
    if family == 6:
        rules += [["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", kind, "-j", "RETURN"]
                  for kind in _NEIGHBOUR_DISCOVERY]  # fmt: skip
    for item in diverted:
        interface = check_interface(item.interface)
        target = ["-j", "NFQUEUE", "--queue-num", str(item.queue_num), *(["--queue-bypass"] if bypass else [])]
        rules.append(["-i", interface, *target])
        rules.append(["-o", interface, *target])
    return rules


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S)


class SecondaryRules:
    """Installs and removes the chain in pod namespaces given by path (``/proc/PID/ns/net``, a bind mount...)."""

    def __init__(self, runner: Runner = _run, nsenter: str = "nsenter") -> None:
        self._run = runner
        self._nsenter = nsenter

    def _command(self, netns: str, family: int, args: Sequence[str]) -> list[str]:
        return [self._nsenter, f"--net={netns}", BINARIES[family], "-w", "-t", TABLE, *args]

    def _must(self, netns: str, family: int, args: Sequence[str]) -> None:
        result = self._run(self._command(netns, family, args))
        if result.returncode != 0:
            raise SecondaryRulesError(f"{' '.join(self._command(netns, family, args))}: {result.stderr.strip()}")

    def _try(self, netns: str, family: int, args: Sequence[str]) -> bool:
        return self._run(self._command(netns, family, args)).returncode == 0

    def install(self, netns: str, diverted: Sequence[Diverted], bypass: bool) -> None:
        """Make the chain in ``netns`` exactly these rules (both families), hooked once each."""
        for family in (4, 6):
            if not self._try(netns, family, ["-N", CHAIN]):
                self._must(netns, family, ["-F", CHAIN])  # it exists: replace its rules
            for rule in chain_rules(family, diverted, bypass):
                self._must(netns, family, ["-A", CHAIN, *rule])
            for hook in HOOKS:
                if not self._try(netns, family, ["-C", hook, "-j", CHAIN]):
                    self._must(netns, family, ["-I", hook, "1", "-j", CHAIN])

    def remove(self, netns: str) -> None:
        """Remove the hooks and the chain from ``netns`` (what is not there is fine)."""
        for family in (4, 6):
            for hook in HOOKS:
                while self._try(netns, family, ["-D", hook, "-j", CHAIN]):
                    pass
            self._try(netns, family, ["-F", CHAIN])
            self._try(netns, family, ["-X", CHAIN])

    def present(self, netns: str) -> bool:
        """Whether our chain exists in ``netns`` (IPv4 table)."""
        return self._try(netns, 4, ["-S", CHAIN])
