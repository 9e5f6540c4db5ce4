"""Pods' processes as a container runtime leaves them, for the cgroup lookup of pod network namespaces.

``RuntimePods`` makes real cgroups named as kubelet's two drivers name a pod's
(systemd: ``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with
_>.slice/cri-containerd-<id>.scope``; cgroupfs: ``kubepods/<qos>/pod<uid>/<id>``)
under one directory of its own per hierarchy (cgroup v2 and a v1 one), and
starts a sleeping process in such a cgroup inside a given network namespace.
Everything it made (processes, directories) goes at ``close``; it touches
nothing else.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path


def _mounts() -> list[tuple[str, str, str]]:
    with open("/proc/self/mounts") as f:
        return [(fields[1], fields[2], fields[3]) for fields in (line.split() for line in f) if len(fields) > 3]


def cgroup2_root() -> Path | None:
    for point, fstype, _ in _mounts():
        if fstype == "cgroup2":
            return Path(point)
    return None


def cgroup1_root() -> Path | None:
    """A v1 hierarchy any process may be moved into (pids, else the named systemd one)."""
    points = {opts: point for point, fstype, opts in _mounts() if fstype == "cgroup"}
    for opts, point in points.items():
        if "pids" in opts.split(","):
            return Path(point)
    for opts, point in points.items():
        if "name=systemd" in opts:
            return Path(point)
    return None


class RuntimePods:
    def __init__(self) -> None:
        self.top = f"knp-test-{uuid.uuid4().hex[:10]}"  # unique: only what this test made is removed
        self._dirs: list[Path] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def cgroup(self, uid: str, *, driver: str = "systemd", version: int = 2, qos: str = "besteffort",
               container: str = "", runtime: str = "cri-containerd") -> Path:
        root = cgroup2_root() if version == 2 else cgroup1_root()
        if root is None:
            raise RuntimeError(f"no cgroup v{version} hierarchy mounted")
        container = container or uuid.uuid4().hex * 2
        if driver == "systemd":
            pod = uid.replace("-", "_")
            prefix = "kubepods" if qos == "guaranteed" else f"kubepods-{qos}"
            parts = ["kubepods.slice", *([] if qos == "guaranteed" else [f"{prefix}.slice"]),
                     f"{prefix}-pod{pod}.slice", f"{runtime}-{container}.scope"]
        else:
            parts = ["kubepods", *([] if qos == "guaranteed" else [qos]), f"pod{uid}", container]
        path = root / self.top
        for part in parts:
            path = path / part
        for parent in [*reversed(path.relative_to(root).parents), path.relative_to(root)]:
            full = root / parent
            if str(parent) != "." and not full.exists():
                full.mkdir()
                self._dirs.append(full)
        return path

    def start(self, cgroup: Path, netns: str | None) -> subprocess.Popen[bytes]:
        """A sleeping process in ``cgroup``, in network namespace ``netns`` (a path; None: the host's)."""
        procs = cgroup / "cgroup.procs"

        def join() -> None:
            procs.write_text(str(os.getpid()))

        argv = [*(["nsenter", f"--net={netns}"] if netns else []), "sleep", "600"]
        process = subprocess.Popen(argv, preexec_fn=join, stdin=subprocess.DEVNULL)
        self._processes.append(process)
        deadline = time.monotonic() + 5
        # nsenter execs sleep in the same process: wait until it is in the namespace.
        while netns and time.monotonic() < deadline:
            try:
                if os.stat(f"/proc/{process.pid}/ns/net").st_ino == os.stat(netns).st_ino:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait(5)

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                self.stop(process)
        for path in reversed(self._dirs):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)  # a killed process leaves its cgroup a moment later
        self._dirs.clear()
