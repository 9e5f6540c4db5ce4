"""Shared plumbing for evaluators that read the ClusterState."""

from __future__ import annotations

from kube_netpol.api.evaluator import ManagedIPs, SyncCallback
from kube_netpol.state.store import Change, ClusterState


class StateEvaluator:
    """Subscribes to the state, forwards changes to ``on_change``, then tells the engine.

    Subclasses keep derived indexes and drop the parts a change touches in
    ``on_change``; ``relevant_kinds`` limits which changes they hear about.
    """

    name = "state-evaluator"
    relevant_kinds: frozenset[str] = frozenset()

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._sync: SyncCallback | None = None
        self._managed: ManagedIPs | None = None
        state.subscribe(self._changed)

    def ready(self) -> bool:
        return True

    def set_sync_callback(self, callback: SyncCallback) -> None:
        self._sync = callback

    def managed_ips(self) -> ManagedIPs:
        managed = self._managed
        if managed is None:
            managed = self._managed = self.compute_managed_ips()
        return managed

    def compute_managed_ips(self) -> ManagedIPs:
        return ManagedIPs()

    def on_change(self, change: Change) -> None:
        """Drop whatever derived data ``change`` makes stale."""

    def _changed(self, change: Change) -> None:
        if change.kind not in self.relevant_kinds:
            return
        self.on_change(change)
        self._managed = None
        if self._sync is not None:
            self._sync()
