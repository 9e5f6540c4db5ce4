"""Which workload a pod belongs to, and which of its labels select that workload's pods.

A pod names only its direct controller (``ownerReferences`` with
``controller: true``): a Deployment's pods name a ReplicaSet, a CronJob's pods
a Job. The step up is resolved from the ReplicaSet or Job object when one is
known (``--from-workloads`` sources, `--manifests`, the cluster), else by the
naming conventions of the controllers that create them:

- a Deployment names its ReplicaSets ``<deployment>-<pod-template-hash>`` and
  labels their pods ``pod-template-hash: <hash>``;
- a CronJob names its Jobs ``<cronjob>-<scheduled time in minutes since the epoch>``.

Every resolution says which way it went, so that the output can tell the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from kube_netpol.advise.model import Selector, Workload

#: Labels that differ between pods of one workload or between its revisions: a selector never uses them.
VOLATILE_LABELS = frozenset({
    "pod-template-hash",  # Deployment: per ReplicaSet, changes with every rollout
    "controller-revision-hash",  # StatefulSet, DaemonSet: per revision
    "pod-template-generation",  # DaemonSet (older)
    "statefulset.kubernetes.io/pod-name",  # one pod
    "apps.kubernetes.io/pod-index",  # one pod
    "batch.kubernetes.io/job-completion-index",  # one pod of an indexed Job
    "controller-uid", "batch.kubernetes.io/controller-uid",  # one Job run
    "app.kubernetes.io/version", "helm.sh/chart",  # change with every upgrade
})  # fmt: skip
#: A Job's own name: stable for that Job, not across the Jobs of a CronJob.
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")

_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-(?P<minutes>\d{8,})$")


@dataclass(frozen=True)
class Resolution:
    workload: Workload
    #: How the pod's owner led there, for the reader ("" when it is the owner itself).
    how: str = ""


def split_owner(owner: str) -> tuple[str, str]:
    """``Kind/name`` → (kind, name); ("", "") for no owner."""
    kind, _, name = owner.partition("/")
    return (kind, name) if name else ("", "")


class Owners:
    """Resolves pods' controller owners to workloads.

    ``controllers`` maps (namespace, ReplicaSet or Job name) to the
    ``Kind/name`` of that object's own controller ("" when it has none), for
    every ReplicaSet and Job the source knows.
    """

    def __init__(self, controllers: Mapping[tuple[str, str, str], str] | None = None) -> None:
        # (kind, namespace, name) -> "Kind/name" of its controller or ""
        self._controllers = dict(controllers or {})

    def resolve(self, namespace: str, pod_name: str, owner: str, labels: Mapping[str, str] | None) -> Resolution:
        kind, name = split_owner(owner)
        if not kind:
            return Resolution(Workload("Pod", namespace, pod_name))
        if kind not in ("ReplicaSet", "Job"):
            return Resolution(Workload(kind, namespace, name))
        known = self._controllers.get((kind, namespace, name))
        if known is not None:
            up_kind, up_name = split_owner(known)
            if not up_kind:
                return Resolution(Workload(kind, namespace, name), f"{kind} {name} has no controller")
            return Resolution(Workload(up_kind, namespace, up_name), f"{kind} {name} is owned by {up_kind} {up_name}")
        if kind == "ReplicaSet":
            pod_hash = (labels or {}).get("pod-template-hash", "")
            if pod_hash and name.endswith("-" + pod_hash) and len(name) > len(pod_hash) + 1:
                deployment = name[: -len(pod_hash) - 1]
                return Resolution(Workload("Deployment", namespace, deployment),
                                  f"ReplicaSet {name} taken for Deployment {deployment} by its pod-template-hash "
                                  f"label (the ReplicaSet object was not read)")
            return Resolution(Workload(kind, namespace, name), f"ReplicaSet {name} has no pod-template-hash suffix: "
                                                               "taken as a workload of its own")
        match = _CRONJOB_JOB.match(name)
        if match is not None:
            cronjob = match["cronjob"]
            return Resolution(Workload("CronJob", namespace, cronjob),
                              f"Job {name} taken for CronJob {cronjob} by the CronJob naming convention "
                              "(the Job object was not read)")
        return Resolution(Workload(kind, namespace, name))


def stable_labels(labels: Mapping[str, str], kind: str) -> dict[str, str]:
    """The labels every pod of a ``kind`` workload keeps across pods and revisions."""
    drop = VOLATILE_LABELS | (frozenset(JOB_NAME_LABELS) if kind in ("CronJob", "Job") else frozenset())
    return {k: v for k, v in labels.items() if k not in drop}


def common_labels(label_sets: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The labels (key and value) every one of ``label_sets`` has."""
    common: dict[str, str] | None = None
    for labels in label_sets:
        if common is None:
            common = dict(labels)
        else:
            common = {k: v for k, v in common.items() if labels.get(k) == v}
    return common or {}


def selector_for(workload: Workload, pod_labels: Iterable[Mapping[str, str]],
                 declared: Selector | None = None) -> tuple[Selector | None, str]:
    """The selector of a workload's pods, and how it was chosen.

    ``declared`` (the workload object's ``spec.selector``) wins when known,
    less any volatile label it names; otherwise the labels all its pods (or its
    pod template) share, less the volatile ones. A Job that has nothing else
    is selected by its own name. None when nothing selects only these pods.
    """
    if declared is not None:
        kept = Selector(tuple(kv for kv in declared.match_labels if kv[0] not in VOLATILE_LABELS),
                        tuple(e for e in declared.match_expressions if e[0] not in VOLATILE_LABELS))
        if not kept.empty:
            return kept, "the workload's spec.selector"
    label_sets = list(pod_labels)
    common = common_labels(label_sets)
    stable = stable_labels(common, workload.kind)
    if stable:
        return Selector.of_labels(stable), "the labels its pods share"
    if workload.kind == "Job":
        for key in JOB_NAME_LABELS:
            if common.get(key):
                return Selector.of_labels({key: common[key]}), "the Job's name label"
    return None, ""
