"""Finding evaluators through the ``kube_netpol.evaluators`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Mapping, Sequence

from kube_netpol.api.evaluator import EvaluatorContext, PolicyEvaluator
from kube_netpol.engine import PolicyEngine

GROUP = "kube_netpol.evaluators"

#: The pipeline order when none is configured.
DEFAULT_PIPELINE = ("adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy")


class PluginError(RuntimeError):
    """An evaluator that cannot be found or built; the message says which and why."""


def available_evaluators() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def build_pipeline(
    names: Sequence[str],
    state: Any,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PolicyEvaluator]:
    """Instantiate the named evaluators in order, each with its own settings section."""
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
            evaluator = factory(EvaluatorContext(state=state, settings=dict(settings.get(name, {}))))
        except Exception as err:  # a broken plugin must say which one it is
            raise PluginError(f"evaluator {name!r} ({entry.value}) failed to load: {err}") from err
        if not isinstance(evaluator, PolicyEvaluator):
            raise PluginError(f"evaluator {name!r} does not implement the PolicyEvaluator protocol")
        pipeline.append(evaluator)
    return pipeline


def build_engine(
    state: Any,
    names: Sequence[str] = DEFAULT_PIPELINE,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> PolicyEngine:
    """The engine exactly as the agent assembles it: ``state`` is also the PodInfo provider."""
    return PolicyEngine(state, build_pipeline(names, state, settings))
