"""Finding a pod's network namespace on this node (secondary networks enter it).

Two ways, chosen by ``--pod-netns-lookup``:

- ``dir`` (``DirectoryLocator``): ``--pod-netns-dir DIR`` holds each pod's
  namespace as ``DIR/<namespace>_<name>`` (a symlink or bind mount); the lab
  makes these links.
- ``cgroup`` (``CgroupLocator``): the container runtime (containerd, CRI-O)
  puts every process of a pod in a cgroup named after the pod's UID: systemd
  driver ``.../kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope``,
  cgroupfs driver ``/kubepods/besteffort/pod<uid>/<id>``, cgroup v1 or v2.
  With ``hostPID`` the agent reads ``/proc/*/cgroup`` (under ``--host-proc``),
  finds the processes of the pod's ``metadata.uid``, and uses
  ``/proc/PID/ns/net`` of one that is not in the host's namespace (conmon and
  shims live in the pod's cgroup but in the host namespace). No CRI client:
  the kernel's view is the runtime's truth, for every runtime that uses
  kubelet's cgroup layout. multi-networkpolicy-iptables asks CRI
  ``ContainerStatus`` for a PID and ends at the same ``/proc/PID/ns/net``.

A namespace's identity is its (device, inode), as ``stat`` reports it: a PID
can be reused, the identity cannot while the namespace lives.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Final, Protocol

from kube_netpol.api.cluster import PodRecord

log = logging.getLogger(__name__)

#: (st_dev, st_ino) of a network namespace.
Identity = tuple[int, int]

#: At most this many /proc entries are read per scan (pid_max is far larger; nodes run far fewer).
MAX_PROCESSES: Final = 200_000
#: A pod not found starts a new scan at most this often (the control loop retries every 50 ms).
MIN_RESCAN_S: Final = 1.0
#: Bytes read of one /proc/PID/cgroup (v1 has one line per hierarchy; a few hundred bytes in practice).
_CGROUP_READ: Final = 16384
#: ``pod<uid>``: a path component (or the last dash-separated part of a systemd slice name) naming a pod's UID,
#: dashes as ``_`` in systemd slice names.
_POD_UID: Final = re.compile(
    r"(?:^|[/-])pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12})"
    r"(?:\.slice)?(?=/|$)")


def identity_of(path: str) -> Identity | None:
    """The namespace's identity at ``path`` (following links), None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def normal_uid(uid: str) -> str:
    return uid.lower().replace("_", "-")


def pod_uids_in_cgroups(text: str) -> set[str]:
    """The pod UIDs a ``/proc/PID/cgroup`` file names (normalised: lower case, dashes)."""
    found: set[str] = set()
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "kubepods" not in path:
            continue
        match = _POD_UID.search(path)
        if match is not None:
            found.add(normal_uid(match.group(1)))
    return found


class PodNetnsLocator(Protocol):
    def path(self, pod: PodRecord) -> str | None:
        """The pod's network namespace as a path ``setns`` can open; None while it is not found."""
        ...

    def describe(self, pod: PodRecord) -> str:
        """Where this locator looked for ``pod`` (for the log line saying it is not found)."""
        ...


class DirectoryLocator:
    """``--pod-netns-lookup=dir``: the pod's namespace is ``DIR/<namespace>_<name>`` (a bind mount or symlink)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, pod: PodRecord) -> str | None:
        name = f"{pod.namespace}_{pod.name}"
        if "/" in name or name.startswith("."):
            return None
        found = os.path.join(self.directory, name)
        return found if os.path.exists(found) else None

    def describe(self, pod: PodRecord) -> str:
        return f"no {os.path.join(self.directory, f'{pod.namespace}_{pod.name}')}"


@dataclass(frozen=True)
class _Found:
    pid: int
    identity: Identity


class CgroupLocator:
    """``--pod-netns-lookup=cgroup``: the namespace of a process in the pod's cgroup, by the pod's UID.

    One scan of ``proc_root`` indexes every pod it sees (a node's pods cost one
    scan, not one each); a cached answer is checked with one ``stat`` (the
    process alive, its namespace the same) and re-resolved by the next scan
    when it is not. A pod not found waits for the next scan, at most one per
    ``min_rescan`` seconds (or ten times the last scan's duration, if longer).
    """

    def __init__(self, proc_root: str = "/proc", *, max_processes: int = MAX_PROCESSES,
                 min_rescan: float = MIN_RESCAN_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        self.max_processes = max_processes
        self.min_rescan = min_rescan
        self._clock = clock
        self._found: dict[str, _Found] = {}
        self._last_scan = float("-inf")
        self._warned_empty = False
        self._warned_truncated = False
        self.scans = 0
        self.last_scan_seconds = 0.0
        self.last_scan_processes = 0

    def describe(self, pod: PodRecord) -> str:
        if not pod.uid:
            return "the pod has no metadata.uid to look for"
        return (f"no process under {self.proc_root} in a kubepods cgroup of pod UID {pod.uid} outside the "
                "host's network namespace")

    def _netns_path(self, pid: int) -> str:
        return f"{self.proc_root}/{pid}/ns/net"

    def path(self, pod: PodRecord) -> str | None:
        uid = normal_uid(pod.uid)
        if not uid:
            return None
        found = self._found.get(uid)
        if found is not None:
            if identity_of(self._netns_path(found.pid)) == found.identity:
                return self._netns_path(found.pid)
            del self._found[uid]  # the process is gone (or its PID reused): the next scan re-resolves
        # The scan runs on the control thread: at most a tenth of its time while pods are missing.
        if self._clock() - self._last_scan >= max(self.min_rescan, 10 * self.last_scan_seconds):
            self.scan()
            found = self._found.get(uid)
            if found is not None:
                return self._netns_path(found.pid)
        return None

    def scan(self) -> None:
        """Index every pod UID seen in ``proc_root``'s processes' cgroups -> (PID, namespace identity)."""
        started = time.perf_counter()
        self._last_scan = self._clock()
        self.scans += 1
        host = {i for i in (identity_of(self._netns_path(1)), identity_of("/proc/self/ns/net")) if i is not None}
        # uid -> identity -> the lowest PID seen in it
        candidates: dict[str, dict[Identity, int]] = {}
        seen = 0
        truncated = False
        try:
            entries = os.scandir(self.proc_root)
        except OSError as err:
            log.error("pod network namespaces: cannot read %s (%s)", self.proc_root, err)
            return
        with entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                if seen >= self.max_processes:
                    truncated = True
                    break
                seen += 1
                pid = int(entry.name)
                uids = self._uids_of(pid)
                if not uids:
                    continue
                identity = identity_of(self._netns_path(pid))
                if identity is None or identity in host:
                    continue  # gone meanwhile, or a shim/conmon in the host's namespace
                for uid in uids:
                    known = candidates.setdefault(uid, {})
                    if pid < known.get(identity, pid + 1):
                        known[identity] = pid
        found: dict[str, _Found] = {}
        for uid, by_identity in candidates.items():
            if len(by_identity) == 1:
                identity, pid = next(iter(by_identity.items()))
            else:
                # A container made a namespace of its own: the pod's is the one its oldest process (the sandbox) holds.
                identity, pid = min(by_identity.items(), key=lambda item: self._started(item[1]))
                log.info("pod UID %s: processes in %d network namespaces; using that of PID %d, the oldest",
                         uid, len(by_identity), pid)
            found[uid] = _Found(pid, identity)
        self._found = found
        self.last_scan_processes = seen
        self.last_scan_seconds = time.perf_counter() - started
        if truncated and not self._warned_truncated:
            self._warned_truncated = True
            log.warning("pod network namespaces: more than %d processes under %s; only the first were read",
                        self.max_processes, self.proc_root)
        if not found and not self._warned_empty:
            self._warned_empty = True
            log.warning("pod network namespaces: no process of any pod is visible under %s (%d processes read): "
                        "the agent needs hostPID (or --host-proc pointing at the node's /proc)",
                        self.proc_root, seen)

    def namespaces(self) -> dict[str, str]:
        """Pod UID -> its namespace's path, for every pod the last scan saw (``kube-netpol cleanup``)."""
        return {uid: self._netns_path(found.pid) for uid, found in self._found.items()}

    def _uids_of(self, pid: int) -> set[str]:
        try:
            with open(f"{self.proc_root}/{pid}/cgroup", "rb") as f:
                text = f.read(_CGROUP_READ).decode("utf-8", "replace")
        except OSError:
            return set()
        return pod_uids_in_cgroups(text) if "kubepods" in text else set()

    def _started(self, pid: int) -> int:
        """The process's start time in clock ticks after boot (/proc/PID/stat field 22); huge when unknown."""
        try:
            with open(f"{self.proc_root}/{pid}/stat", "rb") as f:
                stat = f.read(4096)
            return int(stat[stat.rindex(b")") + 2:].split()[19])
        except (OSError, ValueError, IndexError):
            return 1 << 62


def locator_for(lookup: str, pod_netns_dir: str | None, host_proc: str) -> PodNetnsLocator:
    """The locator ``--pod-netns-lookup`` names."""
    if lookup == "dir":
        if not pod_netns_dir:
            raise ValueError("--pod-netns-lookup=dir needs --pod-netns-dir")
        return DirectoryLocator(pod_netns_dir)
    if lookup == "cgroup":
        return CgroupLocator(host_proc)
    raise ValueError(f"unknown --pod-netns-lookup {lookup!r} (dir or cgroup)")
