"""The kernel's verdict memory with the real agent: it answers repeat keys, and follows every policy change.

Each probe is a new TCP connection (a new source port, so a new conntrack
entry): without the memory its SYN would be queued. The counters of the
memory's lookup rules say whether the kernel answered it; the memory's sets
say what it holds. Runs with whichever queue backend the kernel has (the
real-kernel tier runs this file with the native one).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from e2e_agentlab import AgentLab, agent_lab, allow_ingress_from_pod, deny_ingress, requires_root

from kube_netpol.tools.conformance.dataplane_agent import AgentProcess

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"]}
MEMORY = ("--verdict-memory=true",)


def table_objects(env: AgentLab) -> list[dict[str, Any]]:
    listed = env.node(["nft", "-j", "list", "table", "inet", env.agent.table], check=False)
    if listed.returncode != 0:
        return []
    return list(json.loads(listed.stdout)["nftables"])


def remembered(env: AgentLab, verdict: str) -> int:
    """Keys the IPv4 set of ``verdict`` ("accept", "drop") holds."""
    for obj in table_objects(env):
        if obj.get("set", {}).get("name") == f"remembered-{verdict}-v4":
            return len(obj["set"].get("elem", []))
    raise AssertionError(f"no remembered-{verdict}-v4 set in the agent's table")


def answered(env: AgentLab, counter: str) -> int:
    """Packets the kernel answered from its memory (the lookup rules' named counter)."""
    packets = env.counter_packets(counter)
    if packets is None:
        raise AssertionError(f"no counter {counter} in the agent's table")
    return packets


def test_a_remembered_accept_is_answered_by_the_kernel_and_denied_right_after_a_policy_change() -> None:
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")], extra_args=MEMORY) as env:
        assert env.probe("x/b", "x/a")
        assert remembered(env, "accept") == 1
        before = answered(env, "remembered-accepted")
        assert [env.probe("x/b", "x/a") for _ in range(3)] == [True] * 3
        assert answered(env, "remembered-accepted") >= before + 3, "repeats must be answered in the kernel"

        env.apply(deny_ingress("x", "a"))
        assert remembered(env, "accept") == 0, "a new snapshot forgets every remembered verdict"
        assert not env.probe("x/b", "x/a")
        assert not env.probe("x/b", "x/a")


def test_a_remembered_drop_is_allowed_after_the_policy_is_deleted() -> None:
    with agent_lab(PODS, policies=[deny_ingress("x", "a")], extra_args=MEMORY) as env:
        assert not env.probe("x/b", "x/a")
        assert remembered(env, "drop") == 1
        before = answered(env, "remembered-dropped")
        assert not env.probe("x/b", "x/a")
        assert answered(env, "remembered-dropped") > before, "a repeat must be dropped in the kernel"

        env.apply()
        assert remembered(env, "drop") == 0
        assert env.probe("x/b", "x/a")


def test_remembered_verdicts_expire_after_the_timeout() -> None:
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")],
                   extra_args=(*MEMORY, "--verdict-memory-timeout=2")) as env:
        assert env.probe("x/b", "x/a")
        assert remembered(env, "accept") == 1
        time.sleep(3)
        assert remembered(env, "accept") == 0
        assert env.probe("x/b", "x/a")  # judged again by the agent, remembered again
        assert remembered(env, "accept") == 1


def test_without_the_flag_nothing_is_remembered() -> None:
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")],
                   extra_args=("--verdict-memory=false",)) as env:
        assert env.probe("x/b", "x/a")
        names = {obj["set"]["name"] for obj in table_objects(env) if "set" in obj}
        assert not any(name.startswith("remembered-") for name in names), names


def test_a_fail_closed_restart_forgets_what_the_earlier_agent_remembered() -> None:
    with agent_lab(PODS, fail_open=False, policies=[allow_ingress_from_pod("x", "a", "b")], extra_args=MEMORY) as env:
        assert env.probe("x/b", "x/a")
        assert remembered(env, "accept") == 1
        env.agent.kill(signal.SIGKILL)
        env.agent.process.wait(5)
        # While no agent runs, the policy changes; the new agent must not answer from the old memory.
        revision = env.folder.write(env.objects([deny_ingress("x", "a")]))
        old = env.agent
        old.stop()
        env.agent = AgentProcess(env.lab, env.folder.path, old.log_path, node_name=old.node_name, table=old.table,
                                 fail_open=False, strict_mode=True, extra_args=MEMORY)
        try:
            env.agent.wait_enforced(revision, timeout=20)
            assert remembered(env, "accept") == 0
            assert not env.probe("x/b", "x/a")
            assert env.probe("y/a", "x/b")  # unmanaged pod: not judged at all
        finally:
            env.agent.stop()


def test_a_fail_closed_stop_removes_the_memory_with_the_table() -> None:
    with agent_lab(PODS, fail_open=False, policies=[allow_ingress_from_pod("x", "a", "b")], extra_args=MEMORY) as env:
        assert env.probe("x/b", "x/a")
        assert remembered(env, "accept") == 1
        env.agent.stop()
        assert not env.table_exists()
        assert env.xt_rules() == []


def test_after_a_fail_closed_agent_dies_only_what_it_remembered_passes_until_the_timeout() -> None:
    with agent_lab(PODS, fail_open=False, policies=[allow_ingress_from_pod("x", "a", "b")],
                   extra_args=(*MEMORY, "--verdict-memory-timeout=3")) as env:
        assert env.probe("x/b", "x/a")
        env.agent.kill(signal.SIGKILL)
        env.agent.process.wait(5)
        time.sleep(0.2)
        # Judged before the agent died, remembered: answered by the kernel while the memory holds it.
        assert env.probe("x/b", "x/a")
        # Never judged: queued without bypass, nobody reads, dropped.
        assert not env.probe("x/a", "x/b", protocol="UDP")
        time.sleep(3.5)
        assert not env.probe("x/b", "x/a"), "once the memory's timeout is over, fail-closed drops it too"
