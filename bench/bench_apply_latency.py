#!/usr/bin/env python3
"""Policy apply latency: from the API server's watch event to the agent enforcing the change.

The real agent (``python -m kube_netpol run --kubeconfig FILE``) runs in a
lab's node namespace, fed by the in-process fake API server
(kube_netpol.tools.testing.FakeApiServer), which listens inside that namespace. The
API holds ``--pods`` pods on the agent's node (two of them, bench/client and
bench/target, are real lab namespaces; the others exist only in the API but
count as local pods, so the policies that select them put their addresses in
the nftables sets) and ``--policies`` NetworkPolicies selecting those pods.

Each measured change flips the verdict of client -> target:TCP/80 through one
policy, "bench-measured", which no other policy overlaps; a round is four
changes: create it denying all ingress to target (target becomes managed: an
nftables set update), update it to admit client, update it back to deny,
delete it (target leaves the set). Between changes the script waits
``--gap`` seconds so that strict mode's conntrack pass, which runs at most
every 0.2 s, is not held back by the previous change.

Measured, per change, from the moment the fake server wrote the event to the
agent's watch connection (``FakeApiServer.sent_at``):

- status: until the agent's /statusz says the change is enforced
  (``enforced_revision``, i.e. KubernetesSource.revision(), reaching the
  change's resourceVersion; it is set after the dataplane sync and, in strict
  mode, the conntrack pass). /statusz is polled every ``--poll`` seconds from
  this process; the figure is the time the first answer saying so came back.
- agent: the agent's own measurement, from its
  ``kube_network_policies_policy_apply_latency_seconds`` histogram (the sum's
  increase; one observation per change): from the watch thread handing the
  event to the control thread until the dataplane sync is done. It excludes
  the network and JSON parsing before, and the strict-mode pass after.
- sync: ``kube_network_policies_dataplane_sync_duration_seconds`` for that
  change (the nftables transaction; near zero when the sets do not change).
- probe (a second phase, so that probe traffic does not disturb the
  others): a stream of new TCP connections from client to target, one every
  ``--probe-interval`` seconds, each allowed ``--probe-timeout`` to complete
  its handshake (the SYN is the packet the agent judges); the figure is when
  the first SYN was sent after which every connection shows the new verdict.
  Resolution: the probe interval. The status and agent figures are taken in
  this phase too. The stream's connections end with a RST and leave
  conntrack entries in state CLOSE for 10 s; strict mode judges those too
  (after a RST alone the kernel may take a new SYN on the same tuple as part
  of the old entry), so a change that denies the pair cuts a few hundred.
- cut (a third phase, strict mode only): ``--held`` established TCP
  connections client -> target are open when the change that denies the
  pair arrives, so the agent's strict-mode pass must cut them all; the
  status figure then includes that pass. The agent logs how many entries
  each pass deleted and how long the pass took; the phase checks the count.

The netlink dump that starts every strict-mode pass is timed in the node
namespace at the end of each phase.

Run as root; everything lives in lab namespaces and is removed at the end::

    python bench/bench_apply_latency.py [--pods 1000] [--policies 0,100,1000] [--rounds 13] [--held 250]

Not a test: copy the tables into docs/performance.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # the Kubernetes lab helpers the end-to-end tests use

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kube_netpol.tools.conformance.dataplane_agent import STATUS_HOST, STATUS_PORT  # noqa: E402
from kube_netpol.dataplane import conntrack  # noqa: E402
from kube_netpol.tools.lab.netns import entered, list_netns, open_netns  # noqa: E402

from e2e_agentlab import NODE, namespace_object, pod_object  # noqa: E402
from e2e_kubelab import KubeLab, kube_agent_lab  # noqa: E402

CLIENT, TARGET = "bench/client", "bench/target"
LAB_PODS = {CLIENT: ["10.244.1.10"], TARGET: ["10.244.1.20"]}
API_NAMESPACES = 10
LABEL_GROUPS = 20
MEASURED = "bench-measured"
METRIC_PREFIX = "kube_network_policies_"
#: What the agent logs after a strict-mode pass that deleted conntrack entries.
CUT_RE = re.compile(r"strict mode: cut (\d+) connection")
#: The same line's count of live entries dumped and the pass's duration.
PASS_RE = re.compile(r"strict mode: cut \d+ connection.*\((\d+) live conntrack entries, ([\d.]+) ms\)")
#: Seconds a TCP conntrack entry stays in CLOSE (nf_conntrack_tcp_timeout_close).
TCP_CLOSE_TIMEOUT = 10
#: (change, verdict of client -> target afterwards)
ROUND = (("create", False), ("update", True), ("update", False), ("delete", True))


def api_only_objects(count: int) -> list[dict[str, Any]]:
    """Namespaces ns-0..ns-9 and ``count`` pods in them on the agent's node, in 10.245.0.0/16, labelled group=g<i % 20>."""
    objects = [namespace_object(f"ns-{n}") for n in range(API_NAMESPACES)]
    for i in range(count):
        pod = pod_object(f"ns-{i % API_NAMESPACES}/p{i}", [f"10.245.{i // 250}.{i % 250 + 1}"], NODE)
        pod["metadata"]["labels"]["group"] = f"g{i % LABEL_GROUPS}"
        objects.append(pod)
    return objects


def background_policies(count: int) -> list[dict[str, Any]]:
    """Policies selecting the API-only pods by group label, admitting the next group; none touches bench/*."""
    policies = []
    for k in range(count):
        group = k % LABEL_GROUPS
        policies.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol-{k}", "namespace": f"ns-{k % API_NAMESPACES}"},
            "spec": {
                "podSelector": {"matchLabels": {"group": f"g{group}"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"group": f"g{(group + 1) % LABEL_GROUPS}"}}}],
                             "ports": [{"protocol": "TCP", "port": 80}]}],
            },
        })  # fmt: skip
    return policies


def measured_policy(admit_client: bool) -> dict[str, Any]:
    ingress = [{"from": [{"podSelector": {"matchLabels": {"pod": "client"}}}]}] if admit_client else []
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": MEASURED, "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"pod": "target"}}, "policyTypes": ["Ingress"], "ingress": ingress}}


def make_change(env: KubeLab, kind: str, allowed: bool) -> dict[str, Any]:
    if kind == "create":
        return env.create(measured_policy(admit_client=allowed))
    if kind == "update":
        return env.update(measured_policy(admit_client=allowed))
    return env.delete("NetworkPolicy", MEASURED, "bench")


def histogram_totals(env: KubeLab) -> dict[str, tuple[float, float]]:
    """{histogram name: (sum, count)} for the agent's apply latency and sync duration."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(env.agent.metrics()):
        for sample in family.samples:
            for name in ("policy_apply_latency_seconds", "dataplane_sync_duration_seconds"):
                full = METRIC_PREFIX + name
                if sample.name == full + "_sum":
                    totals.setdefault(name, [0.0, 0.0])[0] = sample.value
                elif sample.name == full + "_count":
                    totals.setdefault(name, [0.0, 0.0])[1] = sample.value
    return {name: (values[0], values[1]) for name, values in totals.items()}


def untrack_loopback(env: KubeLab) -> None:
    """No conntrack entries for the node namespace's loopback traffic (our own table, gone with the namespace).

    The script talks to the agent over the node's loopback: /statusz polls (a
    connection each, as the agent speaks HTTP/1.0), /metrics, and the agent's
    watches of the fake API server. Tracked, the polls alone would leave
    hundreds of entries in the node's conntrack table, which every
    strict-mode pass lists and judges: the benchmark would slow down what it
    measures. Pod traffic is tracked as usual.
    """
    table = f"knlbench-notrack-{env.lab.lab_id}"
    ruleset = {"nftables": [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {"family": "inet", "table": table, "name": "output", "type": "filter",
                           "hook": "output", "prio": -300, "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": table, "chain": "output", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}},
            {"notrack": None},
        ]}}},
    ]}  # fmt: skip
    subprocess.run(env.lab.node_command(["nft", "-j", "-f", "-"]), input=json.dumps(ruleset), text=True,
                   check=True, capture_output=True, timeout=30)


class StatusPoller:
    """Polls the agent's /statusz from a thread inside the node namespace.

    Each poll is a new connection (the agent speaks HTTP/1.0), closed with a
    RST (SO_LINGER 0) so that no TIME_WAIT sockets pile up.
    """

    def __init__(self, env: KubeLab) -> None:
        self.env = env
        self.round_trips: list[float] = []  # seconds per /statusz request
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="statusz")

    def close(self) -> None:
        self._worker.shutdown()

    def wait_seen(self, version: int, poll: float, timeout: float = 120.0) -> float:
        """Poll until NetworkPolicy ``version`` is enforced; the monotonic time that answer arrived."""
        return self._worker.submit(self._wait_seen, version, poll, timeout).result()

    def _wait_seen(self, version: int, poll: float, timeout: float) -> float:
        fd = open_netns(self.env.lab.node_netns)
        try:
            with entered(fd):
                deadline = time.monotonic() + timeout
                while True:
                    asked = time.monotonic()
                    status = self._status()
                    seen = time.monotonic()
                    self.round_trips.append(seen - asked)
                    if self.env.agent.enforced_versions(status).get("NetworkPolicy", -1) >= version:
                        return seen
                    if seen > deadline:
                        raise RuntimeError(f"resourceVersion {version} not enforced within {timeout} s: {status}")
                    time.sleep(poll)
        finally:
            os.close(fd)

    @staticmethod
    def _status() -> dict[str, Any] | None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(2.0)
            try:
                sock.connect((STATUS_HOST, STATUS_PORT))
                sock.sendall(b"GET /statusz HTTP/1.0\r\n\r\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError:
                return None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        return json.loads(body) if head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")) else None


def sent_at(env: KubeLab, version: int) -> float:
    sent = env.server.sent_at(version)
    if sent is None:
        raise RuntimeError(f"the server never wrote resourceVersion {version} to a watch")
    return sent


@dataclass
class ProbeStream:
    """New TCP connections client -> target, one every ``interval`` s, each recorded as (SYN sent, handshake done).

    One thread, living in the client's namespace, opens non-blocking
    connections and watches them with a selector; the time recorded is taken
    just before connect(), which sends the SYN (the packet the agent judges).
    A connection that is not established within ``timeout`` counts as denied.
    Established ones are closed with a RST (SO_LINGER 0), so that the stream
    leaves short-lived CLOSE entries in conntrack rather than TIME_WAIT ones.
    """

    env: KubeLab
    interval: float
    timeout: float
    results: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def running(self) -> Iterator[None]:
        fd = open_netns(self.env.lab.host(CLIENT).netns)
        thread = threading.Thread(target=self._run, args=(fd,), name="probe-stream")
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            os.close(fd)

    def _run(self, netns_fd: int) -> None:
        source, target = self.env.ip(CLIENT), (self.env.ip(TARGET), 80)
        open_probes: dict[socket.socket, float] = {}
        with entered(netns_fd), selectors.DefaultSelector() as selector:
            try:
                self._loop(selector, open_probes, source, target)
            finally:
                for sock in open_probes:
                    sock.close()

    def _loop(self, selector: selectors.BaseSelector, open_probes: dict[socket.socket, float],
              source: str, target: tuple[str, int]) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set() or open_probes:
            now = time.monotonic()
            if now >= next_at and not self._stop.is_set():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.bind((source, 0))
                sent = time.monotonic()
                sock.connect_ex(target)  # EINPROGRESS: the SYN is on its way
                open_probes[sock] = sent
                selector.register(sock, selectors.EVENT_WRITE)
                next_at = max(next_at + self.interval, now)  # no burst to catch up after a stall
            for key, _ in selector.select(max(0.0, min(next_at - time.monotonic(), 0.01))):
                sock = key.fileobj  # type: ignore[assignment]
                ok = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                self._finish(selector, open_probes, sock, ok)
            expired = time.monotonic() - self.timeout
            for sock in [s for s, sent in open_probes.items() if sent < expired]:
                self._finish(selector, open_probes, sock, False)

    def _finish(self, selector: selectors.BaseSelector, open_probes: dict[socket.socket, float],
                sock: socket.socket, ok: bool) -> None:
        selector.unregister(sock)
        self.results.append((open_probes.pop(sock), ok))
        sock.close()

    def flip_time(self, since: float, until: float, verdict: bool) -> float:
        """Start of the first probe in [since, until] after which every probe shows ``verdict``."""
        window = sorted((start, ok) for start, ok in list(self.results) if since <= start <= until)
        last_old = max((i for i, (_, ok) in enumerate(window) if ok != verdict), default=-1)
        if last_old + 1 >= len(window):
            raise RuntimeError("no probe showed the new verdict before the agent reported it enforced")
        return window[last_old + 1][0]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return " | ".join(f"{percentile(ms, q):.1f}" for q in (50, 90, 99)) + f" | {max(ms):.1f}"


Samples = dict[str, list[tuple[str, float]]]  # measure -> [(change, seconds)]


def run_configuration(pods: int, policies: int, strict: bool, memory: bool, args: argparse.Namespace) -> dict[str, Any]:
    samples: Samples = {key: [] for key in (
        "status", "agent", "sync", "probe", "status_probing", "agent_probing", "status_cut", "pass_cut")}
    started = time.monotonic()
    with kube_agent_lab(
        LAB_PODS, objects=api_only_objects(pods - len(LAB_PODS)) + background_policies(policies),
        strict_mode=strict, probe_timeout=args.probe_timeout, prefix="knlbench", start_timeout=60,
        extra_args=(f"--verdict-memory={str(memory).lower()}",),
    ) as env:
        setup = time.monotonic() - started
        untrack_loopback(env)
        assert env.probe(CLIENT, TARGET), "client -> target must flow before the first change"
        poller = StatusPoller(env)
        try:
            quiet_phase(env, poller, samples, args)
            strict_quiet = strict_pass_pieces(env)
            probes, cut = probing_phase(env, poller, samples, args)
            strict_loaded = strict_pass_pieces(env)
            pieces = {"quiet": strict_quiet, "probing": strict_loaded}
            if strict and args.held:
                cut_phase(env, poller, samples, args)
                pieces["cut"] = strict_pass_pieces(env)
            # Conntrack dumps walk the whole host's table (every namespace's entries): other labs slow them down.
            foreign_netns = [name for name in list_netns() if name not in env.lab.netns_names]
        finally:
            poller.close()
    return {"pods": pods, "policies": policies, "strict": strict, "memory": memory, "setup_s": setup, "probes": probes,
            "statusz_round_trip_ms": statistics.median(poller.round_trips) * 1000,
            "load_average_1m": os.getloadavg()[0],  # others' work on the machine skews every figure
            "foreign_netns": len(foreign_netns),
            "samples": samples, "strict_pieces": pieces,
            "connections_cut_probing": cut}


def quiet_phase(env: KubeLab, poller: StatusPoller, samples: Samples, args: argparse.Namespace) -> None:
    """Status and the agent's own figures, with no traffic but one check of the verdict after each change."""
    for _ in range(args.rounds):
        for kind, verdict in ROUND:
            before = histogram_totals(env)
            change = make_change(env, kind, verdict)
            version = int(change["metadata"]["resourceVersion"])
            seen = poller.wait_seen(version, args.poll)
            samples["status"].append((kind, seen - sent_at(env, version)))
            after = histogram_totals(env)
            for key, name in (("agent", "policy_apply_latency_seconds"), ("sync", "dataplane_sync_duration_seconds")):
                if after[name][1] - before[name][1] == 1:  # exactly this change's observation
                    samples[key].append((kind, after[name][0] - before[name][0]))
            # The verdict really flipped (a denied probe costs its timeout).
            if env.probe(CLIENT, TARGET, timeout=args.probe_timeout) != verdict:
                raise RuntimeError(f"after the {kind}, client -> target is not {'allowed' if verdict else 'denied'}")
            time.sleep(args.gap)


def probing_phase(env: KubeLab, poller: StatusPoller, samples: Samples,
                  args: argparse.Namespace) -> tuple[int, list[tuple[str, int]]]:
    """End to end, with the probe stream running; returns the probes sent and the connections cut per change."""
    stream = ProbeStream(env, args.probe_interval, args.probe_timeout)
    cut: list[tuple[str, int]] = []
    name = "policy_apply_latency_seconds"
    with stream.running():
        for _ in range(args.rounds):
            for kind, verdict in ROUND:
                before, cut_before = histogram_totals(env), connections_cut(env)
                change = make_change(env, kind, verdict)
                version = int(change["metadata"]["resourceVersion"])
                seen = poller.wait_seen(version, args.poll)
                time.sleep(args.probe_timeout + 0.05)  # every probe started up to `seen` has its answer
                sent = sent_at(env, version)
                samples["status_probing"].append((kind, seen - sent))
                cut.append((kind, connections_cut(env) - cut_before))
                after = histogram_totals(env)
                if after[name][1] - before[name][1] == 1:
                    samples["agent_probing"].append((kind, after[name][0] - before[name][0]))
                # A little past `seen`: probes started after the agent said "enforced" must show the new verdict.
                flipped = stream.flip_time(sent - args.gap / 2, seen + 0.02, verdict)
                samples["probe"].append((kind, flipped - sent))
                time.sleep(args.gap)
    return len(stream.results), cut


def cut_phase(env: KubeLab, poller: StatusPoller, samples: Samples, args: argparse.Namespace) -> None:
    """``--held`` established connections client -> target, then the change that denies the pair.

    Each round opens the connections (allowed: no measured policy), creates
    the denying policy and waits for /statusz to report it enforced, which
    includes the strict-mode pass that cuts them; then deletes the policy and
    closes the connections with a RST, which conntrack, their entries gone,
    does not track. The phase first waits for the probe stream's CLOSE entries
    to expire, so that every pass cuts exactly the held connections.
    """
    time.sleep(TCP_CLOSE_TIMEOUT + 1)
    fd = open_netns(env.lab.host(CLIENT).netns)
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="held") as client:
            for _ in range(args.rounds):
                held = client.submit(open_held, fd, env.ip(CLIENT), (env.ip(TARGET), 80), args.held).result()
                try:
                    log_before = len(env.agent.log_text())
                    change = make_change(env, "create", False)
                    version = int(change["metadata"]["resourceVersion"])
                    seen = poller.wait_seen(version, args.poll)
                    samples["status_cut"].append(("create", seen - sent_at(env, version)))
                    logged = env.agent.log_text()[log_before:]
                    cut = sum(int(n) for n in CUT_RE.findall(logged))
                    if cut != args.held:
                        raise RuntimeError(f"strict mode cut {cut} connections, not the {args.held} held open")
                    samples["pass_cut"] += [("create", float(ms) / 1000) for _, ms in PASS_RE.findall(logged)]
                    change = make_change(env, "delete", True)
                    poller.wait_seen(int(change["metadata"]["resourceVersion"]), args.poll)
                finally:
                    for sock in held:
                        sock.close()
                time.sleep(args.gap)
    finally:
        os.close(fd)


def open_held(netns_fd: int, source: str, target: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` established TCP connections from inside the client's namespace, closed later with a RST."""
    held: list[socket.socket] = []
    with entered(netns_fd):
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.settimeout(5.0)
                sock.bind((source, 0))
                sock.connect(target)
        except BaseException:
            for sock in held:
                sock.close()
            raise
    return held


def connections_cut(env: KubeLab) -> int:
    """Connections strict mode cut so far (the agent logs each pass that cut some)."""
    return sum(int(n) for n in CUT_RE.findall(env.agent.log_text()))


def strict_pass_pieces(env: KubeLab, repeats: int = 10) -> dict[str, float]:
    """The netlink dump every strict-mode pass starts with, timed here in the node namespace (median ms)."""
    fd = open_netns(env.lab.node_netns)
    try:
        def measure() -> dict[str, float]:
            with entered(fd):  # the netlink socket belongs to the namespace of the thread that makes it
                listing, entries, live = [], 0, 0
                for _ in range(repeats):
                    started = time.perf_counter()
                    with conntrack.Conntrack() as ct:
                        dumped = ct.dump()
                    listing.append(time.perf_counter() - started)
                    entries, live = len(dumped), sum(entry.live for entry in dumped)
                return {"dump_ms": statistics.median(listing) * 1000, "conntrack_entries": entries,
                        "live_entries": live}

        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            return worker.submit(measure).result()
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000, help="pods in the API, all on the agent's node")
    parser.add_argument("--policies", default="0,100,1000", help="comma-separated counts of background policies")
    parser.add_argument("--strict-mode", default="true,false", help="comma-separated: true, false")
    parser.add_argument("--verdict-memory", default="true",
                        help="comma-separated: true, false (the kernel's verdict memory, which each change flushes)")
    parser.add_argument("--rounds", type=int, default=13, help="rounds of 4 changes per phase")
    parser.add_argument("--gap", type=float, default=0.3, help="idle seconds between changes")
    parser.add_argument("--poll", type=float, default=0.001, help="/statusz poll interval in the status phase")
    parser.add_argument("--probe-interval", type=float, default=0.002, help="seconds between probes")
    parser.add_argument("--probe-timeout", type=float, default=0.1, help="seconds a probe may take to connect")
    parser.add_argument("--held", type=int, default=250,
                        help="connections open when a change denies them, in the cut phase (strict mode; 0: no phase)")
    parser.add_argument("--json", help="write the raw samples here")
    args = parser.parse_args()
    # This process runs the fake server, the /statusz poller and the probe stream: switch threads
    # more often than every 5 ms so that none of them waits long for the GIL to take its timestamp.
    sys.setswitchinterval(0.0002)

    results = []
    configurations = [(strict, memory) for strict in (v.strip() == "true" for v in args.strict_mode.split(","))
                      for memory in (v.strip() == "true" for v in args.verdict_memory.split(","))]
    for strict, memory in configurations:
        for policies in (int(p) for p in args.policies.split(",")):
            result = run_configuration(args.pods, policies, strict, memory, args)
            results.append(result)
            print(f"# pods={result['pods']} policies={policies} strict={strict} memory={memory}: "
                  f"set up in {result['setup_s']:.1f} s, "
                  f"{result['probes']} probes, /statusz round trip {result['statusz_round_trip_ms']:.2f} ms (median), "
                  f"load average {result['load_average_1m']:.2f}, {result['foreign_netns']} other network namespaces",
                  file=sys.stderr)

    print("| strict mode | verdict memory | pods | policies | measured | changes | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    labels = {"status": "event -> /statusz enforced", "agent": "agent: received -> dataplane synced",
              "sync": "agent: dataplane sync", "probe": "event -> probe shows verdict",
              "status_probing": "event -> /statusz enforced, during the probe stream",
              "agent_probing": "agent: received -> dataplane synced, during the probe stream",
              "status_cut": f"event -> /statusz enforced, cutting {args.held} connections",
              "pass_cut": f"agent: strict-mode pass cutting {args.held} connections"}
    for result in results:
        for key, label in labels.items():
            values = [v for _, v in result["samples"][key]]
            if values:
                print(f"| {'on' if result['strict'] else 'off'} | {'on' if result['memory'] else 'off'} | "
                      f"{result['pods']} | {result['policies']} | {label} | "
                      f"{len(values)} | {summary(values)} |")
    print()
    print("By change (event -> /statusz enforced, p50 / max ms):")
    for result in results:
        parts = []
        for kind in ("create", "update", "delete"):
            values = [v * 1000 for k, v in result["samples"]["status"] if k == kind]
            if values:
                parts.append(f"{kind} {statistics.median(values):.1f} / {max(values):.1f}")
        print(f"- strict {'on' if result['strict'] else 'off'}, memory {'on' if result['memory'] else 'off'}, "
              f"{result['policies']} policies: " + ", ".join(parts))
    print()
    print("Netlink dump of the node's conntrack table, timed in the node namespace (median ms; entries, live):")
    for result in results:
        pieces = result["strict_pieces"]
        print(f"- {result['policies']} policies, strict {'on' if result['strict'] else 'off'}, "
              f"memory {'on' if result['memory'] else 'off'}: " + "; ".join(
            f"{phase}: {p['dump_ms']:.1f} ({p['conntrack_entries']:.0f} entries, {p['live_entries']:.0f} live)"
            for phase, p in pieces.items()))
        denials = [n for kind, n in result["connections_cut_probing"] if n]
        if denials:
            print(f"  during the probe stream, strict mode cut {statistics.median(denials):.0f} connections (median, "
                  f"max {max(denials)}) on {len(denials)} of {len(result['connections_cut_probing'])} changes")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
