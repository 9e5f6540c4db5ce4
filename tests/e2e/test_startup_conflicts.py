"""A second agent on a node where the first holds the metrics port or the NFQUEUE: one clear line, exit 2.

The second agent reads the same manifests in the same node namespace, so it
gets as far as the resource it cannot have; it must say which one, that
another process holds it, and what to do, without a traceback.
"""

from __future__ import annotations

import subprocess
import sys

from e2e_agentlab import DUAL_STACK_PODS, NODE, AgentLab, agent_lab, requires_root

from kube_netpol.tools.conformance.dataplane_agent import STATUS_HOST, STATUS_PORT

pytestmark = requires_root


def second_agent(env: AgentLab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kube_netpol", "run", "--manifests", str(env.folder.path),
            "--hostname-override", NODE, "--nftables-table", env.agent.table + "-second", *args]
    return env.node(argv, check=False)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_metrics_port_in_use() -> None:
    with agent_lab(DUAL_STACK_PODS) as env:
        result = second_agent(env, "--metrics-bind-address", f"{STATUS_HOST}:{STATUS_PORT}", "--nfqueue-id", "4243")
        assert result.returncode == 2, result.stderr
        line = last_line(result)
        assert line.startswith(f"kube-netpol run: cannot serve metrics on {STATUS_HOST}:{STATUS_PORT}: "), line
        assert "another process (another kube-netpol agent?)" in line and "--metrics-bind-address" in line
        assert env.agent.status() is not None  # the first agent is untouched


def test_queue_in_use() -> None:
    with agent_lab(DUAL_STACK_PODS) as env:
        result = second_agent(env, "--metrics-bind-address", "0", "--nfqueue-id", "100")  # the first agent's queue
        assert result.returncode == 2, result.stderr
        line = last_line(result)
        assert line.startswith("kube-netpol run: NFQUEUE 100 is already bound by another process"), line
        assert "another kube-netpol agent" in line and "--nfqueue-id" in line
        assert env.agent.status() is not None
        assert not env.node(["nft", "list", "table", "inet", env.agent.table + "-second"], check=False).returncode == 0
