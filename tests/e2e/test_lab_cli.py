"""`kube-netpol lab demo` and `kube-netpol lab cleanup` (after a harness killed with its agent still running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from e2e_agentlab import requires_root

from kube_netpol.tools.lab.netns import list_netns, pids_in_netns

pytestmark = requires_root


def kube_netpol(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kube_netpol", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_prints_both_truth_tables_and_leaves_nothing_behind() -> None:
    before = {name for name in list_netns() if name.startswith("knldemo-")}
    result = kube_netpol("lab", "demo", "--probe-timeout", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("TCP/80 IPv4") == 2 and out.count("as expected") == 2
    # After the policy: z/a cannot reach x/a, y/a can (rows are sources).
    after_policy = out.split("step 2:")[1]
    assert "  z/a X   X   X   .   .   .   -   .   ." in after_policy
    assert "  y/a .   .   .   -   .   .   .   .   ." in after_policy
    assert {name for name in list_netns() if name.startswith("knldemo-")} - before == set()


#: A harness that builds a lab, starts the agent in it, then waits to be killed.
HARNESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kube_netpol.tools.conformance.dataplane_agent import AgentProcess
    from kube_netpol.tools.conformance.dataplane_manifests import ManifestFolder
    from kube_netpol.tools.lab import Lab

    folder = ManifestFolder()
    lab = Lab(sys.argv[1])
    lab.add_host("x/a", ["10.244.1.10"])
    agent = AgentProcess(lab, folder.path, folder.path / "agent.log", node_name="n", table=sys.argv[1])
    agent.wait_enforced(folder.write([]), timeout=20)
    print(lab.node_netns, agent.process.pid, folder.path, flush=True)
    time.sleep(600)
    """
)


def test_cleanup_removes_a_killed_harness_lab_and_its_agent() -> None:
    prefix = f"knlk{os.getpid() % 100000}"
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, prefix], stdout=subprocess.PIPE, text=True)
    try:
        node_netns, agent_text, folder = harness.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        harness.kill()
        harness.wait(5)
    agent_pid = int(agent_text)
    try:
        assert node_netns in list_netns()
        assert agent_pid in pids_in_netns([node_netns])  # the agent outlived its harness

        result = kube_netpol("lab", "cleanup", "--prefix", prefix)
        assert result.returncode == 0, result.stderr
        assert f"removed network namespace {node_netns}" in result.stdout
        assert not [name for name in list_netns() if name.startswith(prefix + "-")]
        deadline = time.monotonic() + 5
        while _running(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(agent_pid)
    finally:
        for pid in pids_in_netns([node_netns]):  # only if cleanup failed: the agent we started, still in its lab
            os.kill(pid, signal.SIGKILL)
        for name in list_netns():
            if name.startswith(prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["rm", "-rf", "--", folder], check=False)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
