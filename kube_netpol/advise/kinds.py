"""The kinds advise and the policy controller read besides pods: workloads and Services.

KindSpecs of the tool, not of the agent's pipeline: the agent never lists
them. ``advise_registry`` puts them in a KindRegistry, so the manifests
source, the one-time list of `explain`'s loaders, the Kubernetes reflectors
and the fake API server handle them exactly like the agent's kinds. Each is
trimmed as it arrives to what a proposal reads: the selector, the pod
template's labels, container ports, literal env values and probe ports, the
controller's ownerReference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.advise.model import PROTOCOLS, Selector
from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.kinds import NODE_KIND, KindSpec, pick, trim_envelope
from kube_netpol.state.kinds import KindRegistry
from kube_netpol.state.records import controller_owner, labels_of, metadata_of
from kube_netpol.state.trim import trim_owner_references

#: (name, port, protocol) of one container port, as in PodRecord.container_ports.
ContainerPort = tuple[str, int, str]
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_PROBE_ACTIONS = ("httpGet", "tcpSocket", "grpc")


@dataclass(frozen=True)
class PodTemplate:
    """What a workload's pods will be: labels, container ports, literal env values, probed ports."""

    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...]
    #: Every ``env[].value`` of every container (``valueFrom`` is not followed).
    env_values: tuple[str, ...]
    #: Ports the kubelet probes (httpGet, tcpSocket, grpc): numbers or container port names.
    probe_ports: tuple[int | str, ...]
    host_network: bool


@dataclass(frozen=True)
class WorkloadObject:
    kind: str
    namespace: str
    name: str
    #: ``Kind/name`` of its controller ("" for none): a ReplicaSet's Deployment, a Job's CronJob.
    owner: str
    #: ``spec.selector``; None where the API generates it (a Job's controller-uid) or it is absent.
    selector: Selector | None
    template: PodTemplate


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    #: ``targetPort``: a number or a container port name of the pods behind the Service.
    target: int | str


@dataclass(frozen=True)
class ServiceObject:
    namespace: str
    name: str
    type: str
    #: None: a Service without a selector (ExternalName, endpoints managed by hand).
    selector: Selector | None
    ports: tuple[ServicePort, ...]


# --------------------------------------------------------------------------- trimming


def _trim_container(container: Any) -> Any:
    if not isinstance(container, Mapping):
        return container
    out: dict[str, Any] = {}
    if isinstance(container.get("ports"), list):
        out["ports"] = [pick(p, ("name", "containerPort", "protocol")) if isinstance(p, Mapping) else p
                        for p in container["ports"]]
    if isinstance(container.get("env"), list):
        out["env"] = [pick(e, ("name", "value")) if isinstance(e, Mapping) else e for e in container["env"]]
    for probe in _PROBES:
        found = container.get(probe)
        if isinstance(found, Mapping):
            out[probe] = {action: pick(found[action], ("port",)) for action in _PROBE_ACTIONS
                          if isinstance(found.get(action), Mapping)}
    return out


def _trim_template(template: Any) -> Any:
    if not isinstance(template, Mapping):
        return template
    out: dict[str, Any] = {}
    meta = template.get("metadata")
    if isinstance(meta, Mapping):
        out["metadata"] = pick(meta, ("labels",))
    spec = template.get("spec")
    if isinstance(spec, Mapping):
        trimmed = pick(spec, ("hostNetwork",))
        for part in ("containers", "initContainers"):
            if isinstance(spec.get(part), list):
                trimmed[part] = [_trim_container(c) for c in spec[part]]
        out["spec"] = trimmed
    return out


def trim_workload(obj: Any) -> Any:
    """The envelope, the controller's ownerReference, spec.selector and the pod template's parts
    (a CronJob's under spec.jobTemplate.spec)."""
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj)
    trim_owner_references(obj, out)
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        job_template = spec.get("jobTemplate")
        if isinstance(job_template, Mapping) and isinstance(job_template.get("spec"), Mapping):
            out["spec"] = {"jobTemplate": {"spec": {"template": _trim_template(job_template["spec"].get("template"))}}}
        else:
            kept = pick(spec, ("selector",))
            if "template" in spec:
                kept["template"] = _trim_template(spec["template"])
            out["spec"] = kept
    return out


def trim_service(obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj)
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        out["spec"] = pick(spec, ("type", "selector", "ports"))
    return out


# ---------------------------------------------------------------------------- parsing


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidObject("must be an object", where)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject("must be a list", where)
    return value


def _port_reference(value: Any, where: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise InvalidObject(f"invalid port {value!r}", where)
    port: int | str = int(value) if isinstance(value, str) and value.isdigit() else value  # IntOrString "8080"
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise InvalidObject(f"invalid port {value!r}", where)
    return port


def parse_template(template: Any, where: str) -> PodTemplate:
    template = _mapping(template, where)
    meta = _mapping(template.get("metadata"), f"{where}.metadata")
    labels = _mapping(meta.get("labels"), f"{where}.metadata.labels")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidObject("must map strings to strings", f"{where}.metadata.labels")
    spec = _mapping(template.get("spec"), f"{where}.spec")
    ports: list[ContainerPort] = []
    env: list[str] = []
    probes: list[int | str] = []
    for part in ("containers", "initContainers"):
        for c, container in enumerate(_list(spec.get(part), f"{where}.spec.{part}")):
            at = f"{where}.spec.{part}[{c}]"
            container = _mapping(container, at)
            for p, port in enumerate(_list(container.get("ports"), f"{at}.ports")):
                port = _mapping(port, f"{at}.ports[{p}]")
                number = port.get("containerPort")
                protocol = port.get("protocol") or "TCP"
                name = port.get("name") or ""
                if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                    raise InvalidObject(f"invalid containerPort {number!r}", f"{at}.ports[{p}]")
                if protocol not in PROTOCOLS or not isinstance(name, str):
                    raise InvalidObject(f"invalid protocol or name in {dict(port)!r}", f"{at}.ports[{p}]")
                ports.append((name, number, protocol))
            for e, var in enumerate(_list(container.get("env"), f"{at}.env")):
                value = _mapping(var, f"{at}.env[{e}]").get("value")
                if isinstance(value, str) and value:
                    env.append(value)
            for probe in _PROBES:
                found = _mapping(container.get(probe), f"{at}.{probe}")
                for action in _PROBE_ACTIONS:
                    if action in found:
                        target = _mapping(found[action], f"{at}.{probe}.{action}").get("port")
                        probes.append(_port_reference(target, f"{at}.{probe}.{action}.port"))
    return PodTemplate(dict(labels), tuple(ports), tuple(env), tuple(dict.fromkeys(probes)),
                       spec.get("hostNetwork") is True)


def _selector(spec: Mapping[str, Any], where: str) -> Selector | None:
    if spec.get("selector") is None:
        return None
    return Selector.from_json(spec["selector"], where)


def read_workload(kind: str, obj: Mapping[str, Any]) -> WorkloadObject:
    namespace, name = metadata_of(obj, namespaced=True)
    labels_of(obj)  # refuses malformed labels, as for any other object
    spec = _mapping(obj.get("spec"), "spec")
    if kind == "CronJob":
        job_spec = _mapping(_mapping(spec.get("jobTemplate"), "spec.jobTemplate").get("spec"), "spec.jobTemplate.spec")
        template = parse_template(job_spec.get("template"), "spec.jobTemplate.spec.template")
        selector = None  # each Job of a CronJob gets a generated selector of its own
    else:
        template = parse_template(spec.get("template"), "spec.template")
        # A Job's selector is generated (controller-uid) unless manualSelector: useless across runs.
        selector = None if kind == "Job" else _selector(spec, "spec.selector")
    return WorkloadObject(kind, namespace, name, controller_owner(obj), selector, template)


def read_service(obj: Mapping[str, Any]) -> ServiceObject:
    namespace, name = metadata_of(obj, namespaced=True)
    spec = _mapping(obj.get("spec"), "spec")
    raw_selector = spec.get("selector")
    selector: Selector | None = None
    if raw_selector:  # a Service selects by equality on its map; an empty or absent map selects nothing
        selector = Selector.from_json({"matchLabels": _mapping(raw_selector, "spec.selector")}, "spec.selector")
    ports: list[ServicePort] = []
    for i, port in enumerate(_list(spec.get("ports"), "spec.ports")):
        where = f"spec.ports[{i}]"
        port = _mapping(port, where)
        number = _port_reference(port.get("port"), f"{where}.port")
        if not isinstance(number, int):
            raise InvalidObject(f"invalid port {number!r}", f"{where}.port")
        protocol = port.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            raise InvalidObject(f"unsupported protocol {protocol!r}", where)
        target = port.get("targetPort")
        ports.append(ServicePort(str(port.get("name") or ""), protocol, number,
                                 number if target is None else _port_reference(target, f"{where}.targetPort")))
    kind = spec.get("type") or "ClusterIP"
    return ServiceObject(namespace, name, str(kind), selector, tuple(ports))


def _workload_kind(kind: str, group: str, plural: str) -> KindSpec:
    def parse(obj: Mapping[str, Any]) -> WorkloadObject:
        return read_workload(kind, obj)

    return KindSpec(kind, group, "v1", plural, True, parse, trim_workload, custom=False, order=5)


DEPLOYMENT = _workload_kind("Deployment", "apps", "deployments")
REPLICASET = _workload_kind("ReplicaSet", "apps", "replicasets")
STATEFULSET = _workload_kind("StatefulSet", "apps", "statefulsets")
DAEMONSET = _workload_kind("DaemonSet", "apps", "daemonsets")
JOB = _workload_kind("Job", "batch", "jobs")
CRONJOB = _workload_kind("CronJob", "batch", "cronjobs")
SERVICE = KindSpec("Service", "", "v1", "services", True, read_service, trim_service, custom=False, order=5)

WORKLOAD_KINDS = (DEPLOYMENT, REPLICASET, STATEFULSET, DAEMONSET, JOB, CRONJOB)
#: Every kind a proposal from workloads reads besides Pod and Namespace (Nodes: where probes come from).
ADVISE_KINDS = (*WORKLOAD_KINDS, SERVICE, NODE_KIND)


def advise_registry(extra: tuple[KindSpec, ...] = ()) -> KindRegistry:
    """Namespaces, pods, nodes, the workload kinds and Services (and ``extra``: the controller's own policies)."""
    return KindRegistry((*ADVISE_KINDS, *extra))
