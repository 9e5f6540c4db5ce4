"""What differs between the kernel and the ruleset a Dataplane wants: pure, for a log line and a metric.

``table_drift`` reads a parsed ``list table`` against the spec and the
elements the Dataplane put in its sets; the Dataplane adds the xt queue rules
it found missing. Repairing is ``ruleset.reconcile_commands`` (one
transaction) plus ``Xtables.ensure``; this module only says what drifted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from kube_netpol.dataplane.ruleset import (
    MANAGED_SETS,
    RulesetSpec,
    TableState,
    compare_table,
    installed_elements,
)

#: The values of the repairs metric's ``kind`` label, one per kind of drift.
KINDS: Final = ("table", "chain", "rule", "set", "element", "counter", "foreign", "xt_rule")


@dataclass(frozen=True)
class Drift:
    """How the kernel differed from what the Dataplane wants; false when it did not."""

    table_missing: bool = False
    chains: tuple[str, ...] = ()  # ours, missing or with another hook or priority
    rules: tuple[str, ...] = ()  # ours, present, whose rules differ from the generated ones
    sets: tuple[str, ...] = ()  # ours, missing or of another shape
    counters: tuple[str, ...] = ()  # ours, missing
    foreign: tuple[str, ...] = ()  # chains or sets in our table that we do not create
    missing_elements: int = 0  # addresses the managed sets should hold and do not
    extra_elements: int = 0  # addresses they hold and should not
    xt_rules: tuple[str, ...] = ()  # "IPv4 mangle POSTROUTING": our queue rule missing or changed there

    def __bool__(self) -> bool:
        return bool(self.kinds())

    @property
    def in_table(self) -> bool:
        """Something in our nftables table differs (as opposed to the xt rules only)."""
        return bool(set(self.kinds()) - {"xt_rule"})

    def kinds(self) -> tuple[str, ...]:
        """The kinds (``KINDS``) that drifted: one metric increment each per repair."""
        if self.table_missing:
            return ("table",) + (("xt_rule",) if self.xt_rules else ())
        found = {
            "chain": bool(self.chains),
            "rule": bool(self.rules),
            "set": bool(self.sets),
            "element": bool(self.missing_elements or self.extra_elements),
            "counter": bool(self.counters),
            "foreign": bool(self.foreign),
            "xt_rule": bool(self.xt_rules),
        }
        return tuple(kind for kind in KINDS if found.get(kind))

    def describe(self) -> str:
        """One line: ``table inet X missing`` or ``chains postrouting; 3 set elements missing ...``."""
        if not self:
            return "no drift"
        parts = []
        if self.table_missing:
            parts.append("table missing")
        for label, names in (("chains missing or changed", self.chains), ("rules changed in", self.rules),
                             ("sets missing or changed", self.sets), ("counters missing", self.counters),
                             ("foreign objects in the table", self.foreign),
                             ("queue rule missing or changed in", self.xt_rules)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if self.missing_elements:
            parts.append(f"{self.missing_elements} managed addresses missing from the sets")
        if self.extra_elements:
            parts.append(f"{self.extra_elements} unexpected addresses in the sets")
        return "; ".join(parts)

    def with_xt(self, xt_rules: tuple[str, ...]) -> Drift:
        return replace(self, xt_rules=xt_rules)


def table_drift(spec: RulesetSpec, state: TableState | None, elements: Mapping[str, frozenset[str]]) -> Drift:
    """How the kernel's table (``state``, None when it is gone) differs from ``spec`` holding ``elements``."""
    if state is None:
        return Drift(table_missing=True)
    diff = compare_table(spec, state)
    chains = tuple(name for name, ok in diff.chain_ok.items() if not ok)
    rules = tuple(name for name in diff.present_chains if diff.chain_ok[name] and not diff.rules_ok[name])
    missing = extra = 0
    have = installed_elements(state)
    for s in MANAGED_SETS:
        if s.name in diff.missing_sets or s.name in diff.bad_sets:
            missing += len(elements.get(s.name, ()))  # counted with its set: they are gone with it
            continue
        want, got = elements.get(s.name, frozenset()), have[s.name]
        if want != got:
            missing += len(want - got)
            extra += len(got - want)
    return Drift(
        chains=chains,
        rules=rules,
        sets=diff.missing_sets + diff.bad_sets,
        counters=diff.missing_counters,
        foreign=diff.foreign_chains + diff.foreign_sets,
        missing_elements=missing,
        extra_elements=extra,
    )
