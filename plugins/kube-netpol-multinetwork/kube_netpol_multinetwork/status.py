"""A pod's secondary-network attachments, from Multus's ``k8s.v1.cni.cncf.io/network-status`` annotation.

Multus writes a JSON list, one entry per interface: the cluster network
first (``default: true``), then each attachment with its ``name``
(``namespace/name`` of the NetworkAttachmentDefinition), ``interface`` and
``ips``. The annotation is what the runtime actually did (the
``k8s.v1.cni.cncf.io/networks`` request annotation is not): only it is read.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
#: Larger annotations are not read (a bound on one pod's cost); the pod then has no attachments.
MAX_STATUS_BYTES = 64 * 1024
MAX_ENTRIES = 64


@dataclass(frozen=True, slots=True)
class Attachment:
    """One secondary interface: the network's ``namespace/name``, the interface in the pod, its packed addresses."""

    network: str
    interface: str
    ips: tuple[bytes, ...]


class StatusError(ValueError):
    """The annotation cannot be read; the message says why."""


def parse_network_status(text: str, namespace: str) -> tuple[Attachment, ...]:
    """The secondary attachments the annotation lists (the cluster network's entry left out).

    A network named without a namespace is in the pod's ``namespace``, as
    Multus resolves it. Raises StatusError for text that is not the
    annotation's shape.
    """
    if len(text) > MAX_STATUS_BYTES:
        raise StatusError(f"longer than {MAX_STATUS_BYTES} bytes")
    try:
        entries = json.loads(text)
    except ValueError as err:
        raise StatusError(f"not JSON: {err}") from None
    if not isinstance(entries, list):
        raise StatusError("not a JSON list")
    if len(entries) > MAX_ENTRIES:
        raise StatusError(f"more than {MAX_ENTRIES} entries")
    found: list[Attachment] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise StatusError(f"entry {i} is not an object")
        if entry.get("default") is True:
            continue  # the cluster network: NetworkPolicy's, not ours
        name = entry.get("name")
        interface = entry.get("interface", "")
        if not isinstance(name, str) or not name or not isinstance(interface, str):
            raise StatusError(f"entry {i} has no network name or a bad interface")
        network = name if "/" in name else f"{namespace}/{name}"
        ips = entry.get("ips") or []
        if not isinstance(ips, list):
            raise StatusError(f"entry {i}: ips is not a list")
        packed = []
        for text_ip in ips:
            try:
                packed.append(ipaddress.ip_address(str(text_ip).split("/", 1)[0]).packed)
            except ValueError:
                raise StatusError(f"entry {i}: {text_ip!r} is not an IP address") from None
        found.append(Attachment(network, interface, tuple(packed)))
    return tuple(found)
