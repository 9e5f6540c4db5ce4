"""Rendering results: truth tables the way the Kubernetes e2e suite prints them, and the --json document.

Tables use the scenario format itself (rows are sources, columns
destinations, `.` connected, `X` blocked), so an observed table can be pasted
into a scenario; `-` marks a cell that was not probed (a pod and itself, a
named port the destination lacks, no address in the family).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kube_netpol.tools.conformance.runner import ProbeSetResult, RunResult, ScenarioResult

ALLOWED_MARK = "."
BLOCKED_MARK = "X"
DIFFERS_MARK = "X"
SAME_MARK = "."
NOT_PROBED_MARK = "-"
#: Mismatches listed one by one under a failing probe set (the tables show them all).
MAX_LISTED_MISMATCHES = 20


def render_table(
    sources: Sequence[str], destinations: Sequence[str], cell: Callable[[str, str], str], indent: str = ""
) -> list[str]:
    """Lines of a truth table; the first cell of the header row is the placeholder `-`."""
    first = max(len(name) for name in (*sources, "-"))
    widths = [max(len(name), 1) for name in destinations]

    def line(head: str, cells: Sequence[str]) -> str:
        parts = [head.ljust(first)] + [text.ljust(width) for text, width in zip(cells, widths)]
        return (indent + " ".join(parts)).rstrip()

    return [line("-", destinations)] + [line(src, [cell(src, dst) for dst in destinations]) for src in sources]


def _mark(allowed: bool) -> str:
    return ALLOWED_MARK if allowed else BLOCKED_MARK


def format_probe_set(result: ProbeSetResult, indent: str = "    ") -> list[str]:
    """Expected, observed and their difference for one probe set, then the wrong probes one by one."""
    plan = result.plan
    expected = {(p.src, p.dst): e for p, e in zip(plan.probes, plan.expected)}
    observed = {(p.src, p.dst): o for p, o in zip(plan.probes, result.observed)}

    def cell_of(values: dict[tuple[str, str], bool]) -> Callable[[str, str], str]:
        return lambda src, dst: _mark(values[(src, dst)]) if (src, dst) in values else NOT_PROBED_MARK

    def difference(src: str, dst: str) -> str:
        if (src, dst) not in expected:
            return NOT_PROBED_MARK
        return SAME_MARK if expected[(src, dst)] == observed[(src, dst)] else DIFFERS_MARK

    wrong = len(result.mismatches)
    table_indent = indent + "  "
    lines = [f"{indent}{plan.label} ({plan.where}): {wrong} wrong, {len(plan.probes) - wrong} right"]
    lines.append(f"{indent}expected:")
    lines += render_table(plan.sources, plan.destinations, cell_of(expected), table_indent)
    lines.append(f"{indent}observed:")
    lines += render_table(plan.sources, plan.destinations, cell_of(observed), table_indent)
    lines.append(f"{indent}comparison ({DIFFERS_MARK}: observed differs from expected, {NOT_PROBED_MARK}: not probed):")
    lines += render_table(plan.sources, plan.destinations, difference, table_indent)
    lines.append(f"{indent}wrong probes:")
    for mismatch in result.mismatches[:MAX_LISTED_MISMATCHES]:
        probe = mismatch.probe
        text = (
            f"{table_indent}{probe.src} ({probe.src_ip}) -> {probe.dst} ({probe.dst_ip}) {probe.protocol}/{probe.port}:"
            f" expected {'allowed' if mismatch.expected else 'blocked'},"
            f" observed {'allowed' if mismatch.observed else 'blocked'}"
        )
        lines.append(text + (f"; {mismatch.explanation}" if mismatch.explanation else ""))
    if wrong > MAX_LISTED_MISMATCHES:
        lines.append(f"{table_indent}... and {wrong - MAX_LISTED_MISMATCHES} more")
    return lines


def format_scenario(result: ScenarioResult) -> str:
    if result.invalid:
        return f"INVALID {result.error}"
    if result.passed:
        head = f"PASS {result.name}: {_count(len(result.steps), 'step')}, {_count(result.probes, 'probe')}"
    elif result.error is not None:
        head = f"ERROR {result.name}: {result.error}"
    else:
        head = f"FAIL {result.name}: {result.mismatches} of {result.probes} probes wrong"
    lines = [f"{head} [{result.source}]"]
    lines += [f"  note: cluster setup: {note}" for note in result.setup_notes]
    for number, step in enumerate(result.steps, start=1):
        lines += [f"  note: step {number} {step.name!r}: {note}" for note in step.notes]
        failing = [ps for ps in step.probe_sets if ps.mismatches]
        if failing:
            lines.append(f"  step {number} {step.name!r}:")
            for probe_set in failing:
                lines += format_probe_set(probe_set)
    if result.detail:
        lines += ["  " + line for line in result.detail.rstrip().splitlines()]
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def format_summary(run: RunResult) -> str:
    total = len(run.scenarios)
    return (
        f"{run.mode}: {total} scenarios, {run.passed} passed, {total - run.passed} failed"
        f" ({run.invalid} invalid); {run.probes} probes, {run.mismatches} mismatches"
    )


def to_json(run: RunResult) -> dict[str, Any]:
    """The --json document, exactly the layout of SCENARIO_FORMAT.md."""
    return {
        "mode": run.mode,
        "summary": {
            "scenarios": len(run.scenarios),
            "passed": run.passed,
            "failed": len(run.scenarios) - run.passed,
            "probes": run.probes,
            "mismatches": run.mismatches,
        },
        "scenarios": [
            {
                "name": s.name,
                "passed": s.passed,
                "error": s.error,
                "steps": [
                    {
                        "name": step.name,
                        "probes": [
                            {
                                "port": ps.plan.port,
                                "protocol": ps.plan.protocol,
                                "family": ps.plan.family,
                                "checked": len(ps.plan.probes),
                                "mismatches": [
                                    {
                                        "from": m.probe.src,
                                        "to": m.probe.dst,
                                        "expected": m.expected,
                                        "observed": m.observed,
                                    }
                                    for m in ps.mismatches
                                ],
                            }
                            for ps in step.probe_sets
                        ],
                    }
                    for step in s.steps
                ],
            }
            for s in run.scenarios
        ],
    }
