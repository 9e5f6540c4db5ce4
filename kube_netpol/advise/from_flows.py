"""Proposals from observed flows: every connection that happened is an egress grant of its source's
workload and an ingress grant of its destination's, on its exact protocol and port.

- Pods are grouped by owner (``owners``) and selected by the labels all of
  their observed pods share (or their workload object's selector, when a
  source declared it); peers that are pods are named by namespace and that
  selector, other addresses as CIDRs (``AdviseOptions.network_peer``).
- A destination port the receiving pod names is written as that name.
- Egress to the cluster DNS pods on port 53 (UDP and TCP) is always kept,
  observed or not: a pod that resolves nothing during the observation still
  will later.
- What cannot be written is left out and said: ICMP (a rule with ports never
  admits it), pods whose labels select nothing of their own.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping

from kube_netpol.advise.flows import Endpoint, Flow, distinct_flows
from kube_netpol.advise.model import Advice, Peer, PodPeer, Port, Proposal, Selector, Workload
from kube_netpol.advise.options import DEFAULT_OPTIONS, DNS_PORTS, AdviseOptions
from kube_netpol.advise.owners import Owners, selector_for

PodKey = tuple[str, str]
#: (labels, owner) of a pod by (namespace, name), from a workload source: for records without them.
PodLookup = Callable[[PodKey], "tuple[Mapping[str, str], str] | None"]


class _Ends:
    """Every pod end of the flows resolved once: its labels, its workload, the workload's selector."""

    def __init__(self, flows: list[Flow], owners: Owners, declared: Mapping[Workload, Selector],
                 lookup: PodLookup | None) -> None:
        self.labels: dict[PodKey, Mapping[str, str]] = {}
        self.workload: dict[PodKey, Workload] = {}
        self.unknown: set[PodKey] = set()
        self.selector: dict[Workload, Selector | None] = {}
        self.how: dict[Workload, list[str]] = defaultdict(list)
        pods_of: dict[Workload, dict[PodKey, Mapping[str, str]]] = defaultdict(dict)
        for flow in flows:
            for end in (flow.src, flow.dst):
                if end.pod is None or end.pod in self.workload or end.pod in self.unknown:
                    continue
                found = self._read(end, lookup)
                if found is None:
                    self.unknown.add(end.pod)
                    continue
                labels, owner = found
                resolution = owners.resolve(end.pod[0], end.pod[1], owner, labels)
                self.labels[end.pod] = labels
                self.workload[end.pod] = resolution.workload
                pods_of[resolution.workload][end.pod] = labels
                if resolution.how and resolution.how not in self.how[resolution.workload]:
                    self.how[resolution.workload].append(resolution.how)
        self.pods_of = pods_of
        for workload, pods in pods_of.items():
            selector, how = selector_for(workload, pods.values(), declared.get(workload))
            self.selector[workload] = selector
            if how:
                self.how[workload].append(f"selected by {how}")

    @staticmethod
    def _read(end: Endpoint, lookup: PodLookup | None) -> tuple[Mapping[str, str], str] | None:
        if end.labels is not None:
            return end.labels, end.owner
        return lookup(end.pod) if lookup is not None and end.pod is not None else None

    def peer(self, end: Endpoint, options: AdviseOptions) -> Peer | None:
        """How a policy names this end: its workload's pods, or its address; None when nothing can."""
        if end.pod is None:
            return options.network_peer(end.ip)
        workload = self.workload.get(end.pod)
        selector = self.selector.get(workload) if workload is not None else None
        if workload is None or selector is None:
            return None
        return PodPeer((workload.namespace,), selector)

    def is_dns(self, end: Endpoint, options: AdviseOptions) -> bool:
        labels = self.labels.get(end.pod) if end.pod is not None else None
        return (labels is not None and end.pod is not None and end.pod[0] == options.dns_namespace
                and options.dns_selector.matches(labels))


def propose_from_flows(
    flows: Iterable[Flow],
    options: AdviseOptions = DEFAULT_OPTIONS,
    owners: Owners | None = None,
    declared: Mapping[Workload, Selector] | None = None,
    lookup: PodLookup | None = None,
) -> Advice:
    """One proposal per workload that took part in a connection that happened.

    ``declared``: workload selectors a source knows (``spec.selector``);
    ``lookup``: labels and owners of pods whose records lack them.
    """
    advice = Advice()
    happened = [flow for flow in distinct_flows(flows) if flow.passed]
    icmp = [flow for flow in happened if not flow.has_ports]
    if icmp:
        advice.note(f"{len(icmp)} ICMP flow(s) left out: a NetworkPolicy rule with ports never admits ICMP, "
                    "and a rule without ports would admit every port")
    usable = [flow for flow in happened if flow.has_ports]
    ends = _Ends(usable, owners or Owners(), declared or {}, lookup)
    if ends.unknown:
        advice.note(f"{len(ends.unknown)} pod(s) whose records carry no labels or owner (an older agent's records?) "
                    "and that no --manifests/--kubeconfig source knows: their flows are left out, e.g. "
                    + ", ".join(f"{ns}/{name}" for ns, name in sorted(ends.unknown)[:3]))
    proposals: dict[Workload, Proposal] = {}
    for workload in sorted(ends.pods_of):
        if not options.filter.wants(workload):
            if options.filter.left_as_system(workload):
                advice.note(f"{workload}: no policy, it runs in a system namespace (name it with --namespace "
                            "or --workload to have one)")
            continue
        selector = ends.selector[workload]
        if selector is None:
            advice.note(f"{workload}: no label selects its pods and only them; no policy proposed (label them)")
            continue
        proposal = Proposal(workload, selector)
        proposal.note(f"{len(ends.pods_of[workload])} pod(s) observed")
        for how in ends.how[workload]:
            proposal.note(how)
        proposals[workload] = proposal
    dns = PodPeer((options.dns_namespace,), options.dns_selector)
    unexpressed = 0
    for flow in usable:
        named = flow.dst_port_name if flow.dst.pod is not None else ""
        port = Port(flow.protocol, named or flow.dst_port)
        source = proposals.get(ends.workload.get(flow.src.pod)) if flow.src.pod is not None else None  # type: ignore[arg-type]
        if source is not None:
            if flow.dst_port == 53 and ends.is_dns(flow.dst, options):
                source.egress.add((dns, Port(flow.protocol, 53)))
            else:
                peer = ends.peer(flow.dst, options)
                if peer is None:
                    unexpressed += 1
                else:
                    source.egress.add((peer, port))
        destination = proposals.get(ends.workload.get(flow.dst.pod)) if flow.dst.pod is not None else None  # type: ignore[arg-type]
        if destination is not None:
            peer = ends.peer(flow.src, options)
            if peer is None:
                unexpressed += 1
            else:
                destination.ingress.add((peer, port))
    if unexpressed:
        advice.note(f"{unexpressed} grant(s) left out: their peer is a pod no selector names (see above)")
    for proposal in proposals.values():
        for dns_port in DNS_PORTS:
            proposal.egress.add((dns, dns_port))
    advice.proposals = [proposals[w] for w in sorted(proposals)]
    return advice
