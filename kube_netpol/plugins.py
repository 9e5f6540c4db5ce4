"""Finding evaluators through the ``kube_netpol.evaluators`` entry-point group, and assembling the engine.

The engine, the cluster state and its kind registry are always assembled
here, exactly as the agent runs them: the registry is the union of the kinds
the pipeline's evaluators declare.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Mapping, Sequence

from kube_netpol.api.evaluator import EvaluatorContext, LearntNames, PolicyEvaluator
from kube_netpol.api.kinds import KindSpec
from kube_netpol.dns import DnsCache
from kube_netpol.engine import PolicyEngine
from kube_netpol.state import ClusterState, KindRegistry
from kube_netpol.state.kinds import KindError

GROUP = "kube_netpol.evaluators"

#: The order of every built-in evaluator, from which the agent takes those enabled (--enable-*): each API's
#: tiers are a block, the current API (ClusterNetworkPolicy) outermost; see evaluators/clusternetworkpolicy.py.
BUILTIN_ORDER = (
    "clusternetworkpolicy-admin", "adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy", "clusternetworkpolicy-baseline",
)
#: The pipeline when none is configured (explain, advise, build_engine): every built-in evaluator, so an
#: offline tool judges whatever kinds the manifests hold; a stage without objects of its kind passes.
#: (The agent's default is its --enable-* flags over BUILTIN_ORDER: NetworkPolicy alone.)
DEFAULT_PIPELINE = BUILTIN_ORDER

Settings = Mapping[str, Mapping[str, object]]

_CONTRACT = ("name", "kinds", "pod_annotations", "ready", "update")


class PluginError(RuntimeError):
    """An evaluator that cannot be found or built; the message says which and why."""


def available_evaluators() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def build_pipeline(
    names: Sequence[str], settings: Settings | None = None, dns: LearntNames | None = None
) -> list[PolicyEvaluator]:
    """Instantiate the named evaluators in order, each with its own settings section (and ``dns``)."""
    found = available_evaluators()
    settings = settings or {}
    pipeline: list[PolicyEvaluator] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PluginError(f"evaluator {name!r} is listed twice")
        seen.add(name)
        entry = found.get(name)
        if entry is None:
            known = ", ".join(sorted(found)) or "none installed"
            raise PluginError(f"unknown evaluator {name!r} (installed: {known})")
        try:
            factory = entry.load()
            evaluator = factory(EvaluatorContext(settings=dict(settings.get(name, {})), dns=dns))
        except Exception as err:  # a broken plugin must say which one it is
            raise PluginError(f"evaluator {name!r} ({entry.value}) failed to load: {err}") from err
        missing = [member for member in _CONTRACT if not hasattr(evaluator, member)]
        if missing or not isinstance(evaluator, PolicyEvaluator):
            raise PluginError(f"evaluator {name!r} does not implement the PolicyEvaluator protocol "
                              f"(missing: {', '.join(missing) or 'a member of the right kind'})")
        if not all(isinstance(kind, KindSpec) for kind in evaluator.kinds):
            raise PluginError(f"evaluator {name!r}: kinds must be a tuple of kube_netpol.api.KindSpec")
        pipeline.append(evaluator)
    return pipeline


def kind_registry(evaluators: Sequence[PolicyEvaluator]) -> KindRegistry:
    try:
        return KindRegistry.for_evaluators(evaluators)
    except KindError as err:
        raise PluginError(str(err)) from None


def build_engine(
    names: Sequence[str] = DEFAULT_PIPELINE,
    settings: Settings | None = None,
    node_name: str = "",
    cluster_id: str = "",
) -> PolicyEngine[ClusterState]:
    """The engine exactly as the agent assembles it, over a new, empty ClusterState (``engine.state``).

    Its ``dns`` cache is the one its evaluators read and the verdict loop (or the offline harness) teaches.
    """
    dns = DnsCache()
    evaluators = build_pipeline(names, settings, dns)
    state = ClusterState(kind_registry(evaluators), cluster_id=cluster_id, node_name=node_name)
    return PolicyEngine(state, evaluators, dns)


def registry_for(names: Sequence[str] = DEFAULT_PIPELINE) -> KindRegistry:
    """The kinds a pipeline reads (for tools that list or serve objects without judging them)."""
    return kind_registry(build_pipeline(names))
