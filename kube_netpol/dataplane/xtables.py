"""The iptables/ip6tables rules that queue marked packets (the "xt" queue backend).

Used where the kernel lacks the nftables ``queue`` expression: our chain marks
the packets and one rule per family in ``mangle POSTROUTING`` (and, with the
netfilter bug 1766 workaround, ``mangle PREROUTING``) sends marked packets to
NFQUEUE. Our rules carry ``-m comment --comment <table name>`` so
reconcile and cleanup touch exactly them. Commands are argument lists, never
shell strings.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Final

XT_TABLE: Final = "mangle"
XT_CHAIN: Final = "POSTROUTING"
DEFAULT_BINARIES: Final[Mapping[int, str]] = {4: "iptables", 6: "ip6tables"}
_TIMEOUT_S: Final = 30

Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


class XtablesError(RuntimeError):
    """An iptables/ip6tables command failed; the message has its stderr."""


def queue_rule_args(*, mark: int, queue_num: int, bypass: bool, comment: str) -> list[str]:
    """The rule's match and target arguments, in the order ``iptables -S`` prints them back."""
    args = [
        "-m", "mark", "--mark", f"{mark:#x}/{mark:#x}",
        "-m", "comment", "--comment", comment,
        "-j", "NFQUEUE", "--queue-num", str(queue_num),
    ]  # fmt: skip
    if bypass:
        args.append("--queue-bypass")
    return args


def parse_rules(save_output: str, comment: str, chain: str = XT_CHAIN) -> list[list[str]]:
    """The rules of ``chain`` in ``iptables -S`` output that carry ``--comment comment``.

    Each is returned as its arguments after ``-A CHAIN`` (what ``-D CHAIN`` takes).
    """
    found = []
    for line in save_output.splitlines():
        tokens = shlex.split(line)
        if tokens[:2] != ["-A", chain]:
            continue
        args = tokens[2:]
        if any(a == "--comment" and args[i + 1 : i + 2] == [comment] for i, a in enumerate(args)):
            found.append(args)
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S)


class Xtables:
    """Lists, ensures and removes our queue rule in both families."""

    def __init__(self, binaries: Mapping[int, str] = DEFAULT_BINARIES, runner: Runner = _run) -> None:
        self._binaries = dict(binaries)
        self._runner = runner

    def _call(self, family: int, args: Sequence[str]) -> str:
        cmd = [self._binaries[family], "-w", "5", "-t", XT_TABLE, *args]
        result = self._runner(cmd)
        if result.returncode != 0:
            raise XtablesError(f"{' '.join(cmd)}: {result.stderr.strip()}")
        return result.stdout

    def list_ours(self, family: int, comment: str, chain: str = XT_CHAIN) -> list[list[str]]:
        return parse_rules(self._call(family, ["-S", chain]), comment, chain)

    def list_ours_by_chain(self, family: int, comment: str) -> dict[str, list[list[str]]]:
        """Our rules in every chain of the mangle table, from one listing: chain -> rules."""
        out = self._call(family, ["-S"])
        chains = {line.split()[1] for line in out.splitlines() if line.startswith("-A ")}
        return {chain: rules for chain in chains if (rules := parse_rules(out, comment, chain))}

    def ensure(
        self, family: int, rule: list[str], comment: str, *, remove_stale: bool = True, chain: str = XT_CHAIN
    ) -> bool:
        """Make ``rule`` the only rule with our comment; returns whether anything changed.

        The rule is inserted first in the chain: a rule of someone else that
        ends the mangle chain early (ACCEPT) must not let marked packets
        skip the queue. ``remove_stale`` False only adds it, so a caller can
        switch marks without a moment where neither rule queues.
        """
        ours = self.list_ours(family, comment, chain)
        changed = False
        if rule not in ours:
            self._call(family, ["-I", chain, "1", *rule])
            changed = True
        else:
            ours.remove(rule)  # keep one copy; duplicates count as stale
        if remove_stale:
            for stale in ours:
                self._call(family, ["-D", chain, *stale])  # deletes the first rule with these arguments
                changed = True
        return changed

    def remove_ours(self, family: int, comment: str, chain: str = XT_CHAIN) -> int:
        """Delete every rule with our comment from ``chain``; returns how many were deleted."""
        ours = self.list_ours(family, comment, chain)
        for rule in ours:
            self._call(family, ["-D", chain, *rule])
        return len(ours)
