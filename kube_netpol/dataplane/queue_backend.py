"""Which way packets reach NFQUEUE: the native nftables ``queue`` statement or an xtables rule.

Real nodes usually have the native expression; some kernels (this VM's) have
nf_tables without ``nft_queue``, where the kernel answers ENOENT to a rule
using it, while the xtables NFQUEUE target still works.
"""

from __future__ import annotations

import os
import secrets
from typing import Literal

from kube_netpol.dataplane.nft import NftablesError, NftClient
from kube_netpol.dataplane.ruleset import NATIVE_QUEUE_PROBE, Backend, Json, probe_commands

BackendChoice = Literal["auto", "nft", "xt"]
CHOICES: tuple[BackendChoice, ...] = ("auto", "nft", "xt")


class QueueBackendUnavailable(RuntimeError):
    """The chosen queue backend cannot work on this kernel."""


def kernel_supports(nft: NftClient, statement: Json) -> bool:
    """Whether the kernel accepts a rule with ``statement``; leaves nothing behind.

    Only ENOENT means "unsupported"; any other error (no permission, broken
    libnftables) is raised, since guessing would hide it.
    """
    table = f"kube-netpol-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        nft.run(probe_commands(table, statement))
    except NftablesError as e:
        if e.not_found:
            return False
        raise
    return True


def detect_queue_backend(nft: NftClient | None = None) -> Backend:
    """"nft" when the kernel has the native queue expression, else "xt"."""
    return "nft" if kernel_supports(nft or NftClient(), NATIVE_QUEUE_PROBE) else "xt"


def resolve_queue_backend(choice: str, nft: NftClient | None = None) -> Backend:
    """Turn a configured "auto|nft|xt" into the backend to use.

    An explicit "nft" on a kernel without the queue expression is an error
    rather than a silent switch: the operator asked for something else.
    """
    if choice not in CHOICES:
        raise ValueError(f"queue backend must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "xt":
        return "xt"
    detected = detect_queue_backend(nft)
    if choice == "nft" and detected != "nft":
        raise QueueBackendUnavailable(
            "queue backend 'nft' was requested but this kernel has no nftables queue expression "
            "(nft_queue: the kernel answered ENOENT); use 'xt' or 'auto'"
        )
    return detected
