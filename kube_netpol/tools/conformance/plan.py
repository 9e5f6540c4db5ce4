"""A scenario turned into exactly what runs: the changes of each step and its probes.

Planning needs no backend, so every scenario is checked completely (patterns,
tables, deletes of objects that exist, addresses) before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kube_netpol.tools.conformance.backend import BackendSetup
from kube_netpol.tools.conformance.cluster import Cluster, StepChange
from kube_netpol.tools.conformance.probes import ProbeSetPlan, expand_probe_set
from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance.scenario import Scenario


@dataclass(frozen=True)
class StepPlan:
    name: str
    change: StepChange
    probe_sets: tuple[ProbeSetPlan, ...]


@dataclass(frozen=True)
class ScenarioPlan:
    scenario: Scenario
    setup: BackendSetup
    setup_change: StepChange
    steps: tuple[StepPlan, ...]


def plan_scenario(scenario: Scenario) -> ScenarioPlan:
    """Evolve the cluster through the steps; ScenarioError (naming the file) on anything wrong."""
    try:
        cluster, setup_change = Cluster.from_spec(scenario.cluster)
        steps = []
        for step in scenario.steps:
            change = cluster.apply_step(step)
            probe_sets = tuple(expand_probe_set(expect, change.cluster) for expect in step.expect)
            steps.append(StepPlan(step.name, change, probe_sets))
    except ScenarioError as err:
        raise err.in_file(scenario.source) from None
    probes = [probe for step in steps for probe_set in step.probe_sets for probe in probe_set.probes]
    setup = BackendSetup(
        scenario=scenario.name,
        source=scenario.source,
        cluster=setup_change.cluster,
        listen=tuple(sorted({(p.port, p.protocol) for p in probes})),
        families=tuple(sorted({p.family for p in probes})),
    )
    return ScenarioPlan(scenario, setup, setup_change, tuple(steps))
