"""Where `kube-netpol explain` gets the cluster from: a manifests folder, a scenario file, or the API server.

Each loader fills the engine's ClusterState once (no watch), through the
sources and the kind registry as the agent would, and returns a
``LoadedState``: a description of where it came from, and the objects the
state refused (an ignored policy is often the answer to "why is this allowed?").
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from kube_netpol.state import ClusterState

#: Items per page when listing from the API server.
LIST_PAGE_SIZE = 500


class StateError(Exception):
    """The state cannot be loaded (missing file, bad scenario, unreachable API server): a usage error."""


class NotServed(StateError):
    """The API server does not serve a resource (404): for a custom resource, its CRD is not installed."""


@dataclass
class LoadedState:
    #: Human-readable origin, e.g. ``scenario s.yaml after step 2/3 ("deny all")``.
    description: str
    #: The same as data, for ``--output json``.
    origin: dict[str, Any]
    #: ``"<kind> <ref>: <reason>"`` for every object the store refused.
    refused: list[str] = field(default_factory=list)
    #: Anything else worth saying about the state (a policy kind the cluster does not serve).
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet_refusals() -> Iterator[None]:
    """Refused objects are part of the answer ("ignored invalid ..."), not warnings on stderr."""
    store_log = logging.getLogger("kube_netpol.state.store")
    manifests_log = logging.getLogger("kube_netpol.sources.manifests")
    levels = store_log.level, manifests_log.level
    store_log.setLevel(logging.ERROR)
    manifests_log.setLevel(logging.CRITICAL)  # unreadable files end the command with their reason
    try:
        yield
    finally:
        store_log.setLevel(levels[0])
        manifests_log.setLevel(levels[1])


def _refused(state: ClusterState) -> list[str]:
    return [str(refusal) for refusal in state.take_refusals()]


def load_manifests(state: ClusterState, folder: str) -> LoadedState:
    from kube_netpol.sources.manifests import ManifestError, ManifestSource

    source = ManifestSource(folder, state)
    try:
        source.sync()
    except ManifestError as err:
        raise StateError(str(err)) from None
    if source.unreadable:
        # An answer from part of the folder could say "allowed" where the rest denies.
        problems = "; ".join(source.unreadable.values())
        raise StateError(f"cannot read every manifest in {folder}: {problems}")
    return LoadedState(f"manifests in {folder}", {"source": "manifests", "path": folder}, _refused(state))


def load_scenario(state: ClusterState, path: str, step: int | None = None) -> LoadedState:
    """The cluster of a scenario after step ``step`` (1-based; 0: before any step; None: after the last)."""
    from kube_netpol.tools.conformance.cluster import Cluster
    from kube_netpol.tools.conformance.errors import ScenarioError
    from kube_netpol.tools.conformance.scenario import load_scenario as read_scenario

    try:
        scenario = read_scenario(path)
        steps = scenario.steps
        count = len(steps)
        wanted = count if step is None else step
        if not 0 <= wanted <= count:
            raise StateError(f"{path}: --step {step} is out of range (the scenario has {count} steps; 0 is before the first)")
        cluster, change = Cluster.from_spec(scenario.cluster)
        for spec in steps[:wanted]:
            change = cluster.apply_step(spec)
    except ScenarioError as err:
        raise StateError(str(err if err.source else err.in_file(path))) from None
    for obj in change.cluster.objects():
        state.apply(obj)
    if wanted == 0:
        description = f"scenario {path} before its first step"
        step_name = None
    else:
        step_name = steps[wanted - 1].name
        description = f"scenario {path} after step {wanted}/{count} ({step_name!r})"
    origin = {"source": "scenario", "path": path, "step": wanted, "step_name": step_name}
    return LoadedState(description, origin, _refused(state))


def load_live(state: ClusterState, kubeconfig: str) -> LoadedState:
    """One list of every kind the state's registry holds, from the API server ``kubeconfig`` points at."""
    try:
        from kube_netpol.sources import kubernetes as kube_source
        from kube_netpol.sources.kube_apply import replace_all
    except ImportError as err:
        raise StateError(
            "reading a live cluster needs the Kubernetes source (kube_netpol.sources.kubernetes and the "
            f"`kubernetes` package), which is not available: {err}; use --manifests DIR or --scenario FILE"
        ) from None
    try:
        api_client = kube_source.api_client_from_config(kubeconfig)
    except kube_source.KubernetesConfigError as err:
        raise StateError(str(err)) from None
    notes: list[str] = []
    try:
        for spec in state.kinds:  # in apply order: pods find their namespace and node
            try:
                items = _list_all(kube_source.resource_request(api_client, spec))
            except NotServed:
                if not spec.custom:
                    raise
                # Most clusters do not install the network-policy-api CRDs: then there are none.
                notes.append(f"the API server does not serve {spec.path} (CRD not installed?): no {spec.kind} objects")
                continue
            replace_all(state, spec.kind, [spec.trim(item) for item in items])
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    host = api_client.configuration.host
    return LoadedState(f"the cluster at {host} (kubeconfig {kubeconfig})",
                       {"source": "cluster", "kubeconfig": kubeconfig, "server": host}, _refused(state), notes)


def _list_all(request: Any) -> list[Mapping[str, Any]]:
    """Every item of a collection, page by page."""
    items: list[Mapping[str, Any]] = []
    token: str | None = None
    while True:
        query: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "_request_timeout": (10, 60)}
        if token:
            query["_continue"] = token
        try:
            response = request(**query)
            body = response.data
            response.release_conn()
        except Exception as err:  # noqa: BLE001 - HTTP errors, refused connections, TLS...
            status = getattr(err, "status", None)
            reason = getattr(err, "reason", None) or err
            detail = f"HTTP {status}: {reason}" if status else str(reason)
            error = NotServed if status == 404 else StateError
            raise error(f"cannot list from the API server: {detail}") from None
        try:
            page = json.loads(body)
        except ValueError:
            raise StateError("the API server's list response is not JSON") from None
        items.extend(item for item in page.get("items") or [] if isinstance(item, Mapping))
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return items
