"""What each pod learnt from the DNS answers it received: per pod, address -> name -> expiry.

Per pod, never shared: a name one pod resolved does not open egress for
another pod (which may not have asked, or got another answer from a
different resolver). Keyed by the pod's (namespace, name), so an address
re-used by a new pod never inherits what the old one learnt.

Bounds:

- a TTL is honoured but capped at ``MAX_TTL`` seconds and raised to
  ``MIN_TTL`` (an answer with TTL 0 still serves the connection the pod opens
  right after it);
- at most ``MAX_PER_POD`` (address, name) entries per pod: a new one beyond
  pushes out that pod's oldest (expired ones go first);
- at most ``MAX_ENTRIES`` entries in all: beyond, after dropping what has
  expired, a new entry is refused (counted in ``refused``): the pod then
  cannot reach that name until entries expire, which is narrower than the
  policy, never wider.

Expiry times are ``time.monotonic()`` seconds. The packet thread both learns
and looks up (the offline harness is single-threaded); readers of the
counters on other threads see plain integers.
"""

from __future__ import annotations

from time import monotonic
from typing import Final, Iterable, Mapping

from kube_netpol.api.cluster import PodKey

MAX_TTL: Final = 3600
MIN_TTL: Final = 5
MAX_PER_POD: Final = 1024
MAX_ENTRIES: Final = 65536
#: Learnt entries between two sweeps of every pod's expired entries (bounds the work per answer).
SWEEP_EVERY: Final = 1024

_NONE: Final[Mapping[str, float]] = {}


class _PodNames:
    __slots__ = ("by_address", "order")

    def __init__(self) -> None:
        self.by_address: dict[bytes, dict[str, float]] = {}
        self.order: dict[tuple[bytes, str], float] = {}  # insertion order = learning order, oldest first


class DnsCache:
    """Names learnt per pod, with TTLs; see the module doc for the bounds."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_per_pod: int = MAX_PER_POD,
                 max_ttl: int = MAX_TTL, min_ttl: int = MIN_TTL) -> None:
        self.max_entries = max_entries
        self.max_per_pod = max_per_pod
        self.max_ttl = max_ttl
        self.min_ttl = min(min_ttl, max_ttl)
        self._pods: dict[PodKey, _PodNames] = {}
        self._size = 0
        self._since_sweep = 0
        self.learnt = 0  # entries learnt or refreshed
        self.refused = 0  # entries refused because the cache was full
        self.evicted = 0  # entries pushed out by a pod's bound

    def __len__(self) -> int:
        return self._size

    def learn(self, pod: PodKey, name: str, records: Iterable[tuple[bytes, int]], now: float | None = None) -> int:
        """Remember that ``pod`` resolved ``name`` to each (address, TTL); the entries now held for it."""
        now = monotonic() if now is None else now
        names = self._pods.get(pod)
        if names is None:
            names = self._pods[pod] = _PodNames()
        count = 0
        for address, ttl in records:
            expires = now + max(self.min_ttl, min(ttl, self.max_ttl))
            key = (address, name)
            if key in names.order:
                del names.order[key]  # refreshed: now the newest
                self._size -= 1
            elif not self._room(names, now):
                self.refused += 1
                continue
            names.order[key] = expires
            names.by_address.setdefault(address, {})[name] = expires
            self._size += 1
            self.learnt += 1
            count += 1
        if not names.order:
            del self._pods[pod]
        self._since_sweep += count
        if self._since_sweep >= SWEEP_EVERY:
            self.sweep(now)
        return count

    def _room(self, names: _PodNames, now: float) -> bool:
        if len(names.order) >= self.max_per_pod:
            self._drop_expired(names, now)
            if len(names.order) >= self.max_per_pod:
                self._forget(names, next(iter(names.order)))
                self.evicted += 1
        if self._size >= self.max_entries:
            self.sweep(now)
        return self._size < self.max_entries

    def _forget(self, names: _PodNames, key: tuple[bytes, str]) -> None:
        del names.order[key]
        address, name = key
        learnt = names.by_address[address]
        del learnt[name]
        if not learnt:
            del names.by_address[address]
        self._size -= 1

    def _drop_expired(self, names: _PodNames, now: float) -> None:
        for key in [k for k, expires in names.order.items() if expires <= now]:
            self._forget(names, key)

    def sweep(self, now: float | None = None) -> None:
        """Drop every expired entry (and pods left with none)."""
        now = monotonic() if now is None else now
        self._since_sweep = 0
        for pod, names in list(self._pods.items()):
            self._drop_expired(names, now)
            if not names.order:
                del self._pods[pod]

    def names(self, pod: PodKey, address: bytes) -> Mapping[str, float]:
        """The names ``pod`` learnt for ``address``, each with its expiry (may include expired ones)."""
        names = self._pods.get(pod)
        if names is None:
            return _NONE
        return names.by_address.get(address, _NONE)
