"""The seam between the harness and what it checks: one Backend per mode.

A mode is a module (``MODES``) with ``create_backend(setup) -> Backend``.
The runner, per scenario:

    backend = module.create_backend(setup)      # nothing exists yet
    backend.apply(setup_change)                 # the initial namespaces and pods
    for each step:
        backend.apply(step.change)              # deletes, then applies, in order
        observed = backend.run(step probes)     # one bool per probe, same order
    backend.close()                             # always, also after an error

An exception from any call ends the scenario as failed (not invalid). A
backend may also define ``explain(probe) -> str`` to say why a probe came out
as it did; the report shows it for mismatches.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from kube_netpol.tools.conformance.cluster import ClusterSnapshot, StepChange
from kube_netpol.tools.conformance.probes import Probe

MODES = {
    "offline": "kube_netpol.tools.conformance.offline",
    "dataplane": "kube_netpol.tools.conformance.dataplane",
}


@dataclass(frozen=True)
class BackendSetup:
    """What a backend may want to know before the first change.

    ``cluster`` is the initial cluster (the externals never change after it);
    ``listen`` is every (port, protocol) any probe of the scenario uses, named
    ports resolved, so that a lab can start its servers once; ``families`` are
    the families the scenario probes.
    """

    scenario: str
    source: str
    cluster: ClusterSnapshot
    listen: tuple[tuple[int, str], ...]
    families: tuple[str, ...]


@runtime_checkable
class Backend(Protocol):
    def apply(self, change: StepChange) -> Sequence[str]:
        """Make the change; return notes for the report (e.g. objects the implementation refused)."""
        ...

    def run(self, probes: Sequence[Probe]) -> list[bool]:
        """Whether each probe's connection succeeds, in the order given."""
        ...

    def close(self) -> None: ...


BackendFactory = Callable[[BackendSetup], Backend]


class ModeUnavailable(RuntimeError):
    """The mode's backend module is not installed or cannot be imported."""


def load_backend_factory(mode: str) -> BackendFactory:
    """``create_backend`` of the mode's module, imported on demand (dataplane needs root tooling)."""
    module_name = MODES.get(mode)
    if module_name is None:
        raise ModeUnavailable(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ModeUnavailable(f"{mode} mode is not available yet: there is no module {module_name}") from None
        raise ModeUnavailable(f"{mode} mode cannot be loaded: {err}") from err
    except ImportError as err:
        raise ModeUnavailable(f"{mode} mode cannot be loaded: {err}") from err
    factory = getattr(module, "create_backend", None)
    if not callable(factory):
        raise ModeUnavailable(f"{module_name} has no create_backend(setup) function")
    return factory  # type: ignore[no-any-return]
