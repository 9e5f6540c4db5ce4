"""The agent's control loop: one change, one snapshot, one dataplane sync; /statusz follows the snapshot.

The real Agent with a scripted source and a dataplane stand-in that records
what it is asked (no kernel: the queue reader is not bound).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from kube_netpol.agent.config import AgentConfig
from kube_netpol.agent.controller import Agent
from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.state import ClusterState

NODE = "n1"


class ScriptedSource:
    """Applies the objects a test hands it on the next poll, as one batch; its revision counts batches."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.pending: list[Callable[[ClusterState], Any]] = []
        self.batches = 0
        self.lock = threading.Lock()

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None:
        pass

    def change(self, *changes: Callable[[ClusterState], Any]) -> int:
        with self.lock:
            self.pending.append(lambda state: [change(state) for change in changes])
            return self.batches + len(self.pending)

    def poll(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for batch in pending:
            batch(self.state)
            self.batches += 1

    def ready(self) -> bool:
        return True

    def revision(self) -> str:
        return str(self.batches)

    def stop(self) -> None:
        pass


class RecordingDataplane:
    def __init__(self) -> None:
        self.started = False
        self.in_sync = True
        self.syncs: list[tuple[frozenset[bytes], frozenset[bytes], bool]] = []
        self.backend = "test"
        self.divert_all = False
        self.verdict_memory = False
        self.managed: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self.generations: list[int | None] = []
        self.forgets = 0  # verdict memory flushes outside a sync
        self.follows: list[int] = []  # snapshots the memory followed without a sync (the same addresses)

    def start(self, v4, v6, divert_all, generation=0):  # type: ignore[no-untyped-def]
        self.started = True
        self.generations.append(generation)
        return "test"

    def sync(self, v4, v6, divert_all, generation=None) -> bool:  # type: ignore[no-untyped-def]
        self.syncs.append((frozenset(v4), frozenset(v6), divert_all))
        self.generations.append(generation)
        return True

    def forget_remembered(self) -> None:
        self.forgets += 1

    def follow(self, generation: int) -> None:
        self.follows.append(generation)

    def stop(self) -> None:
        self.started = False


def namespace(name: str, **labels: str) -> Callable[[ClusterState], Any]:
    return lambda state: state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})


def pod(name: str, ip: str, **labels: str) -> Callable[[ClusterState], Any]:
    return lambda state: state.apply({"apiVersion": "v1", "kind": "Pod",
                                      "metadata": {"namespace": "x", "name": name, "labels": labels},
                                      "spec": {"nodeName": NODE}, "status": {"podIP": ip}})


def policy(name: str, selector: dict) -> Callable[[ClusterState], Any]:
    return lambda state: state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                      "metadata": {"namespace": "x", "name": name},
                                      "spec": {"podSelector": selector, "policyTypes": ["Ingress"]}})


@pytest.fixture(params=[False], ids=["memory-off"])
def agent(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    from kube_netpol.dataplane import guard

    monkeypatch.setattr(guard.DataplaneGuard, "start", lambda self: None)  # no kernel to watch
    monkeypatch.setattr(guard.DataplaneGuard, "stop", lambda self: None)
    monkeypatch.setattr(VerdictLoop, "bind", lambda self: None)
    monkeypatch.setattr(VerdictLoop, "run", lambda self, stop, poll_interval=0.05: stop.wait())
    dataplane = RecordingDataplane()
    dataplane.verdict_memory = request.param
    agent = Agent(AgentConfig(hostname_override=NODE, strict_mode=False), ScriptedSource, dataplane=dataplane)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    try:
        wait(lambda: agent.ready())
        yield agent
    finally:
        stop.set()
        thread.join(5)


def wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def enforce(agent: Agent, *changes: Callable[[ClusterState], Any]) -> tuple[int, int]:
    """Hand the changes to the agent as one batch; (snapshots published, dataplane syncs) until it enforces them."""
    source: ScriptedSource = agent.source  # type: ignore[assignment]
    dataplane: RecordingDataplane = agent.dataplane  # type: ignore[assignment]
    generation, syncs = agent.engine.generation, len(dataplane.syncs)
    revision = source.change(*changes)
    wait(lambda: agent.status()["enforced_revision"] == str(revision))
    return agent.engine.generation - generation, len(dataplane.syncs) - syncs


def test_one_change_of_each_kind_is_one_snapshot_and_one_sync(agent: Agent) -> None:
    # A snapshot that diverts the same addresses needs no dataplane sync (pods of other nodes churning).
    assert enforce(agent, namespace("x")) == (1, 0)
    assert enforce(agent, pod("a", "10.0.0.1", app="web")) == (1, 0)  # selected by no policy yet
    assert enforce(agent, policy("deny-web", {"matchLabels": {"app": "web"}})) == (1, 1)
    dataplane: RecordingDataplane = agent.dataplane  # type: ignore[assignment]
    assert dataplane.syncs[-1][0] == {bytes([10, 0, 0, 1])}  # the selected pod is diverted
    assert enforce(agent, pod("a", "10.0.0.1", app="db")) == (1, 1)  # relabel: no longer selected
    assert dataplane.syncs[-1][0] == frozenset()
    assert enforce(agent, namespace("x", team="t")) == (1, 0)  # a namespace relabel rebuilds its pods: one snapshot
    # A batch of many changes is still one snapshot and one sync.
    assert enforce(agent, pod("b", "10.0.0.2", app="web"), pod("c", "10.0.0.3", app="web"),
                   policy("deny-all", {})) == (1, 1)
    dataplane.in_sync = False  # the guard found drift: the next snapshot syncs even with the same addresses
    assert enforce(agent, namespace("x", team="u")) == (1, 1)
    assert agent.status()["snapshot_generation"] == agent.engine.generation


def test_a_batch_that_changes_nothing_publishes_nothing(agent: Agent) -> None:
    enforce(agent, namespace("x"), pod("a", "10.0.0.1"))
    assert enforce(agent, pod("a", "10.0.0.1")) == (0, 0)  # the same pod again
    assert enforce(agent, lambda state: state.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                                     "metadata": {"name": "c", "namespace": "x"}})) == (0, 0)


def test_strict_mode_passes_at_most_once_a_second_while_only_pods_change() -> None:
    from kube_netpol.agent.controller import strict_pass_due

    pods, policies = frozenset({"Pod"}), frozenset({"Pod", "NetworkPolicy"})
    assert strict_pass_due(0.0, now=10.0, last_pass=9.9, kinds=pods) == 10.9
    assert strict_pass_due(0.0, now=10.0, last_pass=9.9, kinds=policies) == 10.1
    assert strict_pass_due(0.0, now=10.0, last_pass=5.0, kinds=pods) == 10.0  # long since the last: at once
    # A policy change while a pod-paced pass is planned brings it forward; pods never push one back.
    assert strict_pass_due(10.9, now=10.0, last_pass=9.9, kinds=policies) == 10.1
    assert strict_pass_due(10.1, now=10.0, last_pass=9.9, kinds=pods) == 10.1


@pytest.mark.parametrize("agent", [True], ids=["memory-on"], indirect=True)
def test_with_the_memory_every_snapshot_reaches_the_kernel_and_the_same_addresses_only_move_the_memory(
        agent: Agent) -> None:
    """A snapshot diverting the same addresses flushes the memory (``follow``) without the addresses
    being read and compared again; one that changes them is a sync, which flushes it too."""
    dataplane: RecordingDataplane = agent.dataplane  # type: ignore[assignment]
    assert enforce(agent, namespace("x"), pod("a", "10.0.0.1", app="web")) == (1, 0)
    assert dataplane.follows[-1] == agent.engine.generation
    assert enforce(agent, policy("deny-web", {"matchLabels": {"app": "web"}})) == (1, 1)
    assert dataplane.generations[-1] == agent.engine.generation
    follows = len(dataplane.follows)
    assert enforce(agent, policy("deny-web-too", {"matchLabels": {"app": "web"}})) == (1, 0)  # same pods selected
    assert dataplane.follows[follows:] == [agent.engine.generation]
    dataplane.in_sync = False  # after drift: a whole sync, not only the memory
    assert enforce(agent, namespace("x", team="t")) == (1, 1)
    assert len(dataplane.follows) == follows + 1


@pytest.mark.parametrize("agent", [True], ids=["memory-on"], indirect=True)
def test_a_full_flow_table_flushes_the_kernels_verdict_memory(agent: Agent) -> None:
    from kube_netpol.api import Verdict
    from kube_netpol.engine import END_OF_PIPELINE, Judgement

    dataplane: RecordingDataplane = agent.dataplane  # type: ignore[assignment]
    agent.engine.history.max_flows = 4
    allow = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    syncs = len(dataplane.syncs)
    for port in range(1, 5):
        agent.engine.snapshot.add_flow((b"\x00" * 8, 6, port), allow, True, 6, 4)
    time.sleep(0.2)  # a few control intervals: the table is not full yet, nothing to flush
    assert dataplane.forgets == 0
    agent.engine.snapshot.add_flow((b"\x00" * 8, 6, 5), allow, True, 6, 4)  # full: a new table
    wait(lambda: dataplane.forgets == 1)
    time.sleep(0.2)
    assert dataplane.forgets == 1 and len(dataplane.syncs) == syncs  # once per full table, no sync
    # The control loop folds the retired table into the totals by itself (no scrape): memory stays bounded.
    wait(lambda: not agent.engine.history._retired, timeout=5)
    assert agent.engine.history.totals(agent.engine.snapshot.flows).entries == 0  # add_flow alone counted no packet
