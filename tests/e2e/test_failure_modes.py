"""What happens to traffic when the agent dies (SIGKILL: no chance to clean up).

Both queue backends: the checks read where the kernel queues packets, the xt
rules or the native queue statements of the agent's table (the real-kernel
tier runs this file on a kernel with the native backend).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from e2e_agentlab import AgentLab, agent_lab, allow_ingress_from_pod, deny_ingress, requires_root

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"], "y/b": ["10.244.2.11"]}


def queue_backend(env: AgentLab) -> str:
    status = env.agent.status()
    assert status is not None
    return str(status["queue_backend"])


def native_queue_statements(env: AgentLab) -> list[dict[str, Any]]:
    """The queue statements of the agent's table in the node's kernel; [] when the table is gone."""
    listed = env.node(["nft", "-j", "list", "table", "inet", env.agent.table], check=False)
    if listed.returncode != 0:
        return []
    rules = [item["rule"] for item in json.loads(listed.stdout)["nftables"] if "rule" in item]
    return [expr["queue"] for rule in rules for expr in rule["expr"] if "queue" in expr]


def assert_still_queued(env: AgentLab, backend: str, *, bypass: bool) -> None:
    """Packets are still diverted to the queue, with (fail-open) or without (fail-closed) bypass."""
    if backend == "xt":
        rules = env.xt_rules()
        assert rules, "the xt queue rules must still be there for this test to mean anything"
        assert all(("--queue-bypass" in rule) is bypass for rule in rules), rules
    else:
        queues = native_queue_statements(env)
        assert queues, "the table's queue statements must still be there for this test to mean anything"
        flags = [[q["flags"]] if isinstance(q.get("flags"), str) else q.get("flags", []) for q in queues]
        assert all(("bypass" in f) is bypass for f in flags), queues
        assert env.xt_rules() == []


def kill_agent(env) -> None:  # type: ignore[no-untyped-def]
    env.agent.kill(signal.SIGKILL)
    env.agent.process.wait(5)
    # The kernel unbinds the dead process's queue when its netlink socket closes.
    time.sleep(0.2)


def test_fail_open_traffic_to_managed_pods_flows_after_the_agent_is_killed() -> None:
    with agent_lab(PODS, fail_open=True, policies=[deny_ingress("x", "a")], extra_args=("--verdict-memory=false",)) as env:
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("x/a", "x/b")]) == [False, False, True]
        backend = queue_backend(env)
        kill_agent(env)
        # The rules stay (x/a is still diverted to the queue) but nobody reads it: bypass lets packets through.
        assert env.table_exists()
        assert_still_queued(env, backend, bypass=True)
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("x/a", "x/b")]) == [True, True, True]
        assert env.probe("x/b", "x/a", protocol="UDP")


def test_fail_open_with_the_memory_keys_judged_before_the_kill_keep_their_verdict_until_the_timeout() -> None:
    """What the kernel remembers was judged by the agent: a dead agent does not lower it to a pass
    (docs/configuration.md, --verdict-memory); only keys it never judged pass unjudged."""
    with agent_lab(PODS, fail_open=True, policies=[deny_ingress("x", "a")],
                   extra_args=("--verdict-memory=true", "--verdict-memory-timeout=3")) as env:
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("x/a", "x/b")]) == [False, False, True]
        backend = queue_backend(env)
        kill_agent(env)
        assert_still_queued(env, backend, bypass=True)
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("x/a", "x/b")]) == [False, False, True]
        assert env.probe("x/b", "x/a", protocol="UDP"), "a key never judged passes (bypass)"
        time.sleep(3.5)  # the remembered drops time out
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")]) == [True, True]


def test_fail_closed_new_connections_to_selected_pods_are_dropped_after_the_agent_is_killed() -> None:
    # Without the verdict memory: what it remembered would still answer (tests/e2e/test_verdict_memory.py).
    with agent_lab(PODS, fail_open=False, policies=[allow_ingress_from_pod("x", "a", "b")],
                   extra_args=("--verdict-memory=false",)) as env:
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("y/a", "y/b")]) == [True, False, True]
        backend = queue_backend(env)
        kill_agent(env)
        assert env.table_exists()
        assert_still_queued(env, backend, bypass=False)
        # Selected pod: queued without bypass and nobody judges, so dropped, even what the policy allows.
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a"), ("x/a", "x/b")]) == [False, False, False]
        assert not env.probe("x/b", "x/a", protocol="UDP")
        # Pods no policy selects are not diverted: their traffic still flows.
        assert env.probe_many([("y/a", "y/b"), ("y/b", "y/a")]) == [True, True]


@pytest.mark.parametrize("fail_open", [True, False])
def test_graceful_stop_keeps_rules_only_when_failing_open(fail_open: bool) -> None:
    with agent_lab(PODS, fail_open=fail_open, policies=[deny_ingress("x", "a")]) as env:
        backend = queue_backend(env)
        assert env.agent.stop() == 0
        assert env.table_exists() is fail_open
        if fail_open:
            assert_still_queued(env, backend, bypass=True)
        else:
            assert env.xt_rules() == []
        # Fail-open keeps diverting to a queue nobody reads (bypass); fail-closed removed everything: both flow.
        assert env.probe("y/a", "x/a")
