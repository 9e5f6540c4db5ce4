"""Which addresses the dataplane diverts to the queue: this node's pods that some evaluator selects.

Kept incrementally from what evaluators report for the pods a batch touched
and from the pod changes themselves (an address, node or phase may change
without any evaluator's selection changing): never by walking every pod.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from kube_netpol.api.cluster import PodKey, PodRecord

IsLocal = Callable[[PodRecord], bool]
PodLookup = Callable[[PodKey], PodRecord | None]


class ManagedAddresses:
    """Counts per pod how many evaluators select it; holds the addresses of the local selected pods."""

    def __init__(self, evaluators: int, pod: PodLookup, is_local: IsLocal) -> None:
        self._selected: list[set[PodKey]] = [set() for _ in range(evaluators)]
        self._count: dict[PodKey, int] = {}
        self._pod = pod
        self._is_local = is_local
        self._pod_ips: dict[PodKey, tuple[bytes, ...]] = {}  # the managed addresses each pod contributes
        self._ips: dict[bytes, int] = {}  # managed address -> pods contributing it
        self.divert_all = False
        #: Goes up whenever an address joins or leaves ``addresses``: the dataplane needs no sync while it stays.
        self.version = 0

    @property
    def addresses(self) -> Iterable[bytes]:
        """The managed addresses now (packed); a live view, read on the control thread."""
        return self._ips.keys()

    def __contains__(self, address: object) -> bool:
        return address in self._ips

    def __len__(self) -> int:
        return len(self._ips)

    def selected_pods(self) -> int:
        return len(self._count)

    def update(self, evaluator: int, selected: Mapping[PodKey, bool]) -> set[PodKey]:
        """Take one evaluator's report; returns the pods whose count went from or to 0."""
        mine = self._selected[evaluator]
        flipped: set[PodKey] = set()
        count = self._count
        for key, now in selected.items():
            if now == (key in mine):
                continue
            if now:
                mine.add(key)
                count[key] = count.get(key, 0) + 1
                if count[key] == 1:
                    flipped.add(key)
            else:
                mine.discard(key)
                left = count.get(key, 1) - 1
                if left <= 0:
                    count.pop(key, None)
                    flipped.add(key)
                else:
                    count[key] = left
        return flipped

    def refresh(self, keys: Iterable[PodKey]) -> None:
        """Recompute the addresses the pods ``keys`` contribute (after they or their selection changed)."""
        for key in keys:
            pod = self._pod(key)
            wanted: tuple[bytes, ...] = ()
            if pod is not None and key in self._count and pod.is_policy_target and self._is_local(pod):
                wanted = pod.ips
            had = self._pod_ips.get(key, ())
            if wanted == had:
                continue
            for ip in had:
                left = self._ips.get(ip, 1) - 1
                if left <= 0:
                    self._ips.pop(ip, None)
                    self.version += 1
                else:
                    self._ips[ip] = left
            for ip in wanted:
                count = self._ips.get(ip, 0)
                if not count:
                    self.version += 1
                self._ips[ip] = count + 1
            if wanted:
                self._pod_ips[key] = wanted
            else:
                self._pod_ips.pop(key, None)
