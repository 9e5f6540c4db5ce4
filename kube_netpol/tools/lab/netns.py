"""Named network namespaces, and entering one from a thread.

Python 3.11 has no os.setns, so setns(2) is called through ctypes. setns
changes only the calling thread, and a socket stays in the namespace it was
created in, so one process can own sockets in many namespaces. The process's
main thread is never moved (``entered`` refuses to run on it).
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Final, Sequence

# One implementation of entering a namespace, the agent's (re-exported for the lab's users).
from kube_netpol.dataplane.netns import CLONE_NEWNET as CLONE_NEWNET
from kube_netpol.dataplane.netns import entered as entered
from kube_netpol.dataplane.netns import setns as setns
from kube_netpol.tools.lab.topology import batch_script

NETNS_RUN_DIR: Final = "/run/netns"
IP: Final = "ip"


class NetnsError(RuntimeError):
    """A namespace operation failed."""


def open_netns(name: str) -> int:
    """An fd for setns. Holding it keeps the namespace alive: close it before deleting."""
    return os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def write_sysctl(key: str, value: str) -> None:
    """Set a sysctl in the calling thread's network namespace (/proc/sys/net follows the thread)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as sysctl:
        sysctl.write(value)


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


def add_netns(name: str) -> None:
    _run([IP, "netns", "add", name])


def delete_netns(names: Sequence[str]) -> None:
    """Delete named namespaces in one `ip` run; keeps going past names already gone."""
    present = set(list_netns())
    wanted = [name for name in names if name in present]
    if not wanted:
        return
    try:
        _run([IP, "-force", "-batch", "-"], batch_script([["netns", "del", name] for name in wanted]))
    except NetnsError:
        pass  # judged below by what is left: a name deleted meanwhile is not a failure
    left = set(list_netns()) & set(wanted)
    if left:
        raise NetnsError(f"namespaces not deleted: {sorted(left)}")


def ip_batch(netns: str, commands: Sequence[Sequence[str]]) -> None:
    """Run `ip` commands inside a namespace (ip -n switches itself; no shell involved)."""
    _run([IP, "-n", netns, "-batch", "-"], batch_script(commands))


def socket_in(netns_fd: int, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket created inside a namespace (it stays there for its whole life)."""
    with entered(netns_fd):
        sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    return sock


def pids_in_netns(names: Sequence[str]) -> list[int]:
    """Processes (other than this one) whose main thread lives in one of these namespaces."""
    inodes = set()
    for name in names:
        try:
            info = os.stat(os.path.join(NETNS_RUN_DIR, name))
        except FileNotFoundError:
            continue
        inodes.add((info.st_dev, info.st_ino))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            info = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if (info.st_dev, info.st_ino) in inodes:
            pids.append(int(entry))
    return pids
