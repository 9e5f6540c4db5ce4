"""Remove the namespaces of labs whose owning process is gone (e.g. killed with SIGKILL)."""

from __future__ import annotations

from kube_netpol.tools.lab.names import parse_netns_name
from kube_netpol.tools.lab.netns import delete_netns, list_netns, pids_in_netns
from kube_netpol.tools.lab.processes import end_processes


def stale_netns(prefix: str | None = None) -> list[str]:
    """Lab namespaces (of ``prefix``, or of any prefix) whose owner process no longer exists."""
    stale = []
    for name in list_netns():
        parsed = parse_netns_name(name)
        if parsed is None or (prefix is not None and parsed.prefix != prefix):
            continue
        if not parsed.owner.alive():
            stale.append(name)
    return stale


def cleanup_stale(prefix: str | None = None, process_grace: float = 2.0) -> list[str]:
    """Delete stale lab namespaces (their veths go with them) and return their names.

    Processes still inside them (an agent the dead lab's owner had started) are
    ended first: they would keep the namespaces alive without a name.
    """
    stale = stale_netns(prefix)
    if stale:
        end_processes(pids_in_netns(stale), process_grace)
        delete_netns(stale)
    return stale
