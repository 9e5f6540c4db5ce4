"""The cgroup lookup of pod network namespaces against the real kernel: real cgroups (v2 and v1), real processes.

Each test makes its own network namespaces (unique names) and cgroups (one
unique top directory per hierarchy, see e2e_cgroups.RuntimePods) and removes
them, also on failure.
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from typing import Iterator

import pytest
from e2e_agentlab import requires_root
from e2e_cgroups import RuntimePods, cgroup1_root, cgroup2_root

from kube_netpol.agent.cleanup import cleanup_pod_namespaces_by_cgroup
from kube_netpol.agent.podnetns import CgroupLocator, identity_of
from kube_netpol.dataplane.secondary import Diverted, SecondaryRules
from kube_netpol.api import PodRecord

pytestmark = requires_root


@pytest.fixture
def runtime() -> Iterator[RuntimePods]:
    pods = RuntimePods()
    try:
        yield pods
    finally:
        pods.close()


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """Make named network namespaces on demand (``make()``); all deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def new_netns(made: list[str]) -> str:
    name = f"knp-lookup-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    made.append(name)
    return f"/run/netns/{name}"


def pod(uid: str) -> PodRecord:
    return PodRecord("x", f"p-{uid[:4]}", {}, {}, "", {}, (), False, False, (), {}, uid=uid)


needs_v2 = pytest.mark.skipif(cgroup2_root() is None, reason="no cgroup v2 hierarchy mounted")
needs_v1 = pytest.mark.skipif(cgroup1_root() is None, reason="no cgroup v1 hierarchy mounted")


@needs_v2
def test_a_pod_is_found_by_its_uid_in_a_systemd_slice_of_cgroup_v2(runtime: RuntimePods, netns: list[str]) -> None:
    uid = str(uuid.uuid4())
    other_uid = str(uuid.uuid4())
    ns, other_ns = new_netns(netns), new_netns(netns)
    slice_ = runtime.cgroup(uid, driver="systemd", version=2)
    # A conmon-like process in the pod's slice but the host's namespace: never the pod's namespace.
    runtime.start(runtime.cgroup(uid, driver="systemd", version=2, runtime="crio-conmon"), None)
    runtime.start(slice_, ns)
    runtime.start(runtime.cgroup(other_uid, driver="systemd", version=2, qos="burstable", runtime="crio"), other_ns)
    locator = CgroupLocator("/proc")
    found = locator.path(pod(uid))
    assert found is not None and identity_of(found) == identity_of(ns)
    other = locator.path(pod(other_uid))
    assert other is not None and identity_of(other) == identity_of(other_ns)
    assert locator.scans == 1  # one scan indexed both pods


@needs_v1
def test_a_pod_is_found_in_a_cgroupfs_path_of_cgroup_v1(runtime: RuntimePods, netns: list[str]) -> None:
    uid = str(uuid.uuid4())
    ns = new_netns(netns)
    runtime.start(runtime.cgroup(uid, driver="cgroupfs", version=1, qos="guaranteed"), ns)
    found = CgroupLocator("/proc").path(pod(uid))
    assert found is not None and identity_of(found) == identity_of(ns)


@needs_v2
def test_a_gone_process_is_re_resolved_and_a_missing_pod_is_not_found(runtime: RuntimePods, netns: list[str]) -> None:
    uid = str(uuid.uuid4())
    ns = new_netns(netns)
    cgroup = runtime.cgroup(uid, driver="systemd", version=2)
    first = runtime.start(cgroup, ns)
    locator = CgroupLocator("/proc", min_rescan=0.0)
    assert locator.path(pod(uid)) == f"/proc/{first.pid}/ns/net"
    scans = locator.scans
    assert locator.path(pod(uid)) == f"/proc/{first.pid}/ns/net"
    assert locator.scans == scans  # answered from the cache, checked with a stat
    second = runtime.start(cgroup, ns)
    runtime.stop(first)
    assert locator.path(pod(uid)) == f"/proc/{second.pid}/ns/net"  # re-resolved by a new scan
    assert locator.scans == scans + 1
    runtime.stop(second)
    assert locator.path(pod(uid)) is None  # nothing of the pod is left
    assert locator.path(pod(str(uuid.uuid4()))) is None


@needs_v2
def test_a_container_with_a_namespace_of_its_own_does_not_hide_the_pods(runtime: RuntimePods, netns: list[str]) -> None:
    uid = str(uuid.uuid4())
    pods_ns, own_ns = new_netns(netns), new_netns(netns)
    sandbox = runtime.start(runtime.cgroup(uid, driver="systemd", version=2), pods_ns)  # started first
    runtime.start(runtime.cgroup(uid, driver="systemd", version=2), own_ns)
    found = CgroupLocator("/proc").path(pod(uid))
    assert found == f"/proc/{sandbox.pid}/ns/net"


def test_no_visible_pod_process_is_said_once(tmp_path: os.PathLike[str], caplog: pytest.LogCaptureFixture) -> None:
    """A /proc without pods' processes (no hostPID): found nothing, and a log line says what to check."""
    caplog.set_level(logging.WARNING, "kube_netpol.agent.podnetns")
    locator = CgroupLocator(str(tmp_path), min_rescan=0.0)
    assert locator.path(pod(str(uuid.uuid4()))) is None
    assert locator.path(pod(str(uuid.uuid4()))) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"pod network namespaces: no process of any pod is visible under {tmp_path} (0 processes read): "
        "the agent needs hostPID (or --host-proc pointing at the node's /proc)"]


@needs_v2
def test_cleanup_removes_the_chain_from_pods_found_by_cgroup(runtime: RuntimePods, netns: list[str]) -> None:
    uid = str(uuid.uuid4())
    ns, untouched = new_netns(netns), new_netns(netns)
    runtime.start(runtime.cgroup(uid, driver="systemd", version=2), ns)
    rules = SecondaryRules()
    rules.install(ns, [Diverted("net1", 101)], bypass=True)  # what a fail-open agent leaves
    rules.install(untouched, [Diverted("net1", 101)], bypass=True)  # no pod's process: not a pod's namespace
    try:
        result = cleanup_pod_namespaces_by_cgroup("/proc")
        assert "pod UIDs: " in result and uid in result
        assert not rules.present(ns) and rules.present(untouched)
    finally:
        rules.remove(untouched)
