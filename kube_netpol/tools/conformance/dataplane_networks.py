"""Secondary networks in `dataplane` mode: the lab's attachments of each pod, and the agent's netns folder.

Each attached pod gets one interface per network (net1, net2... as in its
network-status) on that network's layer-2 segment, with its addresses there
(IPv4 /16, IPv6 /32: every pod of network k is in 10.<100+k>.0.0/16 and
fd00:<100+k>::/32, so they reach each other directly). The agent finds a
pod's namespace as ``<folder>/<namespace>_<pod>``, a symlink to the lab's
namespace: "by name in the lab".
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from kube_netpol.tools.conformance.cluster import ClusterSnapshot

NETNS_RUN_DIR = "/run/netns"


def host_attachments(cluster: ClusterSnapshot) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Pod (``ns/pod``) -> [(network, interface, addresses with prefix)] for the lab."""
    found: dict[str, list[tuple[str, str, list[str]]]] = {}
    for pod in cluster.pods:
        for attachment in pod.networks:
            addresses = [f"{ip}/{16 if ipaddress.ip_address(ip).version == 4 else 32}" for ip in attachment.ips.values()]
            found.setdefault(pod.key, []).append((attachment.network, attachment.interface, addresses))
    return found


class NetnsLinks:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _link(self, pod: str) -> Path:
        namespace, name = pod.split("/")
        return self.directory / f"{namespace}_{name}"

    def add(self, pod: str, netns: str) -> None:
        link = self._link(pod)
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.join(NETNS_RUN_DIR, netns), link)

    def remove(self, pod: str) -> None:
        if "/" in pod:
            link = self._link(pod)
            if link.is_symlink():
                link.unlink()
