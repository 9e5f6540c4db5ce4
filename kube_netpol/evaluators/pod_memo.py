"""The per-PodInfo memo of the built-in evaluators, and the pod facts its entries hold.

Each built-in evaluator remembers, per PodInfo object, what it reads about a
pod on every packet. An entry is a PodFacts subclass: the facts (the pod's
labels and its namespace's labels copied into plain dicts, since a dict lookup
costs several times less than a lookup in a protobuf map; the namespace name;
the container port names) plus the evaluator's own slots (the rules that apply
to the pod). Attribute reads on ``__slots__`` cost what tuple indexing does.

The memo is a plain dict ``id(PodInfo) -> entry``:

- PodInfo messages are not hashable, hence the id. The entry holds its
  PodInfo, so that id cannot be reused while the entry lives, and a lookup
  still checks ``entry.info is info``: a new PodInfo object (the store builds
  one whenever a pod, its namespace or its node changes, and never mutates
  one) never gets an old entry.
- The facts of a PodInfo never go stale; the evaluator's part goes stale when
  policies change. Replacing the memo then is the owner's business, and so is
  the argument that a packet racing with a change cannot store a stale entry
  into the new memo (see each evaluator).
- ``forget`` drops a changed pod's entry, so that the memo does not keep its
  old PodInfo alive. ``remember`` empties the memo it is given once it holds
  ``MEMO_SIZE`` entries: a bound on memory, also on entries left behind by a
  change racing with a packet. It empties that dict rather than installing a
  new one, so a store into a memo that a change has already replaced stays in
  the replaced memo.
- A plain dict and functions, not a class: the hot paths inline ``lookup``'s
  two lines, as a call, or ``get`` on a dict subclass, would add tens of
  nanoseconds to each of the several lookups of a packet.

Each evaluator keeps its own memo, so each holds its own copy of a pod's
facts: sharing one facts object across evaluators would need a memo of its
own, with its own lifetime, and would only save the copies made on a miss.
"""

from __future__ import annotations

from typing import TypeVar

from kube_netpol.api.podinfo import PodInfo
from kube_netpol.policy.ports import PortNames, port_names

#: Entries a memo holds before ``remember`` empties it.
MEMO_SIZE = 32768


class PodFacts:
    """What the evaluators read about one PodInfo, as the pod a rule applies to or as a peer.

    ``labels`` and ``namespace_labels`` are plain dicts; ``port_names`` gives
    the names of the pod's container ports by (protocol number, port), as
    named ports in rules resolve. Subclasses add the evaluator's own slots.
    """

    __slots__ = ("info", "labels", "namespace", "namespace_labels", "port_names")

    def __init__(self, info: PodInfo) -> None:
        self.info = info
        self.labels: dict[str, str] = dict(info.labels)
        self.namespace: str = info.namespace.name
        self.namespace_labels: dict[str, str] = dict(info.namespace.labels)
        self.port_names: PortNames = port_names(info)


Entry = TypeVar("Entry", bound=PodFacts)


def lookup(memo: dict[int, Entry], info: PodInfo) -> Entry | None:
    """``info``'s entry, or None. The hot paths inline these lines (see the module docstring)."""
    entry = memo.get(id(info))
    if entry is None or entry.info is not info:
        return None
    return entry


def remember(memo: dict[int, Entry], entry: Entry) -> Entry:
    """Store ``entry`` under its PodInfo (emptying ``memo`` first if it is full) and return it."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[id(entry.info)] = entry
    return entry


def forget(memo: dict[int, Entry], info: PodInfo) -> None:
    """Drop ``info``'s entry. ``info`` is alive (the caller holds it), so an entry under its id is its own."""
    memo.pop(id(info), None)
