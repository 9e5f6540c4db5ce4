"""Finding, checking and running scenario files; the results the report renders.

Every file is read and planned before anything runs, so an invalid scenario
is reported at once, even when a slow backend would run for minutes. Exit
status: 2 when any file could not be read or is invalid (the valid ones still
run and are reported), else 1 when any scenario failed (a mismatch, or an
exception from the backend: that is the implementation failing, not the
scenario), else 0.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kube_netpol.tools.conformance.backend import BackendFactory
from kube_netpol.tools.conformance.plan import ScenarioPlan, plan_scenario
from kube_netpol.tools.conformance.probes import Probe, ProbeSetPlan
from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance.scenario import load_scenario

EXIT_PASSED = 0
EXIT_MISMATCH = 1
EXIT_INVALID = 2


@dataclass(frozen=True)
class Mismatch:
    probe: Probe
    expected: bool
    observed: bool
    explanation: str = ""  # from the backend's ``explain``, when it has one


@dataclass(frozen=True)
class ProbeSetResult:
    plan: ProbeSetPlan
    observed: tuple[bool, ...]
    mismatches: tuple[Mismatch, ...]


@dataclass(frozen=True)
class StepResult:
    name: str
    probe_sets: tuple[ProbeSetResult, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    source: str
    steps: tuple[StepResult, ...] = ()
    error: str | None = None  # why the scenario could not run (to the end)
    invalid: bool = False  # the file could not be read or is invalid
    setup_notes: tuple[str, ...] = ()
    detail: str = ""  # a traceback when the backend raised

    @property
    def probes(self) -> int:
        return sum(len(ps.plan.probes) for step in self.steps for ps in step.probe_sets)

    @property
    def mismatches(self) -> int:
        return sum(len(ps.mismatches) for step in self.steps for ps in step.probe_sets)

    @property
    def passed(self) -> bool:
        return self.error is None and self.mismatches == 0


@dataclass(frozen=True)
class RunResult:
    mode: str
    scenarios: tuple[ScenarioResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.scenarios)

    @property
    def invalid(self) -> int:
        return sum(s.invalid for s in self.scenarios)

    @property
    def probes(self) -> int:
        return sum(s.probes for s in self.scenarios)

    @property
    def mismatches(self) -> int:
        return sum(s.mismatches for s in self.scenarios)

    @property
    def exit_code(self) -> int:
        if self.invalid:
            return EXIT_INVALID
        return EXIT_PASSED if self.passed == len(self.scenarios) else EXIT_MISMATCH


def find_scenario_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[ScenarioError]]:
    """Files named, plus ``*.yaml`` under folders (recursively, sorted); errors for paths with none."""
    files: list[Path] = []
    problems: list[ScenarioError] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.yaml") if p.is_file())
            if not found:
                problems.append(ScenarioError("no *.yaml scenario files in this folder", source=str(path)))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(ScenarioError("no such file or folder", source=str(path)))
    unique = list(dict.fromkeys(files))  # a file named twice runs once
    return unique, problems


def prepare(paths: Iterable[str | Path], tags: Sequence[str] = ()) -> tuple[list[ScenarioPlan | ScenarioResult], int]:
    """Read and plan every scenario; invalid ones become ScenarioResults.

    Returns the entries in file order (plans to run, results for invalid
    files) and how many valid scenarios the tag filter left out. Broken files
    are reported whatever their tags: their tags may be what is broken.
    """
    files, problems = find_scenario_files(paths)
    entries: list[ScenarioPlan | ScenarioResult] = [_invalid(err, err.source) for err in problems]
    seen_names: dict[str, str] = {}
    skipped = 0
    for path in files:
        name = str(path)
        try:
            scenario = load_scenario(path)
            name = scenario.name
            if scenario.name in seen_names:
                raise ScenarioError(
                    f"scenario name {scenario.name!r} is already used by {seen_names[scenario.name]}",
                    "name",
                    scenario.source,
                )
            seen_names[scenario.name] = scenario.source
            if tags and not set(tags) & set(scenario.tags):
                skipped += 1
                continue
            entries.append(plan_scenario(scenario))
        except ScenarioError as err:
            entries.append(_invalid(err, str(path), name))
    return entries, skipped


def _invalid(err: ScenarioError, source: str, name: str = "") -> ScenarioResult:
    """The result of a file that cannot run; named by its scenario name when that could be read."""
    return ScenarioResult(name=name or source, source=source, error=str(err), invalid=True)


def run_plan(plan: ScenarioPlan, factory: BackendFactory) -> ScenarioResult:
    """Run one planned scenario on a fresh backend."""
    steps: list[StepResult] = []
    setup_notes: tuple[str, ...] = ()
    stage = "starting the backend"
    error: str | None = None
    detail = ""
    backend = None
    try:
        backend = factory(plan.setup)
        stage = "setting up the cluster"
        setup_notes = tuple(backend.apply(plan.setup_change))
        for number, step in enumerate(plan.steps, start=1):
            stage = f"step {number} {step.name!r}"
            notes = tuple(backend.apply(step.change))
            probes = [probe for probe_set in step.probe_sets for probe in probe_set.probes]
            observed = list(backend.run(probes)) if probes else []
            if len(observed) != len(probes):
                raise RuntimeError(f"the backend answered {len(observed)} results for {len(probes)} probes")
            steps.append(StepResult(step.name, _compare(step.probe_sets, observed, backend), notes))
    except Exception as err:  # the implementation under test failing is a result, not a crash of the harness
        error = f"the backend failed while {stage}: {type(err).__name__}: {err}"
        detail = traceback.format_exc()
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception as err:
                if error is None:
                    error = f"the backend failed to close: {type(err).__name__}: {err}"
                    detail = traceback.format_exc()
    return ScenarioResult(
        plan.scenario.name, plan.scenario.source, tuple(steps), error, setup_notes=setup_notes, detail=detail
    )


def _compare(
    probe_sets: Sequence[ProbeSetPlan], observed: Sequence[bool], backend: object
) -> tuple[ProbeSetResult, ...]:
    explain: Callable[[Probe], str] | None = getattr(backend, "explain", None)
    results = []
    offset = 0
    for plan in probe_sets:
        seen = tuple(bool(o) for o in observed[offset : offset + len(plan.probes)])
        offset += len(plan.probes)
        mismatches = tuple(
            Mismatch(probe, want, got, _explain(explain, probe))
            for probe, want, got in zip(plan.probes, plan.expected, seen)
            if want != got
        )
        results.append(ProbeSetResult(plan, seen, mismatches))
    return tuple(results)


def _explain(explain: Callable[[Probe], str] | None, probe: Probe) -> str:
    if explain is None:
        return ""
    try:
        return explain(probe)
    except Exception as err:  # an explanation is a courtesy; never let it hide the result
        return f"(no explanation: {type(err).__name__}: {err})"


def run(
    entries: Sequence[ScenarioPlan | ScenarioResult],
    mode: str,
    factory: BackendFactory,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> RunResult:
    """Run the plans in order (invalid entries pass through); ``on_result`` sees each result as it is ready."""
    results = []
    for entry in entries:
        result = entry if isinstance(entry, ScenarioResult) else run_plan(entry, factory)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return RunResult(mode, tuple(results))
