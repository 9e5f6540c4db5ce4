"""The kube-netpol nftables ruleset, described once as data, and the libnftables JSON made from it.

Pure logic, no I/O (the h11 way): every function here takes plain values and
returns the JSON commands to send, or reads the JSON that libnftables listed.
The callers in this package own libnftables and the transactions.

The table holds two address sets and a chain on the postrouting hook::

    meta mark & M == M ............................. clear M, accept  (judged at prerouting; bug-1766 fix only)
    icmpv6 type 133-137 ............................ accept   (neighbour discovery, router messages)
    meta skuid 0 ................................... accept   (optional: kubelet probes, node daemons)
    ct state established,related ................... accept   (the verdict lives in conntrack)
    ip saddr/daddr @managed-v4, ip6 ... @managed-v6  divert   (or every packet left, in divert-all mode)

With DNS observation (``observe_dns``, for ClusterNetworkPolicy ``domainNames``)
two rules come right after the first one, before anything that accepts::

    ct direction reply, udp sport 53, ip daddr @managed-v4 / ip6 daddr @managed-v6
    ................................................ set D, divert   (every DNS answer to a managed pod)

Every answer is queued (not only a connection's first packet: each answer
is a reply of an established connection), the bit D (``DNS_ANSWER_MARK``)
tells the verdict loop that the packet is a DNS answer to learn from and
accept, not a new connection to judge; the loop holds it until the cache has
it, so the pod's first connection to the address is judged with it. No
per-source limit (its source is the DNS server, shared by every pod) and no
verdict memory (answers are never remembered). In divert-all mode, one rule
without the address match.

"Divert" is the queue statement for the native backend, and for the xtables
backend a mark that one iptables/ip6tables rule turns into NFQUEUE (this
kernel has no native ``queue`` expression).

With a per-source limit of new flows (``new_flow_limit`` > 0, the default),
"divert" is a jump to a regular chain that first rate-limits by source
address, so that one pod's flood cannot fill the queue every other pod's
first packets wait in::

    update @new-flows-v4 { ip saddr limit rate over N/second burst N packets }  count, drop
    update @new-flows-v6 { ip6 saddr limit rate over N/second burst N packets } count, drop
    ................................................ divert (queue, or mark)

Over the limit means dropped, never accepted: the limit holds whatever
fail-open says. The sets are dynamic (one element per source, forgotten 10 s
after its last new flow); the named counter ``new-flows-limited`` counts the
drops. ``goto`` (not ``jump``) makes each packet pass the limiter once, however
many divert rules it matches.

With the netfilter bug 1766 workaround (``netfilter_bug_1766_fix``; the agent's
``auto`` turns it on for kernels before 6.12, kube_netpol.dataplane.kernel_release)
a second chain judges new DNS requests on the prerouting hook::

    meta iiftype loopback .......................... accept   (the node's own traffic, judged on its way out)
    meta l4proto != udp, udp dport != 53 ........... accept   (only DNS requests are judged here)
    ct state established,related ................... accept
    ip saddr/daddr @managed-v4, ip6 ... @managed-v6  set M, divert   (or every DNS request, in divert-all mode)

Why: glibc sends the A and AAAA queries of one lookup from one socket at
once. While the first is held in the queue its conntrack entry is not
confirmed, so the second creates a rival entry; if the queue sits after the
routing decision (postrouting) and Service DNAT picked different backends,
the loser is dropped at confirmation and the lookup waits for a retry
(https://bugzilla.netfilter.org/show_bug.cgi?id=1766). Judged on
prerouting, before the routing decision, the clash is resolved when the
verdict re-injects the packet (kubernetes-sigs/kube-network-policies does the
same, with the same flag). The mark bit M tells the postrouting chain the packet was already judged; it is
cleared there so the xt backend's postrouting rule does not queue it again.

The native prerouting chain sits right after DNAT, so the packet is judged
with the Service's chosen endpoint, like on postrouting. The xt backend can
only queue in iptables' mangle PREROUTING, which runs *before* DNAT: there a
DNS request sent to a Service address is judged with that address as its
destination (an egress rule naming the DNS pods does not match it, and the
DNS pods' ingress rules are not consulted). Disable the workaround with the
xt backend where DNS goes through Service addresses and policies select it.

With the verdict memory (``verdict_memory``), the kernel answers flow keys
the agent judged a moment ago itself. Four dynamic sets (accept and drop,
IPv4 and IPv6) keyed by source address, destination address, protocol and
destination port are looked up before the per-source limit and the queue::

    ... saddr . daddr . l4proto . th dport @remembered-accept-v4/-v6  count, accept
    ... saddr . daddr . l4proto . th dport @remembered-drop-v4/-v6    count, drop

and filled without a syscall: the verdict loop hands a verdict it may
remember back as "accept, with these mark bits" (``memory_mark``: remember,
drop, a lifetime class, the snapshot's epoch), and a base chain after the
one that queued (``remember``, postrouting, right after the queue's hook for
either backend) adds the packet's key to the set with the class's timeout,
clears the bits and accepts or drops::

    meta mark & MEMORY == 0 ............................. accept   (every other packet: one rule)
    meta l4proto not tcp, udp, sctp ..................... clear the bits, drop/accept  (no port: not remembered)
    meta mark & MEMORY == remember|verdict|class|epoch .. add key to @remembered-<verdict>-v4/-v6 timeout T,
                                                          clear the bits, accept/drop
    meta mark & DROP == DROP ............................ clear the bits, drop    (the add failed)
    ..................................................... clear the bits, accept

A new snapshot empties the four sets and moves the epoch in the transaction
that updates the managed sets (the sets are deleted and made again with the
two chains that use them, ``forget_memory_commands``: a ``flush set`` would
send every listener to nftables events one message per key); a verdict the loop judged with an older
snapshot and handed back after that transaction carries the old epoch, is
not remembered, and is still carried out (drop stays drop). Only TCP, UDP and
SCTP keys are remembered (``th dport`` is their destination port), and only
for packets queued on postrouting (the DNS requests judged on prerouting are
judged with another destination on the xt backend). When an add fails (a
full set), the rule is skipped: the verdict is carried out, the next packet
of the key is queued again. A set never fills in practice: the agent empties
its flow table when it holds 65,536 keys and flushes the memory then, and a
set has room for twice that (``MEMORY_SIZE``).

Every rule carries a comment ``"<name> <fingerprint>"``; the fingerprint hashes
the rule's generated expression, so comparing comments tells whether the rules
in the kernel are the ones this module would generate, without comparing
libnftables' normalised listing with our input.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

Json = dict[str, Any]
Backend = Literal["nft", "xt"]
Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address

FAMILY: Final = "inet"
CHAIN: Final = "postrouting"
PREROUTING_CHAIN: Final = "prerouting"
DEFAULT_TABLE: Final = "kube-netpol"
DEFAULT_QUEUE_NUM: Final = 100
#: Not used by kube-proxy (0x4000 masquerade, 0x8000 drop) nor by Calico's default 0xffff0000 mask.
DEFAULT_MARK: Final = 0x200000
DNS_PORT: Final = 53
#: The bit on DNS answers queued for the DNS observation (below our DEFAULT_MARK, above kube-proxy's).
DNS_ANSWER_MARK: Final = 0x100000
#: New flows per second (and burst) one source address may send to the queue; 0 turns the limit off.
#: The agent judges tens of thousands of new flows per second (docs/performance.md): two flooding
#: pods at this rate left every other pod's connection on time in the lab, on a loaded 2-CPU VM,
#: where 5,000 did not always; 1,000 cut into a test pod opening 1,400 connections a second.
DEFAULT_NEW_FLOW_LIMIT: Final = 2000
DIVERT_CHAIN: Final = "divert"
DIVERT_DNS_CHAIN: Final = "divert-dns"
LIMITED_COUNTER: Final = "new-flows-limited"
#: Sources the limiter remembers at once; beyond, a new source is not limited (its flows are still judged).
METER_SIZE: Final = 65535
#: Seconds a source's bucket is kept after its last new flow (a full bucket refills in one second).
METER_TIMEOUT: Final = 10

#: The verdict memory: keys per set, the default seconds a key is remembered. The agent flushes
#: the memory whenever its flow table (kube_netpol.engine.flows.DEFAULT_MAX_FLOWS, 65,536 keys)
#: fills, so a set holds at most one table's keys plus those added before the flush lands: twice
#: the table leaves that room. A full set would take no new key until its keys time out, and every
#: new key's packets would go to the queue meanwhile.
MEMORY_SIZE: Final = 131072
DEFAULT_MEMORY_TIMEOUT: Final = 60
REMEMBER_CHAIN: Final = "remember"
REMEMBERED_ACCEPTED_COUNTER: Final = "remembered-accepted"
REMEMBERED_DROPPED_COUNTER: Final = "remembered-dropped"
#: The verdict loop's mark bits (6, below kube-proxy's and above our DEFAULT_MARK): remember this
#: verdict (1), it is a drop (1), its lifetime class (2), the snapshot epoch (2).
MEMORY_SHIFT: Final = 22
MEMORY_MARK: Final = 0x3F << MEMORY_SHIFT
MEMORY_REMEMBER: Final = 1 << MEMORY_SHIFT
MEMORY_DROP: Final = 2 << MEMORY_SHIFT
MEMORY_CLASS_SHIFT: Final = MEMORY_SHIFT + 2
MEMORY_EPOCH_SHIFT: Final = MEMORY_SHIFT + 4
MEMORY_EPOCHS: Final = 4
#: Seconds each lifetime class keeps a key, class 0 being the spec's ``memory_timeout`` (a Decision's
#: lifetime picks the longest class not above it; below 1 s, the key is not remembered).
MEMORY_CLASS_SECONDS: Final = (None, 30, 5, 1)
#: The protocols whose destination port ``th dport`` reads.
MEMORY_PROTOCOLS: Final = (6, 17, 132)
#: The netfilter hook number of postrouting (what NetfilterQueue's ``packet.hook`` says).
NF_INET_POST_ROUTING: Final = 4

#: srcnat (100) - 5: after routing and DNAT, before SNAT hides the pod's address.
PRIORITY_NATIVE: Final = 95
#: mangle (-150) - 10: the mark must be set before iptables' mangle POSTROUTING queues on it.
PRIORITY_XT: Final = -160
#: The remember chain: right after the hook that queued (our chain, or iptables' mangle), so that a
#: verdict's re-injected packet reaches it next.
PRIORITY_REMEMBER_NATIVE: Final = 96
PRIORITY_REMEMBER_XT: Final = -140
#: dstnat (-100) + 5: after DNAT, so a request to a Service is judged with the endpoint chosen.
PRIORITY_PREROUTING_NATIVE: Final = -95
#: mangle (-150) - 10: before iptables' mangle PREROUTING queues on the mark (and so before DNAT).
PRIORITY_PREROUTING_XT: Final = -160

_NAME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ManagedSet:
    """One address set of the pods whose traffic is judged in userspace."""

    name: str
    addr_type: str  # nftables data type of the elements
    protocol: str  # payload protocol whose saddr/daddr is looked up in the set
    version: int  # IP version of the elements


MANAGED_SETS: Final = (
    ManagedSet("managed-v4", "ipv4_addr", "ip", 4),
    ManagedSet("managed-v6", "ipv6_addr", "ip6", 6),
)
MANAGED_SET_BY_VERSION: Final = {s.version: s for s in MANAGED_SETS}
@dataclass(frozen=True)
class MemorySet:
    """One set of the verdict memory: the keys of one IP version the kernel answers with one verdict."""

    name: str
    key_type: tuple[str, ...]
    protocol: str
    version: int
    verdict: Literal["accept", "drop"]
    counter: str


MEMORY_SETS: Final = tuple(
    MemorySet(f"remembered-{verdict}-v{version}", (addr, addr, "inet_proto", "inet_service"), protocol, version,
              verdict, REMEMBERED_ACCEPTED_COUNTER if verdict == "accept" else REMEMBERED_DROPPED_COUNTER)
    for verdict in ("accept", "drop")
    for version, addr, protocol in ((4, "ipv4_addr", "ip"), (6, "ipv6_addr", "ip6"))
)  # fmt: skip

#: The limiter's dynamic sets: per source address, its token bucket of new flows.
METER_SETS: Final = (
    ManagedSet("new-flows-v4", "ipv4_addr", "ip", 4),
    ManagedSet("new-flows-v6", "ipv6_addr", "ip6", 6),
)


@dataclass(frozen=True)
class RulesetSpec:
    """Everything the generated table depends on."""

    table: str = DEFAULT_TABLE
    backend: Backend = "nft"
    queue_num: int = DEFAULT_QUEUE_NUM
    fail_open: bool = True  # queue with "bypass": packets pass when no reader listens
    accept_root: bool = True  # accept packets of sockets owned by uid 0
    mark: int = DEFAULT_MARK  # our bit: "queue me" to iptables (xt), "judged at prerouting" (bug-1766 fix)
    divert_all: bool = False  # queue every new connection, not only managed addresses
    netfilter_bug_1766_fix: bool = True  # judge new DNS requests on prerouting (see the module doc)
    new_flow_limit: int = DEFAULT_NEW_FLOW_LIMIT  # new flows/s per source sent to the queue; 0: no limit
    verdict_memory: bool = False  # the kernel remembers verdicts (see the module doc)
    memory_timeout: int = DEFAULT_MEMORY_TIMEOUT  # seconds a key with no lifetime of its own is remembered
    memory_epoch: int = 0  # which snapshot's verdicts the remember chain takes (generation % MEMORY_EPOCHS)
    observe_dns: bool = False  # queue DNS answers to managed pods for the DNS observation (see the module doc)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.table):
            raise ValueError(f"invalid table name {self.table!r}")
        if self.backend not in ("nft", "xt"):
            raise ValueError(f"invalid queue backend {self.backend!r}")
        if not 0 <= self.queue_num <= 0xFFFF:
            raise ValueError(f"queue number {self.queue_num} out of range 0-65535")
        if not 0 < self.mark < 0xFFFFFFFF:
            raise ValueError(f"mark {self.mark:#x} must be a non-zero mask narrower than 32 bits")
        if not 0 <= self.new_flow_limit <= 10_000_000:
            raise ValueError(f"new flow limit {self.new_flow_limit} out of range 0-10000000 (0: no limit)")
        if self.observe_dns and self.mark & DNS_ANSWER_MARK:
            raise ValueError(f"mark {self.mark:#x} overlaps the DNS answer bit {DNS_ANSWER_MARK:#x}")
        if self.mark & MEMORY_MARK:
            raise ValueError(f"mark {self.mark:#x} overlaps the verdict memory's bits {MEMORY_MARK:#x}")
        if not 1 <= self.memory_timeout <= 86400:
            raise ValueError(f"verdict memory timeout {self.memory_timeout} out of range 1-86400 seconds")
        if not 0 <= self.memory_epoch < MEMORY_EPOCHS:
            raise ValueError(f"verdict memory epoch {self.memory_epoch} out of range 0-{MEMORY_EPOCHS - 1}")

    @property
    def priority(self) -> int:
        """The postrouting chain's priority."""
        return PRIORITY_NATIVE if self.backend == "nft" else PRIORITY_XT


@dataclass(frozen=True)
class Chain:
    """One base chain of our table, and the iptables mangle chain that queues for it (xt backend)."""

    name: str
    hook: str
    priority: int
    xt_chain: str


def chains(spec: RulesetSpec) -> tuple[Chain, ...]:
    """Our base chains for ``spec``, in the order they are created."""
    xt = spec.backend == "xt"
    out = [Chain(CHAIN, "postrouting", spec.priority, "POSTROUTING")]
    if spec.netfilter_bug_1766_fix:
        prio = PRIORITY_PREROUTING_XT if xt else PRIORITY_PREROUTING_NATIVE
        out.append(Chain(PREROUTING_CHAIN, "prerouting", prio, "PREROUTING"))
    if spec.verdict_memory:
        prio = PRIORITY_REMEMBER_XT if xt else PRIORITY_REMEMBER_NATIVE
        out.append(Chain(REMEMBER_CHAIN, "postrouting", prio, ""))
    return tuple(out)


def divert_chains(spec: RulesetSpec) -> tuple[str, ...]:
    """The regular chains the divert rules go to (the limiter), none without a limit."""
    if not spec.new_flow_limit:
        return ()
    return (DIVERT_CHAIN, DIVERT_DNS_CHAIN) if spec.netfilter_bug_1766_fix else (DIVERT_CHAIN,)


def chain_names(spec: RulesetSpec) -> tuple[str, ...]:
    """Every chain of the table: the regular ones first (base chains' rules go to them)."""
    return divert_chains(spec) + tuple(c.name for c in chains(spec))


#: Every iptables mangle chain that may hold our queue rule (cleanup looks in all of them).
XT_CHAINS: Final = ("POSTROUTING", "PREROUTING")


def xt_chains(spec: RulesetSpec) -> tuple[str, ...]:
    """The iptables mangle chains that need our queue rule (xt backend)."""
    return tuple(c.xt_chain for c in chains(spec) if c.xt_chain)


# --- the rules, as data -------------------------------------------------------


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, fld: str) -> Json:
    return {"payload": {"protocol": protocol, "field": fld}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


ACCEPT: Final = "accept"
DIVERT: Final = "divert"
#: Divert, and set our bit so the postrouting chain knows the packet was judged.
DIVERT_MARKED: Final = "divert-marked"
#: Clear our bit (the xt postrouting rule must not queue the packet again) and accept.
UNMARK_ACCEPT: Final = "unmark-accept"
#: Set the DNS answer bit and divert (the DNS observation).
DIVERT_DNS_ANSWER: Final = "divert-dns-answer"
#: Count in the limiter's counter and drop.
LIMITED_DROP: Final = "limited-drop"
GOTO_DIVERT: Final = "goto-divert"
GOTO_DIVERT_DNS: Final = "goto-divert-dns"
#: The remember chain: leave it (an unmarked packet); add the key, clear the bits and accept/drop (one
#: rule, so that a remembered packet walks no further; a failed add skips to forget-*); clear the bits
#: and drop/accept.
NOT_REMEMBERED: Final = "not-remembered"
REMEMBER_ACCEPT: Final = "remember-accept"
REMEMBER_DROP: Final = "remember-drop"
FORGET_DROP: Final = "forget-drop"
FORGET_ACCEPT: Final = "forget-accept"
#: A key the kernel remembers: count, accept/drop.
REMEMBERED_ACCEPT: Final = "remembered-accept"
REMEMBERED_DROP: Final = "remembered-drop"
Action = Literal["accept", "divert", "divert-marked", "divert-dns-answer", "unmark-accept", "limited-drop", "goto-divert", "goto-divert-dns",
                 "not-remembered", "remember-accept", "remember-drop", "forget-drop", "forget-accept", "remembered-accept", "remembered-drop"]

MATCH_ICMPV6_ND: Final = (
    _match(_meta("l4proto"), 58),
    _match(_payload("icmpv6", "type"), {"range": [133, 137]}),
)
MATCH_ROOT_UID: Final = (_match(_meta("skuid"), 0),)
MATCH_ESTABLISHED: Final = (_match({"ct": {"key": "state"}}, ["established", "related"], op="in"),)
MATCH_LOOPBACK: Final = (_match(_meta("iiftype"), "loopback"),)
MATCH_NOT_UDP: Final = (_match(_meta("l4proto"), 17, op="!="),)
MATCH_NOT_DNS: Final = (_match(_payload("udp", "dport"), DNS_PORT, op="!="),)
MATCH_DNS_ANSWER: Final = (
    _match({"ct": {"key": "direction"}}, "reply"),
    _match(_meta("l4proto"), 17),
    _match(_payload("udp", "sport"), DNS_PORT),
)


def _dns_answer_rules(spec: RulesetSpec) -> list[Rule]:
    if not spec.observe_dns:
        return []
    if spec.divert_all:
        return [Rule("dns-answer", MATCH_DNS_ANSWER, DIVERT_DNS_ANSWER)]
    return [
        Rule(f"dns-answer-v{s.version}", (*MATCH_DNS_ANSWER, _match(_payload(s.protocol, "daddr"), "@" + s.name)),
             DIVERT_DNS_ANSWER)
        for s in MANAGED_SETS
    ]


def _match_mark(mark: int) -> tuple[Json, ...]:
    return (_match({"&": [_meta("mark"), mark]}, mark),)


@dataclass(frozen=True)
class Rule:
    """One rule of our chain: all ``matches`` hold -> ``action``."""

    name: str
    matches: tuple[Json, ...]
    action: Action


def _divert_rules(spec: RulesetSpec, action: Action) -> list[Rule]:
    if spec.new_flow_limit:
        action = GOTO_DIVERT if action == DIVERT else GOTO_DIVERT_DNS
    if spec.divert_all:
        return [Rule("divert-all", (), action)]
    return [
        Rule(f"{s.name}-{fld}", (_match(_payload(s.protocol, fld), "@" + s.name),), action)
        for s in MANAGED_SETS
        for fld in ("saddr", "daddr")
    ]


def _limiter_rules(spec: RulesetSpec) -> list[Rule]:
    rate = {"rate": spec.new_flow_limit, "per": "second", "burst": spec.new_flow_limit, "inv": True}
    out = []
    for s in METER_SETS:
        update = {"set": {"op": "update", "elem": _payload(s.protocol, "saddr"), "set": "@" + s.name,
                          "stmt": [{"limit": rate}]}}
        out.append(Rule(f"limit-v{s.version}", (_match(_meta("nfproto"), f"ipv{s.version}"), update), LIMITED_DROP))
    return out


def memory_key(version: int) -> Json:
    """The verdict memory's key of a packet: addresses, protocol, destination port."""
    protocol = "ip" if version == 4 else "ip6"
    return {"concat": [_payload(protocol, "saddr"), _payload(protocol, "daddr"), _meta("l4proto"),
                       _payload("th", "dport")]}


def memory_mark(drop: bool, lifetime_class: int, epoch: int) -> int:
    """The mark bits a verdict is handed back with so that the remember chain keeps it."""
    return (MEMORY_REMEMBER | (MEMORY_DROP if drop else 0) | lifetime_class << MEMORY_CLASS_SHIFT
            | epoch << MEMORY_EPOCH_SHIFT)


def class_seconds(lifetime_class: int, timeout: int) -> int:
    """Seconds the kernel keeps a key of ``lifetime_class`` with the memory's ``timeout``."""
    seconds = MEMORY_CLASS_SECONDS[lifetime_class]
    return timeout if seconds is None else min(seconds, timeout)


def mark_seconds(mark: int, timeout: int) -> int:
    """Seconds the kernel keeps the key of a verdict handed back with ``mark`` (0: not remembered)."""
    if not mark & MEMORY_REMEMBER:
        return 0
    return class_seconds(mark >> MEMORY_CLASS_SHIFT & 3, timeout)


def memory_class(lifetime: float | None) -> int | None:
    """The lifetime class of a verdict that lives ``lifetime`` seconds (None: until the next snapshot);
    None when it must not be remembered (shorter than the shortest class)."""
    if lifetime is None:
        return 0
    for index, seconds in enumerate(MEMORY_CLASS_SECONDS):
        if seconds is not None and seconds <= lifetime:
            return index
    return None


def _lookup_rules(spec: RulesetSpec) -> list[Rule]:
    if not spec.verdict_memory:
        return []
    return [
        Rule(s.name, (_match(memory_key(s.version), "@" + s.name),),
             REMEMBERED_ACCEPT if s.verdict == "accept" else REMEMBERED_DROP)
        for s in MEMORY_SETS
    ]


def _remember_rules(spec: RulesetSpec) -> list[Rule]:
    mark = _meta("mark")
    out = [Rule("not-remembered", (_match({"&": [mark, MEMORY_MARK]}, 0),), NOT_REMEMBERED)]
    # ``th dport`` is a destination port only for these protocols: any other marked packet gets its
    # verdict unremembered. Comparisons in two rules here, not an anonymous set in each of the 16
    # below: those sets took 0.4 ms of the 1.9 ms that refilling this chain costs every snapshot.
    other = tuple(_match(_meta("l4proto"), number, op="!=") for number in MEMORY_PROTOCOLS)
    drop_bit = _match({"&": [mark, MEMORY_DROP]}, MEMORY_DROP)
    out.append(Rule("other-protocol-drop", (*other, drop_bit), FORGET_DROP))
    out.append(Rule("other-protocol", other, FORGET_ACCEPT))
    for s in MEMORY_SETS:
        for lifetime_class in range(len(MEMORY_CLASS_SECONDS)):
            bits = memory_mark(s.verdict == "drop", lifetime_class, spec.memory_epoch)
            elem = {"elem": {"val": memory_key(s.version), "timeout": class_seconds(lifetime_class, spec.memory_timeout)}}
            add = {"set": {"op": "add", "elem": elem, "set": "@" + s.name}}
            out.append(Rule(f"{s.name}-class{lifetime_class}",
                            (_match({"&": [mark, MEMORY_MARK]}, bits), _match(_meta("nfproto"), f"ipv{s.version}"),
                             add), REMEMBER_DROP if s.verdict == "drop" else REMEMBER_ACCEPT))  # fmt: skip
    out.append(Rule("drop", (drop_bit,), FORGET_DROP))
    out.append(Rule("accept", (), FORGET_ACCEPT))
    return out


def rules(spec: RulesetSpec, chain: str = CHAIN) -> list[Rule]:
    """The rules of our chain ``chain`` for ``spec``, in order."""
    if chain == REMEMBER_CHAIN and spec.verdict_memory:
        return _remember_rules(spec)
    if chain in divert_chains(spec):
        return [*_limiter_rules(spec), Rule("divert", (), DIVERT if chain == DIVERT_CHAIN else DIVERT_MARKED)]
    if chain == PREROUTING_CHAIN and spec.netfilter_bug_1766_fix:
        return [
            Rule("loopback", MATCH_LOOPBACK, ACCEPT),
            Rule("not-udp", MATCH_NOT_UDP, ACCEPT),
            Rule("not-dns", MATCH_NOT_DNS, ACCEPT),
            Rule("established", MATCH_ESTABLISHED, ACCEPT),
            *_divert_rules(spec, DIVERT_MARKED),
        ]
    if chain != CHAIN:
        raise ValueError(f"no chain {chain!r} in this ruleset")
    out = []
    if spec.netfilter_bug_1766_fix:
        out.append(Rule("judged-at-prerouting", _match_mark(spec.mark), UNMARK_ACCEPT))
    out += _dns_answer_rules(spec)  # before root-uid and established: answers are replies, maybe from root
    out.append(Rule("icmpv6-nd", MATCH_ICMPV6_ND, ACCEPT))
    if spec.accept_root:
        out.append(Rule("root-uid", MATCH_ROOT_UID, ACCEPT))
    out.append(Rule("established", MATCH_ESTABLISHED, ACCEPT))
    return out + _lookup_rules(spec) + _divert_rules(spec, DIVERT)


def _set_mark(spec: RulesetSpec) -> Json:
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), spec.mark]}}}


def action_statements(spec: RulesetSpec, action: str) -> list[Json]:
    """The statements that carry out ``action`` for the spec's backend."""
    if action == ACCEPT:
        return [{"accept": None}]
    if action == LIMITED_DROP:
        return [{"counter": LIMITED_COUNTER}, {"drop": None}]
    if action == REMEMBERED_ACCEPT:
        return [{"counter": REMEMBERED_ACCEPTED_COUNTER}, {"accept": None}]
    if action == REMEMBERED_DROP:
        return [{"counter": REMEMBERED_DROPPED_COUNTER}, {"drop": None}]
    if action == NOT_REMEMBERED:
        return [{"accept": None}]
    if action in (REMEMBER_ACCEPT, REMEMBER_DROP, FORGET_DROP, FORGET_ACCEPT):
        # After a remember rule's add (its last match; a failed add, a full set, skips to forget-*).
        clear = {"mangle": {"key": _meta("mark"), "value": {"&": [_meta("mark"), 0xFFFFFFFF ^ MEMORY_MARK]}}}
        return [clear, {"drop": None} if action in (FORGET_DROP, REMEMBER_DROP) else {"accept": None}]
    if action == GOTO_DIVERT:
        return [{"goto": {"target": DIVERT_CHAIN}}]
    if action == GOTO_DIVERT_DNS:
        return [{"goto": {"target": DIVERT_DNS_CHAIN}}]
    if action == UNMARK_ACCEPT:
        keep_others = 0xFFFFFFFF ^ spec.mark
        return [{"mangle": {"key": _meta("mark"), "value": {"&": [_meta("mark"), keep_others]}}}, {"accept": None}]
    if action == DIVERT_DNS_ANSWER:
        bits = DNS_ANSWER_MARK | (spec.mark if spec.backend == "xt" else 0)
        mark = {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), bits]}}}
        if spec.backend == "xt":
            return [mark, {"accept": None}]  # iptables' mangle rule queues it (our bit is set)
        answer_queue: Json = {"num": spec.queue_num}
        if spec.fail_open:
            answer_queue["flags"] = ["bypass"]
        return [mark, {"queue": answer_queue}]
    if spec.backend == "xt":
        # Set our bit (keeping the others) and leave the chain; iptables' mangle rule queues it.
        # The bit also survives to postrouting, which is what "marked" asks for.
        return [_set_mark(spec), {"accept": None}]
    queue: Json = {"num": spec.queue_num}
    if spec.fail_open:
        queue["flags"] = ["bypass"]
    if action == DIVERT_MARKED:
        return [_set_mark(spec), {"queue": queue}]  # the bit is set before the verdict re-injects it
    return [{"queue": queue}]


# --- JSON objects and commands --------------------------------------------------


def _table_ref(spec: RulesetSpec) -> Json:
    return {"family": FAMILY, "table": spec.table}


def table_object(table: str) -> Json:
    return {"table": {"family": FAMILY, "name": table}}


def set_object(spec: RulesetSpec, s: ManagedSet) -> Json:
    return {"set": {**_table_ref(spec), "name": s.name, "type": s.addr_type}}


def meter_set_object(spec: RulesetSpec, s: ManagedSet) -> Json:
    # No "dynamic" flag: libnftables 1.0.6's JSON parser does not know it; nft sets it on the set
    # itself when a rule updates the set from the packet path (the kernel lists "flags dynamic,timeout").
    return {"set": {**_table_ref(spec), "name": s.name, "type": s.addr_type, "flags": ["timeout"],
                    "timeout": METER_TIMEOUT, "size": METER_SIZE}}


def memory_set_object(spec: RulesetSpec, s: MemorySet) -> Json:
    return {"set": {**_table_ref(spec), "name": s.name, "type": list(s.key_type), "flags": ["timeout"],
                    "timeout": spec.memory_timeout, "size": MEMORY_SIZE}}


def counter_object(spec: RulesetSpec, name: str = LIMITED_COUNTER) -> Json:
    return {"counter": {**_table_ref(spec), "name": name}}


def meter_sets(spec: RulesetSpec) -> tuple[ManagedSet, ...]:
    return METER_SETS if spec.new_flow_limit else ()


def memory_sets(spec: RulesetSpec) -> tuple[MemorySet, ...]:
    return MEMORY_SETS if spec.verdict_memory else ()


def counters(spec: RulesetSpec) -> tuple[str, ...]:
    out: tuple[str, ...] = (LIMITED_COUNTER,) if spec.new_flow_limit else ()
    if spec.verdict_memory:
        out += (REMEMBERED_ACCEPTED_COUNTER, REMEMBERED_DROPPED_COUNTER)
    return out


def flush_memory_commands(spec: RulesetSpec) -> list[Json]:
    """Empty the memory's sets as they are (the repair's way: the chains may be missing then)."""
    return [{"flush": {"set": {**_table_ref(spec), "name": s.name}}} for s in memory_sets(spec)]


#: The chains whose rules use the memory's sets (lookups, adds).
MEMORY_CHAINS: Final = (CHAIN, REMEMBER_CHAIN)


def forget_memory_commands(spec: RulesetSpec) -> list[Json]:
    """Forget every remembered verdict: the memory's sets made again, with the two chains that use them.

    Not ``flush set``: while anything listens to nftables events (the guard's
    monitor does), the kernel sends one message per flushed element, 75 ms
    for 65,536 keys against 15 unheard (``bench/bench_memory_control.py``); a
    set deleted takes its elements without a word. One transaction, so no
    packet sees the chains without their rules.
    """
    if not spec.verdict_memory:
        return []
    cmds: list[Json] = [{"flush": chain_object(spec, name, base=False)} for name in MEMORY_CHAINS]
    cmds += [{"delete": {"set": {**_table_ref(spec), "name": s.name}}} for s in MEMORY_SETS]
    cmds += [{"add": memory_set_object(spec, s)} for s in MEMORY_SETS]
    return cmds + [{"add": r} for name in MEMORY_CHAINS for r in rule_objects(spec, name)]


def chain_object(spec: RulesetSpec, name: str = CHAIN, *, base: bool = True) -> Json:
    """Our chain ``name`` with its hook (``base``), or just its reference (for flush and delete).

    The limiter's chains are regular chains: they have no hook either way.
    """
    chain: Json = {**_table_ref(spec), "name": name}
    if base and name not in divert_chains(spec):
        ours = {c.name: c for c in chains(spec)}
        if name not in ours:
            raise ValueError(f"no chain {name!r} in this ruleset")
        c = ours[name]
        chain.update(type="filter", hook=c.hook, prio=c.priority, policy="accept")
    return {"chain": chain}


def fingerprint(expr: list[Json]) -> str:
    return hashlib.sha256(json.dumps(expr, sort_keys=True).encode()).hexdigest()[:12]


def rule_objects(spec: RulesetSpec, chain: str = CHAIN) -> list[Json]:
    """The rules of ``chain`` as libnftables JSON objects, shared between calls: never modify them.

    Rendered once per (spec, chain): with the verdict memory every snapshot re-adds the two chains
    that use it, and rendering (each rule's fingerprint) took 1.5 ms of a 4.5 ms sync.
    """
    return list(_rendered_rules(spec, chain))


@functools.lru_cache(maxsize=64)  # a few specs live at once: the memory's 4 epochs, divert-all on/off
def _rendered_rules(spec: RulesetSpec, chain: str) -> tuple[Json, ...]:
    objects = []
    for rule in rules(spec, chain):
        expr = [*rule.matches, *action_statements(spec, rule.action)]
        comment = f"{rule.name} {fingerprint(expr)}"
        objects.append({"rule": {**_table_ref(spec), "chain": chain, "expr": expr, "comment": comment}})
    return tuple(objects)


def rule_comments(spec: RulesetSpec, chain: str = CHAIN) -> list[str]:
    return [o["rule"]["comment"] for o in rule_objects(spec, chain)]


def create_commands(spec: RulesetSpec) -> list[Json]:
    """Commands that build the whole (empty-set) table from nothing."""
    cmds = [{"add": table_object(spec.table)}]
    cmds += [{"add": set_object(spec, s)} for s in MANAGED_SETS]
    cmds += [{"add": meter_set_object(spec, s)} for s in meter_sets(spec)]
    cmds += [{"add": memory_set_object(spec, s)} for s in memory_sets(spec)]
    cmds += [{"add": counter_object(spec, name)} for name in counters(spec)]
    cmds += [{"add": chain_object(spec, name)} for name in chain_names(spec)]
    for name in chain_names(spec):
        cmds += [{"add": r} for r in rule_objects(spec, name)]
    return cmds


def replace_rules_commands(spec: RulesetSpec, chain: str = CHAIN) -> list[Json]:
    """Empty our chain ``chain`` and fill it again; the chain (and its hook) stays."""
    flush: list[Json] = [{"flush": chain_object(spec, chain, base=False)}]
    return flush + [{"add": r} for r in rule_objects(spec, chain)]


def delete_table_commands(table: str) -> list[Json]:
    """Delete the table whether or not it exists ("add" first makes the delete always valid)."""
    return [{"add": table_object(table)}, {"delete": table_object(table)}]


def probe_commands(table: str, statement: Json) -> list[Json]:
    """Create a throwaway table with ``statement`` in a regular chain, then delete it.

    One transaction: the kernel builds the rule (failing with ENOENT when it
    lacks the expression) and then drops the table, so nothing is ever left
    behind or hooked.
    """
    ref = {"family": FAMILY, "table": table}
    return [
        {"add": table_object(table)},
        {"add": {"chain": {**ref, "name": "probe"}}},
        {"add": {"rule": {**ref, "chain": "probe", "expr": [statement]}}},
        {"delete": table_object(table)},
    ]


#: The statement whose support decides the queue backend.
NATIVE_QUEUE_PROBE: Final[Json] = {"queue": {"num": 0, "flags": ["bypass"]}}


# --- set elements -------------------------------------------------------------


def normalize_addresses(addresses: Iterable[Address], version: int) -> frozenset[str]:
    """Addresses as libnftables lists them (compressed text); rejects the other family."""
    out = set()
    for a in addresses:
        if version == 4 and type(a) is bytes and len(a) == 4:
            out.add(socket.inet_ntop(socket.AF_INET, a))  # the agent's own form: 0.3 µs, not 6 (ipaddress)
            continue
        ip = a if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(a)
        if ip.version != version:
            raise ValueError(f"{ip} is not an IPv{version} address")
        out.add(str(ip))
    return frozenset(out)


@dataclass(frozen=True)
class ElementDelta:
    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def diff_elements(current: Iterable[str], desired: Iterable[str]) -> ElementDelta:
    cur, want = frozenset(current), frozenset(desired)
    return ElementDelta(add=want - cur, remove=cur - want)


def _sorted_addresses(addresses: Iterable[str]) -> list[str]:
    return sorted(addresses, key=ipaddress.ip_address)


def element_commands(spec: RulesetSpec, set_name: str, delta: ElementDelta) -> list[Json]:
    ref = {**_table_ref(spec), "name": set_name}
    cmds = []
    if delta.remove:
        cmds.append({"delete": {"element": {**ref, "elem": _sorted_addresses(delta.remove)}}})
    if delta.add:
        cmds.append({"add": {"element": {**ref, "elem": _sorted_addresses(delta.add)}}})
    return cmds


Elements = Mapping[str, frozenset[str]]  # set name -> addresses


def sync_commands(
    old: RulesetSpec, new: RulesetSpec, current: Elements, desired: Elements
) -> list[Json]:
    """One transaction taking a table built for ``old`` with ``current`` elements to ``new``/``desired``.

    Only the rules may change between the specs (divert-all on/off, the
    memory's epoch), not the chains: a chain whose rules differ is flushed and
    refilled, never deleted. With the verdict memory, it is flushed too: the
    call is for a new snapshot (so the commands are never empty then).
    """
    if chain_names(old) != chain_names(new):
        raise ValueError("sync cannot add or remove chains; reconcile does")
    cmds: list[Json] = forget_memory_commands(new)  # refills the chains that use the memory, too
    refilled = MEMORY_CHAINS if new.verdict_memory else ()
    for name in chain_names(new):
        # Equal specs make equal rules: no need to render and hash them (most syncs only move set elements).
        if name not in refilled and old != new and rule_comments(old, name) != rule_comments(new, name):
            cmds += replace_rules_commands(new, name)
    for s in MANAGED_SETS:
        cmds += element_commands(new, s.name, diff_elements(current.get(s.name, ()), desired.get(s.name, ())))
    return cmds


# --- reading the kernel's table -------------------------------------------------


@dataclass
class SetState:
    type: Any
    flags: tuple[str, ...]
    elements: frozenset[str] | None  # None: some element is not a plain address
    timeout: Any = None
    size: Any = None


@dataclass
class ChainState:
    attrs: dict[str, Any]  # type/hook/prio/policy; empty for a regular chain
    rule_comments: list[str | None] = field(default_factory=list)


@dataclass
class TableState:
    sets: dict[str, SetState] = field(default_factory=dict)
    chains: dict[str, ChainState] = field(default_factory=dict)
    counters: set[str] = field(default_factory=set)


_CHAIN_ATTRS: Final = ("type", "hook", "prio", "policy")


def _plain_elements(raw: list[Any]) -> frozenset[str] | None:
    # libnftables lists addresses as str(ipaddress) writes them (RFC 5952), so the text is taken
    # as it is when it reads back the same; only other spellings pay for normalising (10,000
    # elements: 3 ms against 30). The set's type is checked on its own: an ipv4_addr or
    # ipv6_addr set lists nothing but addresses, prefixes and ranges.
    if all(type(e) is str for e in raw):
        texts = frozenset(raw)
        if all(":" not in e or e == e.lower() for e in texts) and not any("::ffff:" in e and "." in e for e in texts):
            return _valid_or_none(texts)
    out = set()
    for e in raw:
        if not isinstance(e, str):
            return None  # prefix, range or element with options: not what we create
        try:
            out.add(str(ipaddress.ip_address(e)))
        except ValueError:
            return None
    return frozenset(out)


def _valid_or_none(texts: frozenset[str]) -> frozenset[str] | None:
    """``texts`` if each is an address (a prefix such as 10.0.0.0/8 is not)."""
    for e in texts:
        if "/" in e or "-" in e:
            return None
    return texts


def parse_table(listing: Iterable[Json]) -> TableState:
    """Parse the objects of ``list table`` (libnftables JSON output, ``nftables`` array)."""
    state = TableState()
    for obj in listing:
        if "set" in obj:
            s = obj["set"]
            flags = s.get("flags", ())
            state.sets[s["name"]] = SetState(
                type=s.get("type"),
                flags=tuple(sorted([flags] if isinstance(flags, str) else flags)),
                elements=_plain_elements(s.get("elem", [])),
                timeout=s.get("timeout"),
                size=s.get("size"),
            )
        elif "chain" in obj:
            c = obj["chain"]
            state.chains[c["name"]] = ChainState({k: c[k] for k in _CHAIN_ATTRS if k in c})
        elif "rule" in obj:
            r = obj["rule"]
            state.chains.setdefault(r["chain"], ChainState({})).rule_comments.append(r.get("comment"))
        elif "counter" in obj:
            state.counters.add(obj["counter"]["name"])
    return state


def installed_elements(state: TableState | None) -> dict[str, frozenset[str]]:
    """Elements of our sets as the kernel has them (empty for missing or foreign-shaped sets)."""
    out = {}
    for s in MANAGED_SETS:
        st = state.sets.get(s.name) if state else None
        out[s.name] = st.elements if st and _set_matches(st, s) and st.elements is not None else frozenset()
    return out


def installed_divert_all(spec: RulesetSpec, state: TableState | None) -> bool | None:
    """The divert-all mode whose rules the kernel's postrouting chain holds, None if neither matches.

    The earlier run may have had the bug-1766 workaround or the limiter the
    other way: their rules count too, so switching them keeps the mode.
    """
    chain = state.chains.get(CHAIN) if state else None
    if chain is None:
        return None
    for mode in (False, True):
        for fix in (spec.netfilter_bug_1766_fix, not spec.netfilter_bug_1766_fix):
            for limit in (spec.new_flow_limit, 0 if spec.new_flow_limit else DEFAULT_NEW_FLOW_LIMIT):
                for memory in (spec.verdict_memory, not spec.verdict_memory):
                    for dns in (spec.observe_dns, not spec.observe_dns):
                        other = replace(spec, divert_all=mode, netfilter_bug_1766_fix=fix, new_flow_limit=limit,
                                        verdict_memory=memory, observe_dns=dns)
                        if chain.rule_comments == rule_comments(other):
                            return mode
    return None


def _set_matches(st: SetState, s: ManagedSet) -> bool:
    return st.type == s.addr_type and st.flags == () and st.elements is not None


def _memory_matches(spec: RulesetSpec, st: SetState, s: MemorySet) -> bool:
    return (st.type == list(s.key_type) and "timeout" in st.flags and st.timeout == spec.memory_timeout
            and st.size == MEMORY_SIZE)


def _meter_matches(st: SetState, s: ManagedSet) -> bool:
    # libnftables lists a dynamic set's flags without "dynamic"; type, timeout and size say enough.
    return st.type == s.addr_type and "timeout" in st.flags and st.timeout == METER_TIMEOUT and st.size == METER_SIZE


@dataclass(frozen=True)
class TableComparison:
    """How the kernel's table differs from ``spec`` (everything empty/True: it is as wanted)."""

    missing_sets: tuple[str, ...]  # ours, not in the kernel
    bad_sets: tuple[str, ...]  # ours, in the kernel with another shape
    foreign_sets: tuple[str, ...]  # in our table, not ours
    missing_counters: tuple[str, ...]
    foreign_chains: tuple[str, ...]
    chain_ok: Mapping[str, bool]  # ours: present with the right hook and priority
    rules_ok: Mapping[str, bool]  # ours: present, right hook, rules as generated
    present_chains: tuple[str, ...]  # ours that the kernel has (right or wrong)


def compare_table(spec: RulesetSpec, state: TableState) -> TableComparison:
    """Compare the kernel's table (``state``) with what ``spec`` generates, elements aside."""
    wanted_sets: dict[str, tuple[Any, Callable[[SetState, Any], bool]]] = {
        s.name: (s, _set_matches) for s in MANAGED_SETS}
    wanted_sets.update({s.name: (s, _meter_matches) for s in meter_sets(spec)})
    wanted_sets.update({s.name: (s, lambda st, m: _memory_matches(spec, st, m)) for s in memory_sets(spec)})
    missing_sets = tuple(name for name in wanted_sets if name not in state.sets)
    bad_sets = tuple(
        name for name, (s, matches) in wanted_sets.items() if name in state.sets and not matches(state.sets[name], s)
    )
    foreign_sets = tuple(sorted(set(state.sets) - set(wanted_sets)))
    missing_counters = tuple(c for c in counters(spec) if c not in state.counters)
    ours = chain_names(spec)
    foreign_chains = tuple(sorted(n for n in state.chains if n not in ours))
    chain_ok: dict[str, bool] = {}
    rules_ok: dict[str, bool] = {}
    for name in ours:
        have = state.chains.get(name)
        want_attrs = {k: v for k, v in chain_object(spec, name)["chain"].items() if k in _CHAIN_ATTRS}
        chain_ok[name] = have is not None and have.attrs == want_attrs
        # A set or counter re-created means its rules are too: they pin what they use.
        rules_ok[name] = (
            have is not None and chain_ok[name] and not bad_sets and not missing_sets and not missing_counters
            and have.rule_comments == rule_comments(spec, name)
        )
    return TableComparison(missing_sets, bad_sets, foreign_sets, missing_counters, foreign_chains, chain_ok,
                           rules_ok, tuple(n for n in ours if n in state.chains))


def reconcile_commands(
    spec: RulesetSpec, state: TableState | None, desired: Elements | None
) -> tuple[list[Json], dict[str, frozenset[str]]]:
    """One transaction that brings whatever an earlier run (or anyone since) left to ``spec``.

    ``desired`` None keeps the elements of sets that have the right shape.
    Returns the commands (empty when nothing differs) and the elements the sets
    hold afterwards. A base chain of ours is deleted and re-created only when
    its hook or priority is wrong (a backend change since the earlier run);
    chains that are not ours for ``spec`` (e.g. "prerouting" once the bug-1766
    workaround is off) are deleted.
    """
    cmds: list[Json]
    if state is None:
        elements: dict[str, frozenset[str]] = {s.name: frozenset() for s in MANAGED_SETS}
        cmds = create_commands(spec)
        if desired is not None:
            for s in MANAGED_SETS:
                delta = diff_elements((), desired.get(s.name, ()))
                cmds += element_commands(spec, s.name, delta)
                elements[s.name] = delta.add
        return cmds, elements

    diff = compare_table(spec, state)
    present = diff.present_chains
    cmds = []
    # Empty every chain that goes or gets new rules first: rules pin the sets, chains and counters they use.
    to_flush = list(diff.foreign_chains) + [n for n in present if not diff.rules_ok[n]]
    cmds += [{"flush": chain_object(spec, n, base=False)} for n in to_flush]
    to_delete = list(diff.foreign_chains) + [n for n in present if not diff.chain_ok[n]]
    cmds += [{"delete": chain_object(spec, n, base=False)} for n in to_delete]
    for name in diff.bad_sets + diff.foreign_sets:
        cmds.append({"delete": {"set": {**_table_ref(spec), "name": name}}})

    meters = {s.name: s for s in meter_sets(spec)}
    memory = {s.name: s for s in memory_sets(spec)}
    for name in diff.missing_sets + diff.bad_sets:
        if name in meters:
            cmds.append({"add": meter_set_object(spec, meters[name])})
        elif name in memory:
            cmds.append({"add": memory_set_object(spec, memory[name])})
        else:
            cmds.append({"add": set_object(spec, next(s for s in MANAGED_SETS if s.name == name))})
    cmds += [{"add": counter_object(spec, name)} for name in diff.missing_counters]
    # What an earlier run (or this one, before the drift) remembered may be from other policies.
    kept = set(diff.missing_sets + diff.bad_sets)
    cmds += [c for c in flush_memory_commands(spec) if c["flush"]["set"]["name"] not in kept]
    ours = chain_names(spec)
    cmds += [{"add": chain_object(spec, n)} for n in ours if not diff.chain_ok[n]]
    for name in ours:
        if not diff.rules_ok[name]:
            cmds += [{"add": r} for r in rule_objects(spec, name)]

    current = installed_elements(state)
    elements = dict(current)
    if desired is not None:
        for s in MANAGED_SETS:
            delta = diff_elements(current[s.name], desired.get(s.name, ()))
            cmds += element_commands(spec, s.name, delta)
            elements[s.name] = frozenset(desired.get(s.name, ()))
    return cmds, elements
