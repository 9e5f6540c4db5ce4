"""The kind registry: the one list of kinds the state, the sources, explain and the fake API server read.

Namespace and Pod are always there (every evaluator reads pods and their
namespaces); Node and every other kind are there because an evaluator of the
pipeline declares them in its ``kinds``, as a plugin declares its own CRD.
"""

from __future__ import annotations

from functools import partial
from typing import Iterable, Iterator, Protocol, Sequence

from kube_netpol.api.kinds import KindSpec
from kube_netpol.state.records import read_namespace, read_node, read_pod
from kube_netpol.state.trim import trim_namespace, trim_node, trim_pod

NAMESPACE = KindSpec("Namespace", "", "v1", "namespaces", False, read_namespace, trim_namespace, custom=False, order=0)
NODE = KindSpec("Node", "", "v1", "nodes", False, read_node, trim_node, custom=False, order=1)
POD = KindSpec("Pod", "", "v1", "pods", True, read_pod, trim_pod, custom=False, order=2)
#: Kinds the state reads itself into records (PodRecord, NamespaceRecord, NodeRecord).
RECORD_KINDS = ("Namespace", "Node", "Pod")


class DeclaresKinds(Protocol):
    """What the registry reads of an evaluator."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> tuple[KindSpec, ...]: ...

    @property
    def pod_annotations(self) -> tuple[str, ...]: ...


class KindError(ValueError):
    """Two evaluators declare one kind differently."""


class KindRegistry:
    """Kinds by name, iterated in apply order (namespaces and nodes before pods, pods before policies)."""

    def __init__(self, kinds: Iterable[KindSpec] = (), pod_annotations: Iterable[str] = ()) -> None:
        self.pod_annotations = frozenset(pod_annotations)
        pod = POD
        if self.pod_annotations:
            pod = KindSpec(
                "Pod", "", "v1", "pods", True,
                partial(read_pod, annotation_keys=self.pod_annotations),
                partial(trim_pod, annotations=self.pod_annotations),
                custom=False, order=2,
            )  # fmt: skip
        self._kinds: dict[str, KindSpec] = {"Namespace": NAMESPACE, "Pod": pod}
        own = {"Namespace": NAMESPACE, "Node": NODE, "Pod": pod}
        for spec in kinds:
            if spec.kind in own:
                if spec != own[spec.kind]:
                    raise KindError(f"kind {spec.kind} is the cluster state's own; declare kube_netpol.api.NODE_KIND")
                self._kinds[spec.kind] = own[spec.kind]  # read into records by the state itself
                continue
            known = self._kinds.get(spec.kind)
            if known is not None and known != spec:
                raise KindError(f"kind {spec.kind} is declared twice, differently: {known} and {spec}")
            self._kinds[spec.kind] = spec
        self._ordered = tuple(sorted(self._kinds.values(), key=lambda k: (k.order, k.kind)))

    @classmethod
    def for_evaluators(cls, evaluators: Sequence[DeclaresKinds]) -> KindRegistry:
        kinds: list[KindSpec] = []
        annotations: list[str] = []
        for evaluator in evaluators:
            kinds.extend(evaluator.kinds)
            annotations.extend(evaluator.pod_annotations)
        return cls(kinds, annotations)

    def get(self, kind: str) -> KindSpec | None:
        return self._kinds.get(kind)

    def __getitem__(self, kind: str) -> KindSpec:
        return self._kinds[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[KindSpec]:
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._ordered)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.kind for spec in self._ordered)

    def order_of(self, kind: str) -> int:
        spec = self._kinds.get(kind)
        return spec.order if spec is not None else 99

    def __repr__(self) -> str:
        return f"KindRegistry({', '.join(self.names)})"
