"""The running agent repairs its kernel state: tamper in the node, the denied traffic is judged (denied) again.

Each tampering alone would let y/a reach x/a unjudged (allow-all); the agent's
dataplane guard must notice and repair it, count the repair in
``kube_network_policies_dataplane_repairs`` and report it on /statusz, and
``/readyz`` must answer 200 again afterwards. Needs the controller to run the
guard (``status()["dataplane"]``); skipped, saying so, where it does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from e2e_agentlab import AgentLab, agent_lab, allow_ingress_from_pod, requires_root

pytestmark = requires_root

PODS = {"x/a": ["10.244.1.10"], "x/b": ["10.244.1.11"], "y/a": ["10.244.2.10"]}


def _xt_delete(env: AgentLab) -> None:
    rule = next(line for line in env.node(["iptables", "-w", "5", "-t", "mangle", "-S", "POSTROUTING"]).stdout
                .splitlines() if env.agent.table in line)
    env.node(["iptables", "-w", "5", "-t", "mangle", "-D", *rule.split()[1:]])


TAMPERING: dict[str, tuple[Callable[[AgentLab], None], str]] = {
    "table": (lambda env: env.node(["nft", "delete", "table", "inet", env.agent.table]), "table"),
    "set": (lambda env: env.node(["nft", "flush", "set", "inet", env.agent.table, "managed-v4"]), "element"),
    "element": (lambda env: env.node(["nft", "delete", "element", "inet", env.agent.table, "managed-v4",
                                      "{ 10.244.1.10 }"]), "element"),
    "chain": (lambda env: env.node(["nft", "flush", "chain", "inet", env.agent.table, "postrouting"]), "rule"),
    "xt-rule": (_xt_delete, "xt_rule"),
}


def _repairs(env: AgentLab) -> dict[str, int]:
    return dict(env.agent.status()["dataplane"]["repairs"])


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_the_agent_repairs_each_kind_of_tampering(tamper: str) -> None:
    # The bug-1766 workaround on whatever the kernel: the prerouting chain and its xt rules are repaired too.
    with agent_lab(PODS, policies=[allow_ingress_from_pod("x", "a", "b")],
                   extra_args=("--netfilter-bug-1766-fix=true",)) as env:
        if "dataplane" not in env.agent.status():
            pytest.skip("the controller does not run the DataplaneGuard yet (status()['dataplane'] is missing)")
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")]) == [True, False]
        action, kind = TAMPERING[tamper]
        before = _repairs(env).get(kind, 0)
        action(env)
        _wait(lambda: _repairs(env).get(kind, 0) > before, f"a {kind} repair")
        assert "dataplane drift repaired" in env.agent.log_text()
        assert env.agent.http_get("/readyz")[0] == 200
        assert env.agent.status()["dataplane"]["in_sync"] is True
        # Judged again: the denied pair stays denied, the allowed one allowed.
        assert env.probe_many([("x/b", "x/a"), ("y/a", "x/a")]) == [True, False]
        assert env.table_exists() and len(env.xt_rules()) == 4  # POSTROUTING and PREROUTING, both families
        assert f'kube_network_policies_dataplane_repairs{{kind="{kind}"}}' in env.agent.metrics()
