"""The kube-netpol nftables ruleset, described once as data, and the libnftables JSON made from it.

Pure logic, no I/O (the h11 way): every function here takes plain values and
returns the JSON commands to send, or reads the JSON that libnftables listed.
The callers in this package own libnftables and the transactions.

The table holds two address sets and one chain on the postrouting hook::

    icmpv6 type 133-137 ............................ accept   (neighbour discovery, router messages)
    meta skuid 0 ................................... accept   (optional: kubelet probes, node daemons)
    ct state established,related ................... accept   (the verdict lives in conntrack)
    ip saddr/daddr @managed-v4, ip6 ... @managed-v6  divert   (or every packet left, in divert-all mode)

"Divert" is the queue statement for the native backend, and for the xtables
backend a mark that one iptables/ip6tables rule turns into NFQUEUE (this
kernel has no native ``queue`` expression).

Every rule carries a comment ``"<name> <fingerprint>"``; the fingerprint hashes
the rule's generated expression, so comparing comments tells whether the rules
in the kernel are the ones this module would generate, without comparing
libnftables' normalised listing with our input.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

Json = dict[str, Any]
Backend = Literal["nft", "xt"]
Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address

FAMILY: Final = "inet"
CHAIN: Final = "postrouting"
DEFAULT_TABLE: Final = "kube-netpol"
DEFAULT_QUEUE_NUM: Final = 100
#: Not used by kube-proxy (0x4000 masquerade, 0x8000 drop) nor by Calico's default 0xffff0000 mask.
DEFAULT_MARK: Final = 0x200000

#: srcnat (100) - 5: after routing and DNAT, before SNAT hides the pod's address.
PRIORITY_NATIVE: Final = 95
#: mangle (-150) - 10: the mark must be set before iptables' mangle POSTROUTING queues on it.
PRIORITY_XT: Final = -160

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
class RulesetSpec:
    """Everything the generated table depends on."""

    table: str = DEFAULT_TABLE
    backend: Backend = "nft"
    queue_num: int = DEFAULT_QUEUE_NUM
    fail_open: bool = True  # queue with "bypass": packets pass when no reader listens
    accept_root: bool = True  # accept packets of sockets owned by uid 0
    mark: int = DEFAULT_MARK  # xt backend only: the bit that asks iptables to queue
    divert_all: bool = False  # queue every new connection, not only managed addresses

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.table):
            raise ValueError(f"invalid table name {self.table!r}")
        if self.backend not in ("nft", "xt"):
            raise ValueError(f"invalid queue backend {self.backend!r}")
        if not 0 <= self.queue_num <= 0xFFFF:
            raise ValueError(f"queue number {self.queue_num} out of range 0-65535")
        if not 0 < self.mark < 0xFFFFFFFF:
            raise ValueError(f"mark {self.mark:#x} must be a non-zero mask narrower than 32 bits")

    @property
    def priority(self) -> int:
        return PRIORITY_NATIVE if self.backend == "nft" else PRIORITY_XT


# --- the rules, as data -------------------------------------------------------


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, fld: str) -> Json:
    return {"payload": {"protocol": protocol, "field": fld}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


ACCEPT: Final = "accept"
DIVERT: Final = "divert"

MATCH_ICMPV6_ND: Final = (
    _match(_meta("l4proto"), 58),
    _match(_payload("icmpv6", "type"), {"range": [133, 137]}),
)
MATCH_ROOT_UID: Final = (_match(_meta("skuid"), 0),)
MATCH_ESTABLISHED: Final = (_match({"ct": {"key": "state"}}, ["established", "related"], op="in"),)


@dataclass(frozen=True)
class Rule:
    """One rule of our chain: all ``matches`` hold -> ``action``."""

    name: str
    matches: tuple[Json, ...]
    action: Literal["accept", "divert"]


def rules(spec: RulesetSpec) -> list[Rule]:
    """The chain's rules for ``spec``, in order."""
    out = [Rule("icmpv6-nd", MATCH_ICMPV6_ND, ACCEPT)]
    if spec.accept_root:
        out.append(Rule("root-uid", MATCH_ROOT_UID, ACCEPT))
    out.append(Rule("established", MATCH_ESTABLISHED, ACCEPT))
    if spec.divert_all:
        out.append(Rule("divert-all", (), DIVERT))
    else:
        for s in MANAGED_SETS:
            for fld in ("saddr", "daddr"):
                out.append(Rule(f"{s.name}-{fld}", (_match(_payload(s.protocol, fld), "@" + s.name),), DIVERT))
    return out


def action_statements(spec: RulesetSpec, action: str) -> list[Json]:
    """The statements that carry out ``action`` for the spec's backend."""
    if action == ACCEPT:
        return [{"accept": None}]
    if spec.backend == "nft":
        queue: Json = {"num": spec.queue_num}
        if spec.fail_open:
            queue["flags"] = ["bypass"]
        return [{"queue": queue}]
    # xt: set our bit (keeping the others) and leave the chain; iptables' mangle rule queues it.
    mark = {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), spec.mark]}}}
    return [mark, {"accept": None}]


# --- JSON objects and commands --------------------------------------------------


def _table_ref(spec: RulesetSpec) -> Json:
    return {"family": FAMILY, "table": spec.table}


def table_object(table: str) -> Json:
    return {"table": {"family": FAMILY, "name": table}}


def set_object(spec: RulesetSpec, s: ManagedSet) -> Json:
    return {"set": {**_table_ref(spec), "name": s.name, "type": s.addr_type}}


def chain_object(spec: RulesetSpec, name: str = CHAIN, *, base: bool = True) -> Json:
    chain: Json = {**_table_ref(spec), "name": name}
    if base:
        chain.update(type="filter", hook="postrouting", prio=spec.priority, policy="accept")
    return {"chain": chain}


def fingerprint(expr: list[Json]) -> str:
    return hashlib.sha256(json.dumps(expr, sort_keys=True).encode()).hexdigest()[:12]


def rule_objects(spec: RulesetSpec) -> list[Json]:
    objects = []
    for rule in rules(spec):
        expr = [*rule.matches, *action_statements(spec, rule.action)]
        comment = f"{rule.name} {fingerprint(expr)}"
        objects.append({"rule": {**_table_ref(spec), "chain": CHAIN, "expr": expr, "comment": comment}})
    return objects


def rule_comments(spec: RulesetSpec) -> list[str]:
    return [o["rule"]["comment"] for o in rule_objects(spec)]


def create_commands(spec: RulesetSpec) -> list[Json]:
    """Commands that build the whole (empty-set) table from nothing."""
    cmds = [{"add": table_object(spec.table)}]
    cmds += [{"add": set_object(spec, s)} for s in MANAGED_SETS]
    cmds.append({"add": chain_object(spec)})
    cmds += [{"add": r} for r in rule_objects(spec)]
    return cmds


def replace_rules_commands(spec: RulesetSpec) -> list[Json]:
    """Empty our chain and fill it again; the chain (and its hook) stays."""
    flush: list[Json] = [{"flush": chain_object(spec, base=False)}]
    return flush + [{"add": r} for r in rule_objects(spec)]


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

    Only the rules may change between the specs (divert-all on/off); the chain
    is flushed and refilled, never deleted.
    """
    cmds: list[Json] = []
    if rule_comments(old) != rule_comments(new):
        cmds += replace_rules_commands(new)
    for s in MANAGED_SETS:
        cmds += element_commands(new, s.name, diff_elements(current.get(s.name, ()), desired.get(s.name, ())))
    return cmds


# --- reading the kernel's table -------------------------------------------------


@dataclass
class SetState:
    type: Any
    flags: tuple[str, ...]
    elements: frozenset[str] | None  # None: some element is not a plain address


@dataclass
class ChainState:
    attrs: dict[str, Any]  # type/hook/prio/policy; empty for a regular chain
    rule_comments: list[str | None] = field(default_factory=list)


@dataclass
class TableState:
    sets: dict[str, SetState] = field(default_factory=dict)
    chains: dict[str, ChainState] = field(default_factory=dict)


_CHAIN_ATTRS: Final = ("type", "hook", "prio", "policy")


def _plain_elements(raw: list[Any]) -> frozenset[str] | None:
    out = set()
    for e in raw:
        if not isinstance(e, str):
            return None  # prefix, range or element with options: not what we create
        try:
            out.add(str(ipaddress.ip_address(e)))
        except ValueError:
            return None
    return frozenset(out)


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
            )
        elif "chain" in obj:
            c = obj["chain"]
            state.chains[c["name"]] = ChainState({k: c[k] for k in _CHAIN_ATTRS if k in c})
        elif "rule" in obj:
            r = obj["rule"]
            state.chains.setdefault(r["chain"], ChainState({})).rule_comments.append(r.get("comment"))
    return state


def installed_elements(state: TableState | None) -> dict[str, frozenset[str]]:
    """Elements of our sets as the kernel has them (empty for missing or foreign-shaped sets)."""
    out = {}
    for s in MANAGED_SETS:
        st = state.sets.get(s.name) if state else None
        out[s.name] = st.elements if st and _set_matches(st, s) and st.elements is not None else frozenset()
    return out


def installed_divert_all(spec: RulesetSpec, state: TableState | None) -> bool | None:
    """The divert-all mode whose rules the kernel's chain holds, None if neither matches."""
    chain = state.chains.get(CHAIN) if state else None
    if chain is None:
        return None
    for mode in (False, True):
        if chain.rule_comments == rule_comments(replace(spec, divert_all=mode)):
            return mode
    return None


def _set_matches(st: SetState, s: ManagedSet) -> bool:
    return st.type == s.addr_type and st.flags == () and st.elements is not None


def reconcile_commands(
    spec: RulesetSpec, state: TableState | None, desired: Elements | None
) -> tuple[list[Json], dict[str, frozenset[str]]]:
    """One transaction that brings whatever an earlier run left to ``spec``.

    ``desired`` None keeps the elements of sets that have the right shape.
    Returns the commands (empty when nothing differs) and the elements the sets
    hold afterwards. Our base chain is deleted and re-created only when its
    hook or priority is wrong (a backend change since the earlier run).
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

    want_chain_attrs = {k: v for k, v in chain_object(spec)["chain"].items() if k in _CHAIN_ATTRS}
    ours = state.chains.get(CHAIN)
    chain_ok = ours is not None and ours.attrs == want_chain_attrs
    bad_sets = [
        s for s in MANAGED_SETS if s.name in state.sets and not _set_matches(state.sets[s.name], s)
    ]
    foreign_sets = sorted(set(state.sets) - {s.name for s in MANAGED_SETS})
    foreign_chains = sorted(n for n in state.chains if n != CHAIN)
    rules_ok = ours is not None and chain_ok and not bad_sets and ours.rule_comments == rule_comments(spec)

    cmds = []
    # Empty every chain that goes or gets new rules first: rules pin the sets and chains they use.
    to_flush = foreign_chains + ([CHAIN] if ours is not None and not rules_ok else [])
    cmds += [{"flush": chain_object(spec, n, base=False)} for n in to_flush]
    to_delete = foreign_chains + ([CHAIN] if ours is not None and not chain_ok else [])
    cmds += [{"delete": chain_object(spec, n, base=False)} for n in to_delete]
    for name in [s.name for s in bad_sets] + foreign_sets:
        cmds.append({"delete": {"set": {**_table_ref(spec), "name": name}}})

    for s in MANAGED_SETS:
        if s.name not in state.sets or s in bad_sets:
            cmds.append({"add": set_object(spec, s)})
    if not chain_ok:
        cmds.append({"add": chain_object(spec)})
    if not rules_ok:
        cmds += [{"add": r} for r in rule_objects(spec)]

    current = installed_elements(state)
    elements = dict(current)
    if desired is not None:
        for s in MANAGED_SETS:
            delta = diff_elements(current[s.name], desired.get(s.name, ()))
            cmds += element_commands(spec, s.name, delta)
            elements[s.name] = frozenset(desired.get(s.name, ()))
    return cmds, elements
