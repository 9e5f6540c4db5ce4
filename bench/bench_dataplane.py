#!/usr/bin/env python3
"""New flows per second judged through NFQUEUE, TCP connection rate and first-packet latency.

Everything runs in a lab (kube_netpol.tools.lab): a client pod and a server pod
behind a node namespace; nothing touches the host's own ruleset, and the lab
(namespaces, tables, processes) is removed at the end. Run as root::

    python bench/bench_dataplane.py [--seconds 2] [--repeat 3] [--policies 0,100,1000]

UDP new flows per second, for each consumer of the queue:

- the load: one process in the client pod sends UDP datagrams from a raw
  socket at a fixed rate (``--rate``) for ``--seconds``, alternately to two
  server pods; the source port changes with every datagram (and the
  destination port every 64,512 of them, among 64 ports), so each datagram
  is a new conntrack flow whose first (and only) packet is queued. The
  ports are closed on the servers.
- the count: the server namespaces' ``Udp NoPorts`` counters (/proc/net/snmp)
  count what got through, i.e. what the consumer accepted; it costs the
  consumers nothing and is the same for all of them. Load above a
  consumer's capacity overflows its queue (4,096 packets) and the kernel
  drops the excess. The agent's own verdict count (/metrics) is a cross-check.
- CPUs: the sender is pinned to CPU 0, the consumer to CPU 1. The sender's
  CPU also does the kernel's work up to the queue, the consumer's the
  verdict and everything after it (forwarding, delivery to the server). On
  two CPUs the sender cannot always offer more than the fastest consumers
  take; and anything else running on the machine takes CPU from both. So
  besides flows per second, the consumer's CPU time (all its threads, user
  and kernel, from /proc/PID/task/*/schedstat) per judged flow is reported:
  it does not depend on what else runs on the machine, and 1 / it is what
  the consumer would judge with a CPU of its own. It does depend on the
  consumer's regime, though: a saturated consumer (its queue full) costs
  5-15% more per flow here than one that keeps up (probably because the
  packets it is handed have waited in a full 4,096-packet queue). At
  300,000/s the agent is saturated while the Python accept-all is at the
  edge of saturation, so the Python accept-all and the agent at the largest
  K (with and without decision logging) are measured again at
  ``--equal-rate`` (100,000/s), a load each of them keeps up with: that
  table compares their CPU per flow in the same regime.
- disturbance: before each run the bench waits (up to ``--quiet-wait`` s)
  for the machine to be idle, and it measures how long the consumer's
  busiest thread was ready to run but waited for its CPU while another
  process ran there (its run_delay in /proc/PID/task/*/schedstat, less the
  CPU time of the consumer's other threads; about 1-3% on a quiet machine). A run above ``--max-disturbance`` (5%) is measured again, up to
  ``--retries`` times; rows that stayed disturbed are listed under the table.
- consumers: none (no queue rule: the path's own ceiling), ``nfq_accept``
  (bench/nfq_accept.c, built here with gcc; the floor of any userspace
  verdict), a Python accept-all NetfilterQueue callback with the agent's
  bind settings and read loop, and the agent itself (``python -m kube_netpol
  run --manifests DIR``) with 1 + K NetworkPolicies, K in ``--policies``,
  all of them selecting the server pods (the last one admits the client).
  Its metrics are always on (the verdict loop's flow table records them).
  At the largest K it runs again with the verdict loop's metric recording
  patched out (``bench/unrecorded_loop.py``: the same agent, its callback
  without the clock and the hit counter), which shows what recording costs
  end to end, and once more with decision logging on
  (``--decision-log FILE`` into the bench's temporary folder, default rate
  limit): the loop parses and judges each packet for a record while the
  logger's rate limit has budget, and answers from its flow table (the fast
  path, counting the record as rate-limited) once the budget is spent.
  For the two minimal consumers the queue rule is our Dataplane (the xt
  backend on a kernel without the nft queue expression) with the server pods
  managed; the agent makes its own table.
- the agent's fast path: the datagrams share a few (src, dst, protocol,
  destination port) keys, so after the first ones the agent answers from its
  flow table (one struct unpack and a dict lookup, no parse, no engine), as
  it does for real new connections between the same pods. In the
  "cache miss" rows the destination port changes with every other datagram
  and the datagrams alternate between two server pods: the 131,070 keys they
  cycle through are more than the flow table and the engine's cache hold
  (65,536 each, emptied wholesale when full), so every datagram is parsed
  and evaluated.

- the path's CPU: the sender reports its own CPU time (user and kernel).
  The kernel's work on each datagram up to the queue (the client's stack,
  the node's netfilter hooks and forwarding) runs in the sender's syscall
  and the softirq on its way out, and so does all of it for a datagram the
  kernel answers itself; the bench kernel has no IRQ time accounting, so
  that softirq time is charged to the sender. Sender plus consumer CPU per
  flow is the whole path's cost, what a sender-bound run (sender busy 100%:
  the no-queue ceiling and the kernel-answered rows) cannot show by flows/s.
- two ceilings: no table at all in the node namespace (the kernel then
  keeps no conntrack entries there), and "conntrack on", a table whose one
  rule reads conntrack state, as on every Kubernetes node (kube-proxy, the
  CNI's masquerading) and with the agent's table.

ClusterNetworkPolicy: at the largest K the agent runs once more with
``--enable-cluster-network-policy`` and ``--cnps`` ClusterNetworkPolicies
(half Admin, half Baseline) that select none of the lab's pods, so both CNP
stages are in the pipeline around NetworkPolicy; the target is 95% of the
NetworkPolicy-only agent's figures, cached and every flow a cache miss.

TCP: connections per second (4 client processes, each connect + RST-close in
a loop; median of ``--repeat`` runs), the clients' CPU time per connection,
and the time connect() takes for 2,000 sequential connections, 1 ms
apart (the SYN is the packet queued), with no agent (without and with
conntrack on) and with the agent at the largest policy count; with the
agent, how many TCP packets it judged and how many the kernel's verdict
memory answered (its metrics) during those runs.

Not a test: run it and copy the tables into docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

NAMESPACE = "bench"
CLIENT = ("bench/client", "10.244.1.10")
#: Two server pods: every other datagram goes to the second, so the uncached mode has twice
#: 65,535 (destination, port) keys, more than the agent's verdict cache holds.
SERVERS = (("bench/server-1", "10.244.1.20"), ("bench/server-2", "10.244.1.21"))
SERVER = SERVERS[0]  # the TCP measurements' server
NODE_NAME = "bench-node"
#: Queue number of the minimal consumers (queues are per network namespace).
QUEUE_NUM = 4242
#: First of the 64 closed UDP ports the flood targets in cached mode.
UDP_PORT_BASE = 20000
UDP_PORTS = 64
SOURCE_PORTS = range(1024, 65536)
TCP_PORT = 8080
TCP_CLIENTS = 4
#: The TCP server's accept queue (and its namespace's somaxconn): with a short one, a moment the
#: server is not scheduled overflows it, the kernel drops SYNs, and a client stalls for its whole
#: 1 s connect timeout, half a measurement.
TCP_BACKLOG = 65535
LATENCY_CONNECTIONS = 2000
AGENT_STATUS = ("127.0.0.1", 9080)
AGENT_START_TIMEOUT = 60.0
HELPER = [sys.executable, str(Path(__file__).resolve()), "helper"]
#: The load generator and the queue consumer each get a CPU of their own (on a 2-CPU machine, all
#: of them): the sender's CPU also carries the kernel's work up to the queue, the consumer's CPU
#: the verdict and everything after it (forwarding, delivery to the server).
SENDER_CPU = "0"
CONSUMER_CPU = "1"


# ====================================================================================
# Helpers: each runs as its own process inside a lab namespace (``... helper NAME``).
# ====================================================================================


def _ipv4_udp(src: str, dst: str, payload: bytes) -> bytearray:
    """An IPv4+UDP datagram for a raw socket; ports are patched in per packet.

    With IP_HDRINCL the kernel fills in the total length, the identification
    and the header checksum; a zero UDP checksum means "none" for IPv4.
    """
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    udp = struct.pack("!HHHH", 0, 0, 8 + len(payload), 0)
    return bytearray(ip + udp + payload)


def helper_udp_flood(args: argparse.Namespace) -> None:
    """Send UDP datagrams at ``rate`` per second for ``seconds``, each a new flow, alternating destinations.

    cached: the source port changes every datagram, the destination port
    (among 64) every 64,512: a few verdict-cache keys. uncached: the
    destination port changes every other datagram (every destination every
    datagram), cycling through 2 x 65,535 keys: each datagram misses the cache.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    destinations = args.dst.split(",")
    packets = [_ipv4_udp(args.src, dst, b"kube-netpol bench") for dst in destinations]
    views = [(memoryview(packet), (dst, 0)) for packet, dst in zip(packets, destinations)]
    sports = [struct.pack("!H", p) for p in SOURCE_PORTS]
    if args.mode == "cached":
        dports = [struct.pack("!H", UDP_PORT_BASE + i) for i in range(UDP_PORTS)]
        every = len(sports)
    else:
        dports = [struct.pack("!H", p) for p in range(1, 65536)]
        every = len(views)
    n_views, n_sports, n_dports = len(views), len(sports), len(dports)
    burst = 64
    sent = errors = 0
    print("go", flush=True)  # the measurement window starts
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + args.seconds
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        ahead = started + sent / args.rate - now
        if ahead > 0:
            time.sleep(ahead)
        for i in range(sent, sent + burst):
            view, address = views[i % n_views]
            view[20:22] = sports[i % n_sports]
            view[22:24] = dports[(i // every) % n_dports]
            try:
                sock.sendto(view, address)
            except OSError:
                errors += 1
        sent += burst
    elapsed = time.perf_counter() - started
    # Its own CPU time, user and kernel: the kernel's work on each datagram (the client's stack, the
    # node's netfilter hooks and forwarding, the server's stack) runs in the sender's syscall and the
    # softirq on its way out, charged to it (no IRQ time accounting on the bench machine's kernel).
    cpu = time.process_time() - cpu_started
    print(json.dumps({"sent": sent, "errors": errors, "seconds": elapsed, "cpu_seconds": cpu}), flush=True)


def helper_nfq_python(args: argparse.Namespace) -> None:
    """Accept everything from the queue with a Python callback, read like the agent reads (poll + drain)."""
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    from kube_netpol.agent.verdict_loop import COPY_RANGE, DEFAULT_MAX_QUEUE_LEN

    judged = 0

    def accept(packet: Any) -> None:
        nonlocal judged
        packet.accept()
        judged += 1

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    queue = NetfilterQueue()
    queue.bind(args.queue, accept, max_len=DEFAULT_MAX_QUEUE_LEN, mode=COPY_PACKET, range=COPY_RANGE)
    poller = select.poll()
    poller.register(queue.get_fd(), select.POLLIN)
    print("ready", flush=True)
    while not stopping:
        if poller.poll(200):
            queue.run(block=False)
    queue.unbind()
    print(f"judged {judged}", flush=True)


def helper_dataplane(args: argparse.Namespace) -> None:
    """Our Dataplane's queue rule in this namespace (the server pod managed), or its removal."""
    from kube_netpol.dataplane import Dataplane, DataplaneConfig, cleanup

    if args.action == "start":
        # No per-source limit of new flows: one sending pod measures the consumer, not the limit.
        backend = Dataplane(DataplaneConfig(table=args.table, queue_num=args.queue, fail_open=True,
                                            new_flow_limit=0)).start(
            args.managed, []
        )
        print(backend, flush=True)
    else:
        cleanup(args.table)


def helper_tcp_server(args: argparse.Namespace) -> None:
    """Accept and close connections until killed."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", args.port))
    server.listen(TCP_BACKLOG)
    print("ready", flush=True)
    while True:
        try:
            conn, _ = server.accept()
            conn.close()
        except OSError:
            pass


def _connect(dst: str, port: int, timeout: float) -> float | None:
    """Seconds connect() took, None on failure; closed with RST (no TIME_WAIT to exhaust ports)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.settimeout(timeout)
    started = time.perf_counter()
    try:
        sock.connect((dst, port))
        return time.perf_counter() - started
    except OSError:
        return None
    finally:
        sock.close()


def helper_tcp_connect(args: argparse.Namespace) -> None:
    """Open connections one after another for ``seconds``; print how many succeeded."""
    ok = failed = 0
    cpu_started = time.process_time()
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        if _connect(args.dst, args.port, 1.0) is None:
            failed += 1
        else:
            ok += 1
    # The client's CPU time (user and kernel): its SYN's way through the node's hooks runs in it.
    cpu = time.process_time() - cpu_started
    print(json.dumps({"connections": ok, "failures": failed, "cpu_seconds": cpu}), flush=True)


def helper_tcp_latency(args: argparse.Namespace) -> None:
    """connect() durations of ``count`` sequential connections, 1 ms apart, in microseconds."""
    durations = []
    for _ in range(args.count):
        took = _connect(args.dst, args.port, 1.0)
        if took is not None:
            durations.append(took * 1e6)
        time.sleep(0.001)
    print(json.dumps({"microseconds": durations}), flush=True)


# ====================================================================================
# The orchestration (runs in the root namespace, starts everything inside the lab).
# ====================================================================================


@dataclass(frozen=True)
class Flood:
    """One UDP measurement."""

    judged: int  # datagrams that reached the servers
    judged_per_s: float  # the same, per second of sending
    offered_per_s: float
    cpu_us_per_flow: float | None  # the consumer's CPU time (all threads, user + kernel) per datagram judged
    consumer_busy: float | None  # the consumer's CPU time / the sending time
    #: The sender's own CPU time per datagram that got through: the kernel's part of the path, up to
    #: the queue (and all of it for datagrams the kernel answers itself), runs in the sender.
    sender_cpu_us_per_flow: float | None = None
    sender_busy: float | None = None  # the sender's CPU time / the sending time (1: sender-bound)
    #: Time the consumer's busiest thread was ready to run but waited for its CPU while another
    #: process ran there (schedstat's run_delay, less its sibling threads' CPU time), share of the
    #: sending time: how much something else disturbed the figure.
    waited: float | None = None


@dataclass
class UdpResult:
    label: str
    runs: list[Flood] = field(default_factory=list)
    note: str = ""
    discarded: int = 0  # runs measured again because the consumer waited for its CPU too long
    judged_all: int = 0  # datagrams through in all runs, the discarded ones included

    def _median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    @property
    def median(self) -> float:
        return statistics.median(r.judged_per_s for r in self.runs)

    @property
    def offered(self) -> float:
        return statistics.median(r.offered_per_s for r in self.runs)

    @property
    def cpu_median(self) -> float | None:
        return self._median("cpu_us_per_flow")

    @property
    def sender_cpu_median(self) -> float | None:
        return self._median("sender_cpu_us_per_flow")

    @property
    def sender_busy_median(self) -> float | None:
        return self._median("sender_busy")

    @property
    def path_cpu_median(self) -> float | None:
        """CPU per flow of the whole path: the sender's (the kernel up to the queue) plus the consumer's."""
        values = [r.sender_cpu_us_per_flow + (r.cpu_us_per_flow or 0.0) for r in self.runs
                  if r.sender_cpu_us_per_flow is not None]
        return statistics.median(values) if values else None

    @property
    def busy_median(self) -> float | None:
        return self._median("consumer_busy")

    @property
    def waited_max(self) -> float | None:
        values = [r.waited for r in self.runs if r.waited is not None]
        return max(values) if values else None

    def summary(self) -> str:
        cpu = ""
        if self.cpu_median is not None:
            cpu = f", {self.cpu_median:.2f} µs CPU/flow, consumer busy {self.busy_median:.0%}"
        if self.waited_max is not None:
            cpu += f", waited for its CPU up to {self.waited_max:.1%}"
        if self.sender_cpu_median is not None and self.sender_busy_median is not None:
            cpu += f"; sender {self.sender_cpu_median:.2f} µs CPU/flow, busy {self.sender_busy_median:.0%}"
        again = f", {self.discarded} disturbed runs measured again" if self.discarded else ""
        return (f"{self.label}: {self.median:,.0f} judged/s{cpu} (runs {[round(r.judged_per_s) for r in self.runs]}, "
                f"offered {self.offered:,.0f}/s{again})")  # fmt: skip


def sched_ns(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread of ``pid``: (CPU time, time ready to run but waiting for a CPU) so far, in
    nanoseconds (the first two fields of /proc/PID/task/*/schedstat)."""
    threads: dict[str, tuple[int, int]] = {}
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        # With --queue-bypass a dead consumer lets everything through: its figure would be a lie.
        raise RuntimeError(f"the queue consumer (pid {pid}) is gone")
    for task in tasks.iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
            threads[task.name] = (int(fields[0]), int(fields[1]))
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return threads


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    return sum(ran for ran, _ in sched_ns(pid).values())


def waited_for_others_ns(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """How long the consumer's busiest thread waited for its CPU because of other processes: its wait
    less the CPU time of the consumer's other threads (they share the pinned CPU with it)."""
    ran = {tid: after[tid][0] - before.get(tid, (0, 0))[0] for tid in after}
    if not ran:
        return 0
    busiest = max(ran, key=ran.__getitem__)
    waited = after[busiest][1] - before.get(busiest, (0, 0))[1]
    return max(0, waited - (sum(ran.values()) - ran[busiest]))


#: Between runs the machine counts as idle at most this busy (all CPUs), over QUIET_SAMPLE seconds.
QUIET_BUSY = 0.10
QUIET_SAMPLE = 1.0


def machine_busy(seconds: float) -> float:
    """Share of all CPUs' time not idle over the next ``seconds``."""
    def sample() -> tuple[int, int]:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]

    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    total = total_after - total_before
    return 1.0 - (idle_after - idle_before) / total if total else 0.0


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from kube_netpol.tools.lab import Lab

        self.args = args
        self.workdir = workdir
        self.lab = Lab("knbench")
        self.client = self.lab.add_host(CLIENT[0], [CLIENT[1]])
        for name, ip in SERVERS:
            self.lab.add_host(name, [ip])
        self.node = self.lab.node_netns
        self.queue_backend = ""  # what our Dataplane picked for the minimal consumers' queue rule
        # Expired UDP flows leave the node's conntrack table quickly (this namespace only).
        self._run(self.lab.node_command(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2"]), check=False)
        self._run(self.lab.host_command(SERVER[0], ["sysctl", "-qw", f"net.core.somaxconn={TCP_BACKLOG}"]))

    # --- small tools ------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True, timeout: float = 60, stdin: str | None = None) -> str:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv} failed: {result.stderr.strip()}")
        return result.stdout

    def _start(self, argv: list[str], ready_line: str | None = "ready", timeout: float = 30) -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if ready_line is not None:
            line = _read_line(process, timeout)
            if line.strip() != ready_line:
                process.kill()
                raise RuntimeError(f"{argv} did not get ready: {line!r} {process.stderr.read() if process.stderr else ''}")
        return process

    def _stop(self, process: subprocess.Popen[str]) -> str:
        """SIGTERM (SIGKILL after 15 s); its standard output. A process that had already exited is an error."""
        died = process.poll() is not None
        if not died:
            process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if died:
            raise RuntimeError(f"{process.args} exited early ({process.returncode}): {err.strip()[-2000:]}")
        return out

    def server_arrivals(self) -> int:
        """Datagrams that reached the servers' closed ports (their namespaces' Udp NoPorts counters)."""
        total = 0
        for name, _ in SERVERS:
            snmp = self._run(self.lab.host_command(name, ["cat", "/proc/net/snmp"])).splitlines()
            udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
            total += int(dict(zip(udp[0], udp[1]))["NoPorts"])
        return total

    def flush_conntrack(self) -> None:
        self._run(self.lab.node_command(["conntrack", "-F"]), check=False)

    def flood(self, mode: str, consumer: int | None, rate: float | None = None) -> Flood:
        """Send for ``--seconds`` and count what the servers got; see the module doc."""
        self.flush_conntrack()
        before = self.server_arrivals()
        argv = [*HELPER, "udp-flood", "--src", CLIENT[1], "--dst", ",".join(ip for _, ip in SERVERS),
                "--rate", str(rate or self.args.rate), "--seconds", str(self.args.seconds), "--mode", mode]  # fmt: skip
        sender = self._start(self.lab.host_command(CLIENT[0], pinned(SENDER_CPU, argv)), ready_line="go")
        sched_start = sched_ns(consumer) if consumer else {}
        wall_start = time.perf_counter()
        out, err = sender.communicate(timeout=120)
        sched_end = sched_ns(consumer) if consumer else {}
        wall_end = time.perf_counter()
        cpu_start = sum(ran for ran, _ in sched_start.values())
        cpu_end = sum(ran for ran, _ in sched_end.values())
        if sender.returncode != 0:
            raise RuntimeError(f"udp-flood failed: {err}")
        report = json.loads(out)
        time.sleep(0.3)  # the last queued datagrams get their verdicts
        through = self.server_arrivals() - before
        cpu_drained = cpu_ns(consumer) if consumer else 0
        return Flood(
            judged=through,
            judged_per_s=through / report["seconds"],
            offered_per_s=report["sent"] / report["seconds"],
            cpu_us_per_flow=(cpu_drained - cpu_start) / 1000 / through if consumer and through else None,
            consumer_busy=(cpu_end - cpu_start) / 1e9 / (wall_end - wall_start) if consumer else None,
            waited=waited_for_others_ns(sched_start, sched_end) / 1e9 / (wall_end - wall_start) if consumer else None,
            sender_cpu_us_per_flow=report["cpu_seconds"] * 1e6 / through if through else None,
            sender_busy=report["cpu_seconds"] / report["seconds"],
        )

    def wait_quiet(self) -> bool:
        """Wait (up to ``--quiet-wait`` s) until the machine is idle, as it should be between runs."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            busy = machine_busy(QUIET_SAMPLE)
            if busy <= QUIET_BUSY:
                return True
            if time.monotonic() >= deadline:
                print(f"    (the machine is still {busy:.0%} busy; measuring anyway)", flush=True)
                return False

    def udp_series(
        self, label: str, consumer: int | None = None, mode: str = "cached", rate: float | None = None
    ) -> UdpResult:
        """``--repeat`` runs; a run during which something else took the consumer's CPU is measured again."""
        result = UdpResult(label)
        for _ in range(self.args.repeat):
            attempts: list[Flood] = []
            for _ in range(1 + self.args.retries):
                self.wait_quiet()
                attempts.append(self.flood(mode, consumer, rate))
                if (attempts[-1].waited or 0.0) <= self.args.max_disturbance:
                    break
            # All attempts disturbed: keep the least disturbed; the report flags it.
            result.runs.append(min(attempts, key=lambda f: f.waited or 0.0))
            result.discarded += len(attempts) - 1
            result.judged_all += sum(f.judged for f in attempts)
        print("  " + result.summary(), flush=True)
        return result

    @contextlib.contextmanager
    def conntrack_on(self) -> Iterator[None]:
        """A table whose one rule reads conntrack state, so the node namespace tracks connections.

        Without any table there the kernel keeps no conntrack entries for this namespace at all; every
        Kubernetes node does (kube-proxy, the CNI's masquerading), and so does the agent's table."""
        self.conntrack_table(add=True)
        try:
            yield
        finally:
            self.conntrack_table(add=False)

    def conntrack_table(self, add: bool) -> None:
        """Add or delete the table of ``conntrack_on``."""
        table = f"knbench-ct-{self.lab.lab_id}"
        if not add:
            self._run(self.lab.node_command(["nft", "delete", "table", "inet", table]))
            return
        ruleset = {"nftables": [
            {"add": {"table": {"family": "inet", "name": table}}},
            {"add": {"chain": {"family": "inet", "table": table, "name": "postrouting", "type": "filter",
                               "hook": "postrouting", "prio": 95, "policy": "accept"}}},
            {"add": {"rule": {"family": "inet", "table": table, "chain": "postrouting", "expr": [
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"accept": None}]}}},
        ]}  # fmt: skip
        self._run(self.lab.node_command(["nft", "-j", "-f", str(self._write("conntrack-on.json", ruleset))]))

    def _write(self, name: str, obj: object) -> Path:
        path = self.workdir / name
        path.write_text(json.dumps(obj))
        return path

    @contextlib.contextmanager
    def queue_rule(self) -> Iterator[None]:
        table = f"knbench-{self.lab.lab_id}"
        backend = self._run(self.lab.node_command([*HELPER, "dataplane", "start", "--table", table,
                                                   "--queue", str(QUEUE_NUM), "--managed", *[ip for _, ip in SERVERS]])).strip()  # fmt: skip
        self.queue_backend = backend
        try:
            yield
        finally:
            self._run(self.lab.node_command([*HELPER, "dataplane", "cleanup", "--table", table]))

    # --- the measurements ------------------------------------------------------------------

    def minimal_consumer(self, label: str, argv: list[str], equal_rate: float = 0) -> list[UdpResult]:
        """The series at full load, then (with ``equal_rate``) one at that lower load."""
        with self.queue_rule():
            process = self._start(self.lab.node_command(pinned(CONSUMER_CPU, argv)))
            try:
                results = [self.udp_series(label, process.pid)]
                if equal_rate:
                    results.append(self.udp_series(f"{label}, {equal_rate:,.0f}/s offered", process.pid, rate=equal_rate))
            finally:
                out = self._stop(process)
            results[0].note = out.strip().splitlines()[-1] if out.strip() else ""
        return results

    def tcp_rate(self) -> tuple[float, int, float]:
        """Connections per second of all clients, how many connects failed (1 s timeout), and the
        clients' CPU µs per connection."""
        argv = [*HELPER, "tcp-connect", "--dst", SERVER[1], "--port", str(TCP_PORT), "--seconds", str(self.args.seconds)]
        processes = [self._start(self.lab.host_command(CLIENT[0], argv), ready_line=None) for _ in range(TCP_CLIENTS)]
        total = failures = 0
        cpu = 0.0
        for process in processes:
            out, err = process.communicate(timeout=60)
            if process.returncode != 0:
                raise RuntimeError(f"tcp-connect failed: {err}")
            report = json.loads(out)
            total += report["connections"]
            failures += report["failures"]
            cpu += report["cpu_seconds"]
        return total / self.args.seconds, failures, cpu * 1e6 / total if total else 0.0

    def start_tcp_server(self) -> subprocess.Popen[str]:
        """The TCP measurements' server (on SERVER, port TCP_PORT); the caller kills it."""
        return self._start(self.lab.host_command(SERVER[0], [*HELPER, "tcp-server", "--port", str(TCP_PORT)]))

    def tcp_latency(self, count: int = LATENCY_CONNECTIONS) -> list[float]:
        """connect() durations (µs) of ``count`` sequential connections; fewer if some failed (1 s timeout)."""
        argv = [*HELPER, "tcp-latency", "--dst", SERVER[1], "--port", str(TCP_PORT), "--count", str(count)]
        return list(json.loads(self._run(self.lab.host_command(CLIENT[0], argv), timeout=60 + count * 0.05))["microseconds"])

    def close(self) -> None:
        self.lab.close()


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if (os.cpu_count() or 1) > 1 else argv


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


# --- the agent -------------------------------------------------------------------------------


def policies(extra: int) -> list[dict[str, Any]]:
    """1 + ``extra`` NetworkPolicies, all selecting the server pod; the last one admits the client."""
    def policy(name: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": NAMESPACE, "name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"], "ingress": ingress},
        }  # fmt: skip

    out = [
        policy(f"other-{i:04d}", [{"from": [{"ipBlock": {"cidr": f"192.168.{i // 256}.{i % 256}/32"}}],
                                   "ports": [{"protocol": "TCP", "port": 1000 + i}]}])  # fmt: skip
        for i in range(extra)
    ]
    out.append(policy("zz-allow-client", [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]))
    return out


def cold_cluster_network_policies(count: int) -> list[dict[str, Any]]:
    """``count`` ClusterNetworkPolicies, half Admin and half Baseline, none selecting the bench's pods."""
    return [
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": f"cold-{i:05d}"},
         "spec": {"tier": "Admin" if i % 2 else "Baseline", "priority": i % 1001,
                  "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": f"cold-{i}"}}}},
                  "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
                  "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}  # fmt: skip
        for i in range(count)
    ]


def cluster_objects(extra_policies: int, cnps: int = 0) -> list[dict[str, Any]]:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}  # fmt: skip
    pods = [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"namespace": NAMESPACE, "name": name.split("/")[1], "labels": {"app": name.split("/")[1].split("-")[0]}},
         "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}  # fmt: skip
        for name, ip in (CLIENT, *SERVERS)
    ]
    return [namespace, *pods, *policies(extra_policies), *cold_cluster_network_policies(cnps)]


class Agent:
    """``python -m kube_netpol run --manifests DIR`` in the node namespace, with its own table."""

    def __init__(self, bench: Bench, extra_policies: int, decision_log: bool = False, recording: bool = True,
                 memory: bool = True, cnps: int = 0, extra_args: Sequence[str] = ()) -> None:
        from kube_netpol.sources.manifests import objects_revision

        self.bench = bench
        self.recording = recording
        name = (f"{extra_policies}{'-decision-log' if decision_log else ''}{'' if recording else '-unrecorded'}"
                f"{'' if memory else '-no-memory'}{f'-{cnps}-cnps' if cnps else ''}")
        self.folder = Path(tempfile.mkdtemp(prefix=f"manifests-{name}-", dir=bench.workdir))  # one per start
        self.file = self.folder / "cluster.json"
        self.extra = extra_policies
        self.cnps = cnps
        self._revision_of = objects_revision
        self.table = f"knbench-agent-{bench.lab.lab_id}"
        revision = self.write()
        self.log = open(bench.workdir / f"agent-{self.folder.name}.log", "wb")
        # Without recording: kube-netpol with the verdict loop's recording patched out (bench/unrecorded_loop.py).
        program = ["-m", "kube_netpol"] if recording else [str(Path(__file__).resolve().parent / "unrecorded_loop.py")]
        argv = [sys.executable, *program, "run", "--manifests", str(self.folder),
                "--hostname-override", NODE_NAME, "--nftables-table", self.table,
                "--metrics-bind-address", f"{AGENT_STATUS[0]}:{AGENT_STATUS[1]}",
                # One sending pod: the per-source limit of new flows (docs/configuration.md) would measure itself.
                "--new-flow-rate-limit", "0", f"--verdict-memory={str(memory).lower()}"]  # fmt: skip
        if cnps:
            argv.append("--enable-cluster-network-policy")  # both CNP tiers in the pipeline
        argv += extra_args
        self.decision_log: Path | None = None
        if decision_log:
            self.decision_log = bench.workdir / f"decisions-{name}.jsonl"
            argv += ["--decision-log", str(self.decision_log)]  # the default rate limit
        self.process = subprocess.Popen(
            bench.lab.node_command(pinned(CONSUMER_CPU, argv)), stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.wait_enforced(revision, AGENT_START_TIMEOUT)

    def write(self) -> str:
        objects = cluster_objects(self.extra, self.cnps)
        temporary = self.folder / ".cluster.json.tmp"
        temporary.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        os.replace(temporary, self.file)
        return str(self._revision_of(objects))

    def http_get(self, path: str) -> str:
        argv = [sys.executable, "-c",
                "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                f"http://{AGENT_STATUS[0]}:{AGENT_STATUS[1]}{path}"]  # fmt: skip
        return self.bench._run(self.bench.lab.node_command(argv), timeout=30)

    def wait_enforced(self, revision: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the agent exited ({self.process.returncode}); log in {self.log.name}")
            try:
                status = json.loads(self.http_get("/statusz"))
            except (RuntimeError, ValueError):
                status = {}
            if status.get("ready") and status.get("enforced_revision") == revision:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the agent did not enforce its policies within {timeout:.0f} s; log in {self.log.name}")

    def accepted(self) -> int:
        total = 0
        for line in self.http_get("/metrics").splitlines():
            if line.startswith("kube_network_policies_packet_count{") and 'verdict="accept"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def tcp_answers(self) -> tuple[int, int]:
        """(TCP packets the agent judged in userspace, packets the kernel's verdict memory answered) so far."""
        queued = kernel = 0
        for line in self.http_get("/metrics").splitlines():
            if line.startswith("kube_network_policies_packet_count{") and 'protocol="TCP"' in line:
                queued += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("kube_network_policies_kernel_verdicts{"):
                kernel += int(float(line.rsplit(" ", 1)[1]))
        return queued, kernel

    def decision_records(self) -> dict[str, int]:
        """Decision records by fate so far (written, rate_limited, queue_full, write_error)."""
        fates: dict[str, int] = {}
        for line in self.http_get("/metrics").splitlines():
            if line.startswith("kube_network_policies_decision_records") and 'result="' in line:
                fate = line.split('result="', 1)[1].split('"', 1)[0]
                fates[fate] = fates.get(fate, 0) + int(float(line.rsplit(" ", 1)[1]))
        return fates

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        # Fail-open leaves the table for the next start; remove it (the lab would anyway).
        self.bench._run(self.bench.lab.node_command([*HELPER, "dataplane", "cleanup", "--table", self.table]))


# --- the run --------------------------------------------------------------------------------


def build_nfq_accept(workdir: Path) -> Path:
    binary = workdir / "nfq_accept"
    source = REPO / "bench" / "nfq_accept.c"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source), "-lnetfilter_queue", "-lnfnetlink"], check=True)
    return binary


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kube-netpol-bench-"))
    results: dict[str, Any] = {"udp": [], "udp_equal": [], "tcp": {}}
    equal = args.equal_rate
    bench = Bench(args, workdir)
    agent: Agent | None = None
    try:
        binary = build_nfq_accept(workdir)
        print("UDP new flows per second:", flush=True)
        results["udp"].append(bench.udp_series("no queue rule (the path's ceiling)"))
        with bench.conntrack_on():
            results["udp"].append(bench.udp_series(CONNTRACK_CEILING))
        from kube_netpol.agent.verdict_loop import COPY_RANGE  # bind like the agent

        c_argv = [str(binary), str(QUEUE_NUM), str(COPY_RANGE)]
        results["udp"] += bench.minimal_consumer("C accept-all (nfq_accept)", c_argv)
        python_argv = [*HELPER, "nfq-python", "--queue", str(QUEUE_NUM)]
        full, *at_equal = bench.minimal_consumer("Python accept-all (NetfilterQueue)", python_argv, equal_rate=equal)
        results["udp"].append(full)
        results["udp_equal"] += at_equal
        results["queue_backend"] = bench.queue_backend
        for extra in args.policies:
            policies_label = f"{1 + extra} {'policy' if extra == 0 else 'policies'}"
            agent = Agent(bench, extra)
            try:
                results["udp"].append(agent_series(bench, agent, f"agent, {policies_label} selecting the servers"))
                label = f"agent, {policies_label}, every flow a cache miss"
                results["udp"].append(bench.udp_series(label, agent.process.pid, mode="uncached"))
                if extra == args.policies[-1]:
                    if equal:
                        label = f"agent, {policies_label}, {equal:,.0f}/s offered"
                        results["udp_equal"].append(agent_series(bench, agent, label, rate=equal))
                    results["tcp"]["agent"] = tcp_figures(bench, f"agent, {policies_label}", agent)
            finally:
                agent.stop()
                agent = None
            if extra != args.policies[-1]:
                continue
            # The same agent again, at full load and at the equal rate: without its metric
            # recording, and with decision logging on.
            variants = [(f"{args.cnps} {CNPS}", {"cnps": args.cnps}, not args.cnps),
                        (NO_MEMORY, {"memory": False}, args.no_memory_comparison),
                        (UNRECORDED, {"recording": False}, args.no_recording_comparison),
                        ("decision logging on", {"decision_log": True}, args.no_decision_log)]
            for variant, options, skipped in variants:
                if skipped:
                    continue
                agent = Agent(bench, extra, **options)
                try:
                    results["udp"].append(agent_series(bench, agent, f"agent, {policies_label}, {variant}"))
                    if variant == NO_MEMORY or CNPS in variant:
                        label = f"agent, {policies_label}, {variant}, every flow a cache miss"
                        results["udp"].append(bench.udp_series(label, agent.process.pid, mode="uncached"))
                        if variant == NO_MEMORY:
                            results["tcp"]["agent-no-memory"] = tcp_figures(bench, f"agent, {policies_label}, {variant}",
                                                                            agent)
                    if equal:
                        label = f"agent, {policies_label}, {variant}, {equal:,.0f}/s offered"
                        results["udp_equal"].append(agent_series(bench, agent, label, rate=equal))
                finally:
                    agent.stop()
                    agent = None
        results["tcp"]["none"] = tcp_figures(bench, "no agent")
        with bench.conntrack_on():
            results["tcp"]["conntrack"] = tcp_figures(bench, f"no agent, {CONNTRACK_CEILING.split(', ')[1]}")
    finally:
        if agent is not None:
            agent.stop()
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def agent_series(bench: Bench, agent: Agent, label: str, rate: float | None = None) -> UdpResult:
    """The cached-mode series for a running agent, cross-checked against its own accept count."""
    before = agent.accepted()
    records_before = agent.decision_records() if agent.decision_log else {}
    result = bench.udp_series(label, agent.process.pid, rate=rate)
    verdicts, through = agent.accepted() - before, result.judged_all
    if agent.recording:
        result.note = f"the agent counted {verdicts} accept verdicts, the servers received {through} datagrams"
    else:  # its counters miss the flow-table hits
        result.note = f"recording patched out; the servers received {through} datagrams"
    if agent.decision_log:
        after = agent.decision_records()
        fates = {fate: after.get(fate, 0) - records_before.get(fate, 0) for fate in sorted(after)}
        result.note += "; decision records: " + ", ".join(f"{n} {fate}" for fate, n in fates.items())
    print("    " + result.note, flush=True)
    return result


def tcp_figures(bench: Bench, label: str, agent: Agent | None = None) -> dict[str, Any]:
    """Connections/s (median of ``--repeat`` runs), the clients' CPU per connection, connect() latency;
    with an agent, how many of the TCP packets it judged itself and how many the kernel answered."""
    server = bench.start_tcp_server()
    answers_before = agent.tcp_answers() if agent is not None else (0, 0)
    try:
        rates, cpus, failures = [], [], 0
        for _ in range(bench.args.repeat):
            bench.wait_quiet()
            rate, failed, cpu = bench.tcp_rate()
            rates.append(rate)
            cpus.append(cpu)
            failures += failed
        rate = statistics.median(rates)
        bench.wait_quiet()
        latency = bench.tcp_latency()
    finally:
        server.kill()
        server.wait()
    figures: dict[str, Any] = {
        "label": label, "connections_per_s": rate, "p50_us": _percentile(latency, 0.5),
        "p99_us": _percentile(latency, 0.99), "samples": len(latency), "rate_runs": rates,
        "client_cpu_us": statistics.median(cpus), "connect_failures": failures}  # fmt: skip
    answered = ""
    if agent is not None:
        queued, kernel = agent.tcp_answers()
        figures["queued"], figures["kernel_answered"] = queued - answers_before[0], kernel - answers_before[1]
        answered = f"; the agent judged {figures['queued']:,} TCP packets, the kernel answered {figures['kernel_answered']:,}"
    print(f"TCP, {label}: {rate:,.0f} connections/s (runs {[round(r) for r in rates]}, {failures} connects timed out), "
          f"clients {figures['client_cpu_us']:.1f} µs CPU/connection, connect() p50 {figures['p50_us']:.0f} µs, "
          f"p99 {figures['p99_us']:.0f} µs{answered}", flush=True)  # fmt: skip
    return figures


def report(results: dict[str, Any]) -> str:
    """The figures as the Markdown tables of docs/performance.md."""
    udp: list[UdpResult] = results["udp"]
    equal: list[UdpResult] = results.get("udp_equal", [])
    lines = udp_table(udp)
    if equal:
        lines += ["", "At an equal offered load below every consumer's capacity (no queue backs up):", ""]
        lines += udp_table(equal)
    disturbed = [f"{r.label} ({r.waited_max:.0%})" for r in [*udp, *equal]
                 if r.waited_max is not None and r.waited_max > DISTURBED]  # fmt: skip
    if disturbed:
        lines.append(f"\nDisturbed (the consumer waited for its CPU more than {DISTURBED:.0%} of a run): "
                     f"{'; '.join(disturbed)}.")  # fmt: skip
    lines += target_lines(udp, full_load=True)
    lines += target_lines(equal, full_load=False)
    tcp = results["tcp"]
    lines += ["", "| TCP | connections/s | clients' CPU µs/connection | connect() p50 µs | connect() p99 µs | "
              "judged by the agent | answered by the kernel |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key in ("none", "conntrack", "agent", "agent-no-memory"):
        if key in tcp:
            t = tcp[key]
            lines.append(f"| {t['label']} | {t['connections_per_s']:,.0f} | {t['client_cpu_us']:.1f} | {t['p50_us']:.0f} | "
                         f"{t['p99_us']:.0f} | {t.get('queued', '–')} | {t.get('kernel_answered', '–')} |")
    for key in ("agent", "agent-no-memory"):
        if "none" in tcp and key in tcp:
            t, none = tcp[key], tcp["none"]
            lines.append(f"\n{t['label']}: {t['connections_per_s'] / none['connections_per_s']:.0%} of the connections/s "
                         f"without an agent, {none['client_cpu_us'] / t['client_cpu_us']:.0%} by the clients' CPU per "
                         f"connection; added connect() latency p50 {t['p50_us'] - none['p50_us']:.1f} µs, "
                         f"p99 {t['p99_us'] - none['p99_us']:.1f} µs.")  # fmt: skip
            if "conntrack" in tcp:
                ct = tcp["conntrack"]
                lines.append(f"Against no agent with conntrack on: {t['connections_per_s'] / ct['connections_per_s']:.0%} of "
                             f"the connections/s, {ct['client_cpu_us'] / t['client_cpu_us']:.0%} by the clients' CPU per "
                             f"connection; added p50 {t['p50_us'] - ct['p50_us']:.1f} µs, p99 {t['p99_us'] - ct['p99_us']:.1f} µs.")
    ceiling = next((r for r in results["udp"] if r.label.startswith("no queue rule (")), None)
    tracked = next((r for r in results["udp"] if r.label == CONNTRACK_CEILING), None)
    if ceiling is not None and ceiling.path_cpu_median:
        lines += ["", "The whole path (the sender carries the kernel's part up to the queue, the consumer the rest):", "",
                  "| consumer | judged new flows/s | sender busy | sender CPU µs/flow | consumer CPU µs/flow | "
                  "path CPU µs/flow | vs the ceiling by flows/s | by path CPU | vs the ceiling with conntrack by path CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in results["udp"]:
            if r.path_cpu_median is None:
                continue
            vs_tracked = f"{tracked.path_cpu_median / r.path_cpu_median:.0%}" if tracked and tracked.path_cpu_median else "–"
            lines.append(f"| {r.label} | {r.median:,.0f} | {r.sender_busy_median or 0:.0%} | {r.sender_cpu_median or 0:.2f} | "
                         f"{r.cpu_median if r.cpu_median is not None else 0:.2f} | {r.path_cpu_median:.2f} | "
                         f"{r.median / ceiling.median:.0%} | {ceiling.path_cpu_median / r.path_cpu_median:.0%} | {vs_tracked} |")
        lines.append("")
        for r in results["udp"]:
            if r.label.startswith("agent, ") and "cache miss" not in r.label and "offered" not in r.label and r.path_cpu_median:
                text = (f"{r.label}: {r.median / ceiling.median:.0%} of the no-queue ceiling's new flows/s, "
                        f"{ceiling.path_cpu_median / r.path_cpu_median:.0%} by the path's CPU per flow")
                if tracked is not None and tracked.path_cpu_median:
                    text += (f"; against the ceiling with conntrack on {r.median / tracked.median:.0%} by flows/s, "
                             f"{tracked.path_cpu_median / r.path_cpu_median:.0%} by the path's CPU per flow")
                lines.append(text + ".")
    return "\n".join(lines)


def udp_table(rows: list[UdpResult]) -> list[str]:
    """One Markdown table; "vs Python" compares with the table's Python accept-all row."""
    python = next(r for r in rows if r.label.startswith("Python"))
    lines = [
        "| consumer | judged new flows/s | vs Python | offered/s | consumer CPU µs/flow | consumer busy | "
        "flows/s per CPU-second | vs Python |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = busy = per_core = ratio = "–"
        if r.cpu_median is not None and r.busy_median is not None and python.cpu_median is not None:
            cpu, busy = f"{r.cpu_median:.2f}", f"{r.busy_median:.0%}"
            per_core, ratio = f"{1e6 / r.cpu_median:,.0f}", f"{python.cpu_median / r.cpu_median:.0%}"
        lines.append(f"| {r.label} | {r.median:,.0f} | {r.median / python.median:.0%} | {r.offered:,.0f} | "
                     f"{cpu} | {busy} | {per_core} | {ratio} |")  # fmt: skip
    return lines


#: Share of the sending time the consumer may wait for its CPU (something else runs there) before a
#: run is called disturbed; about 1% on a quiet machine.
DISTURBED = 0.05
#: The target: the agent at the largest policy count judges at least this share of what the
#: Python accept-all consumer judges.
TARGET = 0.80
#: In the label of the agent run with ClusterNetworkPolicy enabled and --cnps policies selecting nothing it sees.
CNPS = "ClusterNetworkPolicies selecting nothing (CNP enabled)"
#: The CNP target: that agent judges at least this share of what the NetworkPolicy-only agent judges.
CNP_TARGET = 0.95
#: The ceiling with conntrack on in the node namespace (as on every Kubernetes node, and with the agent).
CONNTRACK_CEILING = "no queue rule, conntrack on"
#: In the label of the agent run without the kernel's verdict memory (--verdict-memory=false).
NO_MEMORY = "verdict memory off"
#: In the label of the agent run without the verdict loop's metric recording.
UNRECORDED = "metric recording patched out"


def target_lines(rows: list[UdpResult], full_load: bool) -> list[str]:
    """Whether each agent row at the largest policy count meets the target: at full load by flows/s and
    by CPU per flow, at the equal load (where every consumer judges everything) by CPU per flow."""
    python = next((r for r in rows if r.label.startswith("Python")), None)
    counts = [int(r.label.split()[1]) for r in rows if r.label.startswith("agent, ")]
    if python is None or not counts:
        return []
    largest = f"agent, {max(counts)} "
    out = [""]
    for r in rows:
        if not r.label.startswith(largest) or "cache miss" in r.label or UNRECORDED in r.label:
            continue
        parts, met = [], True
        if full_load:
            by_rate = r.median / python.median
            parts.append(f"{by_rate:.1%} by flows/s")
            met = by_rate >= TARGET
        if r.cpu_median is not None and python.cpu_median is not None:
            by_cpu = python.cpu_median / r.cpu_median
            parts.append(f"{by_cpu:.1%} by CPU per flow")
            met = met and by_cpu >= TARGET
        out.append(f"Target ({TARGET:.0%} of the Python accept-all), {r.label}: {', '.join(parts)}: "
                   f"{'met' if met else 'missed'}.")  # fmt: skip
    for r in rows:
        if not r.label.startswith(largest) or CNPS not in r.label:
            continue
        plain_label = re.sub(r", \d+ " + re.escape(CNPS), "", r.label)
        plain = next((p for p in rows if p.label == plain_label), None)
        if plain is not None and plain.cpu_median and r.cpu_median:
            parts = [f"{r.median / plain.median:.1%} by flows/s" if full_load else "",
                     f"{plain.cpu_median / r.cpu_median:.1%} by CPU per flow"]
            met = plain.cpu_median / r.cpu_median >= CNP_TARGET and (not full_load or r.median / plain.median >= CNP_TARGET)
            out.append(f"CNP target ({CNP_TARGET:.0%} of {plain.label}), {r.label}: {', '.join(p for p in parts if p)}: "
                       f"{'met' if met else 'missed'}.")  # fmt: skip
    unrecorded = next((r for r in rows if r.label.startswith(largest) and UNRECORDED in r.label), None)
    recorded = next((r for r in rows if r.label.startswith(largest)
                     and not any(other in r.label for other in (UNRECORDED, "cache miss", "decision logging", CNPS))), None)
    if unrecorded is not None and recorded is not None and unrecorded.cpu_median and recorded.cpu_median:
        out.append(f"Metric recording, {recorded.label}: {recorded.cpu_median - unrecorded.cpu_median:+.2f} µs CPU "
                   f"per flow against the same agent with it patched out "
                   f"({recorded.cpu_median / unrecorded.cpu_median - 1:+.1%}).")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each UDP/TCP measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per UDP figure and TCP rate (the median is reported)")
    parser.add_argument("--rate", type=float, default=300_000, help="datagrams per second offered")
    parser.add_argument("--policies", type=lambda t: [int(x) for x in t.split(",")], default=[0, 100, 1000],
                        help="extra policies selecting the server, besides the one admitting the client")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--equal-rate", type=float, default=100_000,
                        help="also measure the Python accept-all and the agent at the largest policy count at this "
                             "lower offered rate, below all their capacities (0: don't)")  # fmt: skip
    parser.add_argument("--max-disturbance", type=float, default=DISTURBED,
                        help="measure a UDP run again when the consumer waited for its CPU (something else "
                             "ran there) longer than this share of the run")  # fmt: skip
    parser.add_argument("--retries", type=int, default=4, help="times a disturbed UDP run is measured again")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait, before each measurement, for the machine to be idle")  # fmt: skip
    parser.add_argument("--no-memory-comparison", action="store_true",
                        help="skip the agent run without the kernel's verdict memory")
    parser.add_argument("--no-decision-log", action="store_true",
                        help="skip the agent run with decision logging on")  # fmt: skip
    parser.add_argument("--no-recording-comparison", action="store_true",
                        help="skip the agent run with the verdict loop's metric recording patched out")  # fmt: skip
    parser.add_argument("--cnps", type=int, default=100,
                        help="at the largest policy count, run the agent again with ClusterNetworkPolicy enabled and "
                             "this many CNPs selecting none of its pods (0: skip)")  # fmt: skip

    helper = sub.add_parser("helper").add_subparsers(dest="helper", required=True)
    p = helper.add_parser("udp-flood")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--mode", choices=("cached", "uncached"), default="cached")
    p.set_defaults(func=helper_udp_flood)
    p = helper.add_parser("nfq-python")
    p.add_argument("--queue", type=int, required=True)
    p.set_defaults(func=helper_nfq_python)
    p = helper.add_parser("dataplane")
    p.add_argument("action", choices=("start", "cleanup"))
    p.add_argument("--table", required=True)
    p.add_argument("--queue", type=int, default=QUEUE_NUM)
    p.add_argument("--managed", nargs="*", default=[])
    p.set_defaults(func=helper_dataplane)
    p = helper.add_parser("tcp-server")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=helper_tcp_server)
    p = helper.add_parser("tcp-connect")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.set_defaults(func=helper_tcp_connect)
    p = helper.add_parser("tcp-latency")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.set_defaults(func=helper_tcp_latency)

    args = parser.parse_args()
    if args.command == "helper":
        args.func(args)
        return 0
    if os.geteuid() != 0:
        print("bench_dataplane.py needs root (network namespaces, nftables, NFQUEUE)", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results = run(args)
    print()
    print(f"queue rule of the minimal consumers: our Dataplane, {results.get('queue_backend')} backend\n")
    print(report(results))
    print(f"\n(total {time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")  # fmt: skip
    if args.json:
        serialisable = {**results, **{key: [dataclasses.asdict(r) for r in results[key]] for key in ("udp", "udp_equal")}}
        Path(args.json).write_text(json.dumps(serialisable, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
