"""The Kubernetes API as the agent's source: list and watch, through the official client.

The official ``kubernetes`` client provides configuration (kubeconfig or
in-cluster service account, TLS, token refresh) and the HTTP calls; responses
are read raw (``_preload_content=False``) and parsed with ``json.loads``,
without building the client's model objects, which would cost far more than
the objects themselves in a big cluster.

One Reflector thread per resource lists and watches; the state is changed only
by work handed to the agent's control thread through ``submit``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import socket
from typing import Any, Callable, Iterable

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.utils.keepalive import tcp_keepalive_socket_options

from kube_netpol.api.kinds import KindSpec
from kube_netpol.sources.kube_reflector import Reflector, Request, Submit, WatchSettings
from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)

__all__ = [
    "KubernetesConfigError",
    "KubernetesSource",
    "WatchSettings",
    "api_client_from_config",
    "kubernetes_source_factory",
    "revision_versions",
]

#: Watch threads each hold a connection; keep the pool at least this big (more with many kinds).
_MIN_POOL_SIZE = 16
#: List methods of the core API's kinds (the state's own: namespaces, nodes, pods; Services for
#: `kube-netpol advise` and the policy controller). Every kind of an API group (NetworkPolicy,
#: Deployments, CRDs) is listed through CustomObjectsApi, which takes any group/version/plural.
_CORE_LIST_METHODS = {"namespaces": "list_namespace", "nodes": "list_node", "pods": "list_pod_for_all_namespaces",
                      "services": "list_service_for_all_namespaces"}
#: Kinds of API groups with a typed method in the client: unlike CustomObjectsApi's, it takes
#: sendInitialEvents, so their initial state can be streamed (a watch-list).
_GROUP_LIST_METHODS = {("networking.k8s.io", "v1", "networkpolicies"): ("NetworkingV1Api",
                                                                        "list_network_policy_for_all_namespaces")}


class KubernetesConfigError(RuntimeError):
    """No usable API server configuration (bad kubeconfig, not running in a cluster)."""


def api_client_from_config(kubeconfig: str | None = None, settings: WatchSettings | None = None) -> k8s_client.ApiClient:
    """An ApiClient from ``kubeconfig``, or from the pod's service account when None.

    Its sockets use TCP keepalive and TCP_USER_TIMEOUT from ``settings`` (default
    WatchSettings()): a watch whose peer vanished without a reset fails within
    ``settings.dead_connection_timeout`` seconds rather than waiting out its read timeout.
    """
    settings = settings or WatchSettings()
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - the loaders raise ConfigException, OSError, YAML errors...
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster configuration"
        raise KubernetesConfigError(f"cannot load the {where}: {err}") from None
    if (configuration.connection_pool_maxsize or 0) < _MIN_POOL_SIZE:
        configuration.connection_pool_maxsize = _MIN_POOL_SIZE
    # The watch loop retries with its own backoff and one log line per attempt;
    # urllib3's immediate retries would only add noise and hammer a server that is down.
    configuration.retries = 0
    configuration.socket_options = _socket_options(settings)
    return k8s_client.ApiClient(configuration)


def _socket_options(settings: WatchSettings) -> list[tuple[int, int, int]]:
    """urllib3's defaults (TCP_NODELAY), keepalive as the client builds it, and TCP_USER_TIMEOUT."""
    options = tcp_keepalive_socket_options(settings.keepalive_idle, settings.keepalive_interval,
                                           settings.keepalive_count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: also bounds data sent and never acknowledged
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, settings.dead_connection_timeout * 1000))
    return options


def _list_method(api_client: k8s_client.ApiClient, kind: KindSpec) -> Callable[..., Any]:
    """The client's method listing (or watching) ``kind`` cluster-wide."""
    typed = _GROUP_LIST_METHODS.get((kind.group, kind.version, kind.plural))
    if typed is not None:
        return getattr(getattr(k8s_client, typed[0])(api_client), typed[1])  # type: ignore[no-any-return]
    if kind.group:
        return functools.partial(
            k8s_client.CustomObjectsApi(api_client).list_cluster_custom_object, kind.group, kind.version, kind.plural)
    if kind.plural in _CORE_LIST_METHODS:
        return getattr(k8s_client.CoreV1Api(api_client), _CORE_LIST_METHODS[kind.plural])  # type: ignore[no-any-return]
    raise ValueError(f"cannot list {kind.path}: a core API kind other than {', '.join(_CORE_LIST_METHODS)}")


def resource_request(api_client: k8s_client.ApiClient, kind: KindSpec) -> Request:
    """``request(**query)`` listing (or watching) one kind cluster-wide: the client's list method, unparsed response."""
    method = _list_method(api_client, kind)

    def request(**query: Any) -> Any:
        query = {key: value for key, value in query.items() if value is not None}
        return method(_preload_content=False, **query)

    return request


def client_streams(api_client: k8s_client.ApiClient, kind: KindSpec) -> bool:
    """Does the client's method for ``kind`` take ``send_initial_events`` (can its initial state be streamed)?"""
    method = _list_method(api_client, kind)
    target = method.func if isinstance(method, functools.partial) else method
    try:
        return "send_initial_events" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


class KubernetesSource:
    """Feeds ClusterState from the API server: the agent's ``Source`` (start/poll/ready/revision/stop).

    Watches every kind of the state's registry (the union of the kinds the
    pipeline's evaluators declare), or only ``kinds`` of it when given.
    """

    def __init__(
        self,
        state: ClusterState,
        api_client: k8s_client.ApiClient,
        kinds: Iterable[str] | None = None,
        settings: WatchSettings | None = None,
    ) -> None:
        names = state.kinds.names if kinds is None else tuple(dict.fromkeys(kinds))
        unknown = [kind for kind in names if kind not in state.kinds]
        if unknown:
            raise ValueError(f"cannot watch {', '.join(unknown)} (the pipeline reads: {', '.join(state.kinds.names)})")
        self.state = state
        self.api_client = api_client
        self.kinds = names
        self.settings = settings or WatchSettings()
        self._reflectors: dict[str, Reflector] = {}

    def start(self, submit: Submit) -> None:
        if self._reflectors:
            raise RuntimeError("KubernetesSource.start called twice")
        specs = [self.state.kinds[kind] for kind in self.kinds]
        for spec in specs:
            request = resource_request(self.api_client, spec)
            streams = self.settings.watch_list and client_streams(self.api_client, spec)
            self._reflectors[spec.kind] = Reflector(spec, request, self.state, submit, self.settings, streams)
        streamed = [spec.plural for spec in specs if self._reflectors[spec.kind].streams]
        log.info("watching %s at %s (initial state %s)", ", ".join(spec.plural for spec in specs),
                 self.api_client.configuration.host,
                 f"streamed for {', '.join(streamed)}, paged lists for the rest" if streamed else "in paged lists")
        for reflector in self._reflectors.values():
            reflector.start()

    def poll(self) -> None:
        """Nothing to do: the watch threads hand their work to the control thread themselves."""

    def ready(self) -> bool:
        """Every initial list has been applied to the state (stays True while the server is away)."""
        return bool(self._reflectors) and all(r.synced for r in self._reflectors.values())

    def stop(self, timeout: float = 5.0) -> None:
        for reflector in self._reflectors.values():
            reflector.stop()
        for reflector in self._reflectors.values():
            if not reflector.join(timeout):
                log.warning("%s: watch thread did not stop in time", reflector.resource.plural)

    def resource_version(self, kind: str) -> str | None:
        """The resourceVersion the watch of ``kind`` resumes from (None before the list or during a relist)."""
        return self._reflectors[kind].resource_version

    def streams(self, kind: str) -> bool:
        """Is the next (re)list of ``kind`` a watch-list (False: paged lists)?"""
        return self._reflectors[kind].streams

    def lists_completed(self, kind: str) -> int:
        """How many full lists (or watch-lists' initial states) of ``kind`` were read: 1 after the first, one more per relist."""
        return self._reflectors[kind].lists_completed

    def revision(self) -> str:
        """What the state holds: per kind, the resourceVersion of the last list or event applied to it.

        ``"Namespace=1001,Pod=1004,NetworkPolicy=1010"`` (kinds in watch order,
        empty before the first list). It changes whenever the control thread
        applies new data, so /statusz's enforced_revision tells a client when a
        change it made through the API is enforced (see ``revision_versions``).
        """
        reflectors = list(self._reflectors.items())  # /statusz may ask while start() fills the dict
        return ",".join(f"{kind}={reflector.applied_version}" for kind, reflector in reflectors)


def revision_versions(revision: str) -> dict[str, str]:
    """A ``KubernetesSource.revision()`` back as {kind: resourceVersion} ("" before the kind's first list).

    resourceVersions are opaque to clients in general; servers backed by etcd
    (and the fake test server) hand out increasing integers, so a test may
    compare them as numbers to decide that its change is included.
    """
    versions = {}
    for part in revision.split(","):
        kind, sep, version = part.partition("=")
        if sep:
            versions[kind] = version
    return versions


def kubernetes_source_factory(
    kubeconfig: str | None,
    settings: WatchSettings | None = None,
) -> Callable[[ClusterState], KubernetesSource]:
    """What ``kube-netpol run`` passes to the Agent without ``--manifests``.

    Loads the configuration now, so that a bad kubeconfig fails before the
    agent starts (raises KubernetesConfigError).
    """
    api_client = api_client_from_config(kubeconfig, settings)

    def factory(state: ClusterState) -> KubernetesSource:
        return KubernetesSource(state, api_client, settings=settings)

    return factory
