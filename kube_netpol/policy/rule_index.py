"""Which of a pod's rules admit the protocol and destination port of a packet.

An evaluator flattens the rules of the policies that select a pod into one
ordered list, and the first rule in that order that admits a packet decides
(and is the one reported). Trying every rule costs time in the number of
rules; this index, built once per list, narrows a packet down to the rules
whose ports match its protocol and port, each with its position in the list
so that the caller can still find the first admitting rule in order. Rules
whose ports cannot match the packet are never looked at.

Per protocol some rule names, a rule's ports fall in up to three places:

- port numbers and ranges: the port axis is cut into segments at every range
  end, each segment holding the rules that cover all of it, found by bisection;
- named ports: by name; the caller resolves the packet's port to the names the
  receiving pod gives it (the receiver varies per packet on egress);
- every port of the protocol (a protocol without port), and rules without
  ports (every port of every protocol, ICMP included): always candidates.

Those candidates match the packet's protocol and port by construction, so
the caller only checks their peers. The exception is ``checked``: numbered
rules of a protocol whose segments would hold more than MAX_SEGMENT_ENTRIES
entries (many nested wide ranges), tried in order with their port check.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter
from typing import Generic, Protocol, Sequence, TypeVar

#: Port numbers a packet can carry; a range covering all of them is "every port".
FIRST_PORT = 0
LAST_PORT = 65535

#: Bound on the (position, rule) entries of one protocol's segments: n nested
#: ranges need about n² of them.
MAX_SEGMENT_ENTRIES = 1 << 17


class IndexableRule(Protocol):
    """What the index reads of a rule (NetworkPolicyRule has these)."""

    @property
    def port_ranges(self) -> tuple[tuple[int, int, int], ...] | None:
        """(protocol, first, last) with both ends included; None: every port of every protocol."""

    @property
    def named_ports(self) -> tuple[tuple[str, int], ...]:
        """(container port name, protocol) pairs, resolved on the receiving pod."""


R = TypeVar("R", bound=IndexableRule)

#: Rules with their position in the indexed list, by ascending position.
Candidates = tuple[tuple[int, R], ...]

_BY_POSITION = itemgetter(0)


class ProtocolRules(Generic[R]):
    """The candidates for packets of one protocol that some rule names.

    ``segments[bisect_right(bounds, port) - 1]`` are the rules whose numbered
    ports include ``port`` (``bounds[0]`` is 0), ``by_name[name]`` the rules
    naming that container port, ``always`` the rules admitting every port of
    the protocol, ``checked`` the numbered rules left out of the segments
    (whose ports still have to be checked). A rule may be in several of them.
    """

    __slots__ = ("bounds", "segments", "by_name", "always", "checked")

    def __init__(
        self,
        bounds: list[int],
        segments: list[Candidates[R]],
        by_name: dict[str, Candidates[R]],
        always: Candidates[R],
        checked: Candidates[R],
    ) -> None:
        self.bounds = bounds
        self.segments = segments
        self.by_name = by_name
        self.always = always
        self.checked = checked

    def numbered(self, port: int) -> Candidates[R]:
        """The rules whose port numbers or ranges include ``port`` (hot paths inline this)."""
        return self.segments[bisect_right(self.bounds, port) - 1]


class RuleIndex(Generic[R]):
    """Candidates per protocol for an ordered list of rules (``rules``).

    ``by_protocol`` has an entry for each protocol some rule's ports name;
    packets of any other protocol (ICMP, ...) are admitted only by rules
    without ports, ``others``, in order.
    """

    __slots__ = ("rules", "by_protocol", "others")

    def __init__(self, rules: tuple[R, ...], by_protocol: dict[int, ProtocolRules[R]], others: tuple[R, ...]) -> None:
        self.rules = rules
        self.by_protocol = by_protocol
        self.others = others


def build_rule_index(rules: Sequence[R]) -> RuleIndex[R]:
    """Index ``rules``; positions are indexes in it. Costs about a microsecond per rule: build once, share."""
    rules = tuple(rules)
    everywhere: list[tuple[int, R]] = []  # no ports: every port of every protocol
    whole: dict[int, dict[int, R]] = {}  # protocol -> position -> rule admitting every port of it
    spans: dict[int, dict[int, list[tuple[int, int]]]] = {}  # protocol -> position -> (first, last)
    named: dict[int, dict[str, dict[int, R]]] = {}  # protocol -> name -> position -> rule
    for position, rule in enumerate(rules):
        ranges = rule.port_ranges
        if ranges is None:
            everywhere.append((position, rule))
            continue
        for protocol, first, last in ranges:
            if first <= FIRST_PORT and last >= LAST_PORT:
                whole.setdefault(protocol, {})[position] = rule
            else:
                spans.setdefault(protocol, {}).setdefault(position, []).append((first, last))
        for name, protocol in rule.named_ports:
            named.setdefault(protocol, {}).setdefault(name, {})[position] = rule

    by_protocol: dict[int, ProtocolRules[R]] = {}
    for protocol in spans.keys() | whole.keys() | named.keys():
        wide = whole.get(protocol, {})
        # A rule admitting the whole protocol is always a candidate; its numbered ports add nothing.
        numbered = {position: ranges for position, ranges in spans.get(protocol, {}).items() if position not in wide}
        cut = _segments(numbered, rules, MAX_SEGMENT_ENTRIES)
        segments: list[Candidates[R]]
        if cut is None:
            bounds, segments = [FIRST_PORT], [()]
            checked: Candidates[R] = tuple((position, rules[position]) for position in sorted(numbered))
        else:
            (bounds, segments), checked = cut, ()
        # Positions were added in ascending order, so each list is already sorted.
        by_name = {name: tuple(holders.items()) for name, holders in named.get(protocol, {}).items()}
        always = tuple(sorted([*everywhere, *wide.items()], key=_BY_POSITION))
        by_protocol[protocol] = ProtocolRules(bounds, segments, by_name, always, checked)
    return RuleIndex(rules, by_protocol, tuple(rule for _, rule in everywhere))


def _segments(
    numbered: dict[int, list[tuple[int, int]]], rules: tuple[R, ...], max_entries: int
) -> tuple[list[int], list[Candidates[R]]] | None:
    """Bounds and rules of the segments of the port axis, or None past ``max_entries``."""
    # (port, 0 where a range ends before it / 1 where one starts, position); sorted, a port's ends come first.
    events: list[tuple[int, int, int]] = []
    for position, ranges in numbered.items():
        for first, last in _coalesce(ranges) if len(ranges) > 1 else ranges:
            events.append((first, 1, position))
            events.append((last + 1, 0, position))
    events.sort()
    bounds: list[int] = [FIRST_PORT]
    segments: list[Candidates[R]] = [()]
    active: dict[int, tuple[int, R]] = {}  # position -> (position, rule): the rules covering the segment
    entries = 0
    i, count = 0, len(events)
    while i < count:
        bound = events[i][0]
        while i < count and events[i][0] == bound:
            _, starts, position = events[i]
            if starts:
                active[position] = (position, rules[position])
            else:
                del active[position]  # coalesced: a rule's ranges never overlap nor touch
            i += 1
        entries += len(active)
        if entries > max_entries:
            return None
        segment = tuple([active[position] for position in sorted(active)]) if active else ()
        if bound == bounds[-1]:  # a range starting at port 0
            segments[-1] = segment
        else:
            bounds.append(bound)
            segments.append(segment)
    return bounds, segments


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same ports as disjoint, non-adjacent ranges."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged
