"""Proposals from workloads and Services alone, before any traffic: what k8s-netpol-ctrl does, with
namespaces, ports and direction right.

Each workload (Deployment, StatefulSet, DaemonSet, CronJob, a Job or
ReplicaSet of its own, a bare pod) gets a policy that

- admits and reaches the pods of the same workload, on every port;
- reaches the cluster DNS pods on UDP and TCP 53, in their own namespace;
- when a Service exposes it, admits the ingress controller pods (wherever they
  run; in the namespaces where the source shows them, when it does) on the
  Service's target ports, and, for a NodePort or LoadBalancer Service, every
  address on them;
- when an env value of it names a Service (``NAME.NS.svc.<cluster domain>``,
  ``NAME.NS.svc``, ``NAME.NS``, or a plain ``NAME`` of its own namespace, each
  only when such a Service exists), reaches that Service's pods on its target
  ports, and those pods admit it on them. Direction matters: the Service's
  pods get no egress to the workload from it;
- admits the node addresses on the ports its probes name (the kubelet probes
  from the node, an address that is not a pod's).

The DNS and ingress controller workloads themselves, hostNetwork workloads,
and the system namespaces' workloads are peers, not subjects, unless named.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kube_netpol.advise.kinds import WORKLOAD_KINDS, PodTemplate, ServiceObject, WorkloadObject
from kube_netpol.advise.model import Advice, NetworkPeer, PodPeer, Port, Proposal, Selector, Workload
from kube_netpol.advise.options import DEFAULT_OPTIONS, DNS_PORTS, AdviseOptions
from kube_netpol.advise.owners import Owners, common_labels, selector_for
from kube_netpol.api.cluster import ClusterView

_TOKEN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_EVERY_ADDRESS = (NetworkPeer("0.0.0.0/0"), NetworkPeer("::/0"))


@dataclass
class _Candidate:
    workload: Workload
    templates: list[PodTemplate] = field(default_factory=list)
    declared: Selector | None = None
    #: Known from a workload object (its pods add nothing), not only from pods.
    from_object: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return common_labels(t.labels for t in self.templates)

    @property
    def host_network(self) -> bool:
        return any(t.host_network for t in self.templates)


def _workload_objects(view: ClusterView) -> list[WorkloadObject]:
    objects: list[WorkloadObject] = []
    for spec in WORKLOAD_KINDS:
        objects.extend(o for o in view.objects(spec.kind).values() if isinstance(o, WorkloadObject))
    return sorted(objects, key=lambda o: (o.namespace, o.kind, o.name))


def owners_of(view: ClusterView) -> Owners:
    """Owners that know every ReplicaSet's and Job's own controller in ``view``."""
    return Owners({(o.kind, o.namespace, o.name): o.owner for o in _workload_objects(view) if o.kind in ("ReplicaSet", "Job")})


def candidates(view: ClusterView) -> list[_Candidate]:
    """Every workload of the source: its objects first, then the pods no known object accounts for."""
    found: dict[Workload, _Candidate] = {}
    objects = _workload_objects(view)
    present = {(o.kind, o.namespace, o.name) for o in objects}
    for obj in objects:
        workload = Workload(obj.kind, obj.namespace, obj.name)
        up_kind, _, up_name = obj.owner.partition("/")
        if obj.kind in ("ReplicaSet", "Job") and up_kind in ("Deployment", "CronJob"):
            if (up_kind, obj.namespace, up_name) in present:
                continue  # its owner's own template describes it
            workload = Workload(up_kind, obj.namespace, up_name)
        candidate = found.setdefault(workload, _Candidate(workload, from_object=True))
        candidate.templates.append(obj.template)
        if workload.kind == obj.kind:
            candidate.declared = obj.selector
        else:
            candidate.notes.append(f"from {obj.kind} {obj.name} (the {workload.kind} object was not read)")
    owners = owners_of(view)
    for pod in sorted(view.pods(), key=lambda p: p.key):
        if not pod.is_policy_target:
            continue
        resolution = owners.resolve(pod.namespace, pod.name, pod.owner, pod.labels)
        known = found.get(resolution.workload)
        if known is not None and known.from_object:
            continue  # its workload's template describes it
        candidate = found.setdefault(resolution.workload, _Candidate(resolution.workload))
        if resolution.how and resolution.how not in candidate.notes:
            candidate.notes.append(resolution.how)
        candidate.templates.append(PodTemplate(dict(pod.labels), tuple(pod.container_ports), (), (), False))
    return [found[w] for w in sorted(found)]


def service_references(values: Iterable[str], namespace: str, services: Mapping[tuple[str, str], ServiceObject],
                       cluster_domain: str) -> list[ServiceObject]:
    """The Services the env ``values`` name (existing ones only), in order of first mention."""
    named: dict[tuple[str, str], ServiceObject] = {}
    full = ["svc", *cluster_domain.split(".")]
    for value in values:
        for match in _TOKEN.finditer(value.lower()):
            labels = match.group(0).split(".")
            if len(labels) == 1:
                key = (namespace, labels[0])  # NAME
            elif len(labels) == 2 or labels[2:] in (["svc"], full):
                key = (labels[1], labels[0])  # NAME.NS, NAME.NS.svc, NAME.NS.svc.<cluster domain>
            else:
                continue
            service = services.get(key)
            if service is not None and key not in named:
                named[key] = service
    return list(named.values())


def _target_ports(service: ServiceObject) -> list[Port]:
    return [Port(p.protocol, p.target) for p in service.ports]


def _node_peers(view: ClusterView, options: AdviseOptions) -> list[NetworkPeer]:
    peers = {options.network_peer(str(ipaddress.ip_address(ip))) for node in view.nodes() for ip in node.ips}
    return sorted(peers, key=lambda p: (p.network.version, int(p.network.network_address)))


def propose_from_workloads(view: ClusterView, options: AdviseOptions = DEFAULT_OPTIONS) -> Advice:
    advice = Advice()
    services = {(o.namespace, o.name): o for o in view.objects("Service").values() if isinstance(o, ServiceObject)}
    pool = candidates(view)
    selectors: dict[Workload, Selector | None] = {}
    for candidate in pool:
        selector, how = selector_for(candidate.workload, [t.labels for t in candidate.templates], candidate.declared)
        selectors[candidate.workload] = selector
        if how:
            candidate.notes.append(f"selected by {how}")
    ingress_controllers = sorted({c.workload.namespace for c in pool
                                  if options.ingress_controller_selector.matches(c.labels)})
    ingress_peer = PodPeer(tuple(ingress_controllers) if ingress_controllers else None,
                           options.ingress_controller_selector)
    dns_peer = PodPeer((options.dns_namespace,), options.dns_selector)
    nodes = _node_peers(view, options)

    proposals: dict[Workload, Proposal] = {}
    for candidate in pool:
        workload = candidate.workload
        if not options.filter.wants(workload):
            if options.filter.left_as_system(workload):
                advice.note(f"{workload}: no policy, it runs in a system namespace (name it with --namespace "
                            "or --workload to have one)")
            continue
        is_dns = workload.namespace == options.dns_namespace and options.dns_selector.matches(candidate.labels)
        is_ingress = options.ingress_controller_selector.matches(candidate.labels)
        why_not = ("it runs in the host's network namespace (policies do not apply to it)" if candidate.host_network
                   else "it is the cluster DNS" if is_dns
                   else "it is an ingress controller" if is_ingress else "")
        if why_not and not (options.filter.named(workload) and not candidate.host_network):
            advice.note(f"{workload}: no policy, {why_not} (a peer of the others)")
            continue
        selector = selectors[workload]
        if selector is None:
            advice.note(f"{workload}: no label selects its pods and only them; no policy proposed (label them)")
            continue
        proposal = Proposal(workload, selector)
        for note in candidate.notes:
            proposal.note(note)
        own = PodPeer((workload.namespace,), selector)
        proposal.ingress.add((own, None))
        proposal.egress.add((own, None))
        for port in DNS_PORTS:
            proposal.egress.add((dns_peer, port))
        probes = [port for t in candidate.templates for port in t.probe_ports]
        if probes and nodes:
            for node in nodes:
                for probe in dict.fromkeys(probes):
                    proposal.ingress.add((node, Port("TCP", probe)))
        elif probes:
            proposal.note("its probes come from the node's addresses, and no Node objects were read: "
                          "add an ipBlock for the nodes")
        proposals[workload] = proposal

    by_namespace: dict[str, list[_Candidate]] = defaultdict(list)
    for candidate in pool:
        by_namespace[candidate.workload.namespace].append(candidate)

    def exposed(service: ServiceObject) -> list[Workload]:
        selector = service.selector
        if selector is None:
            return []
        return [c.workload for c in by_namespace[service.namespace] if selector.matches(c.labels)]

    for service in sorted(services.values(), key=lambda s: (s.namespace, s.name)):
        for workload in exposed(service):
            if workload not in proposals:
                continue
            proposal = proposals[workload]
            for port in _target_ports(service):
                proposal.ingress.add((ingress_peer, port))
                if service.type in ("NodePort", "LoadBalancer"):
                    for everyone in _EVERY_ADDRESS:
                        proposal.ingress.add((everyone, port))
            if service.type in ("NodePort", "LoadBalancer"):
                proposal.note(f"{service.type} Service {service.name} exposes it: every address may reach its target ports")
            else:
                proposal.note(f"Service {service.name} exposes it to the ingress controllers")

    for candidate in pool:
        client = candidate.workload
        values = [v for t in candidate.templates for v in t.env_values]
        for service in service_references(values, client.namespace, services, options.cluster_domain):
            if service.selector is None:
                note = f"its env names Service {service.namespace}/{service.name}, which has no selector: not followed"
                if client in proposals:
                    proposals[client].note(note)
                continue
            ports = _target_ports(service)
            if client in proposals:
                proposals[client].note(f"its env names Service {service.namespace}/{service.name}")
                for port in ports:
                    proposals[client].egress.add((PodPeer((service.namespace,), service.selector), port))
            client_selector = selectors.get(client)
            for server in exposed(service):
                if server in proposals and client_selector is not None:
                    for port in ports:
                        proposals[server].ingress.add((PodPeer((client.namespace,), client_selector), port))
    advice.proposals = [proposals[w] for w in sorted(proposals)]
    return advice
