#!/usr/bin/env python3
"""New flows per second judged through NFQUEUE, TCP connection rate and first-packet latency.

Everything runs in a lab (kube_netpol.lab): a client pod and a server pod
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
  it does not depend on how busy the machine is, and 1 / it is what the
  consumer would judge with a CPU of its own.
- consumers: none (no queue rule: the path's own ceiling), ``nfq_accept``
  (bench/nfq_accept.c, built here with gcc; the floor of any userspace
  verdict), a Python accept-all NetfilterQueue callback with the agent's
  bind settings and read loop, and the agent itself (``python -m kube_netpol
  run --manifests DIR``) with 1 + K NetworkPolicies, K in ``--policies``,
  all of them selecting the server pods (the last one admits the client).
  For the two minimal consumers the queue rule is our Dataplane (the xt
  backend on a kernel without the nft queue expression) with the server pods
  managed; the agent makes its own table.
- the agent's verdict cache: the datagrams share a few (src, dst, protocol,
  destination port) keys, so after the first ones the agent answers from its
  cache, as it does for real new connections between the same pods. In the
  "cache miss" rows the destination port changes with every other datagram
  and the datagrams alternate between two server pods: the 131,070 keys they
  cycle through are more than the cache holds (65,536, emptied wholesale
  when full), so every datagram is evaluated.

TCP: connections per second (4 client processes, each connect + RST-close in
a loop) and the time connect() takes for 2,000 sequential connections, 1 ms
apart (the SYN is the packet queued), with no agent and with the agent at
the largest policy count.

Not a test: run it and copy the tables into docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
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
    print(json.dumps({"sent": sent, "errors": errors, "seconds": elapsed}), flush=True)


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
        backend = Dataplane(DataplaneConfig(table=args.table, queue_num=args.queue, fail_open=True)).start(
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
    server.listen(4096)
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
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        if _connect(args.dst, args.port, 1.0) is None:
            failed += 1
        else:
            ok += 1
    print(json.dumps({"connections": ok, "failures": failed}), flush=True)


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


@dataclass
class UdpResult:
    label: str
    runs: list[Flood] = field(default_factory=list)
    note: str = ""

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
    def busy_median(self) -> float | None:
        return self._median("consumer_busy")

    def summary(self) -> str:
        cpu = ""
        if self.cpu_median is not None:
            cpu = f", {self.cpu_median:.2f} µs CPU/flow, consumer busy {self.busy_median:.0%}"
        return (f"{self.label}: {self.median:,.0f} judged/s{cpu} (runs {[round(r.judged_per_s) for r in self.runs]}, "
                f"offered {self.offered:,.0f}/s)")  # fmt: skip


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds (schedstat's first field)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        # With --queue-bypass a dead consumer lets everything through: its figure would be a lie.
        raise RuntimeError(f"the queue consumer (pid {pid}) is gone")
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from kube_netpol.lab import Lab

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

    # --- small tools ------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
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

    def flood(self, mode: str, consumer: int | None) -> Flood:
        """Send for ``--seconds`` and count what the servers got; see the module doc."""
        self.flush_conntrack()
        before = self.server_arrivals()
        argv = [*HELPER, "udp-flood", "--src", CLIENT[1], "--dst", ",".join(ip for _, ip in SERVERS),
                "--rate", str(self.args.rate), "--seconds", str(self.args.seconds), "--mode", mode]  # fmt: skip
        sender = self._start(self.lab.host_command(CLIENT[0], pinned(SENDER_CPU, argv)), ready_line="go")
        cpu_start, wall_start = cpu_ns(consumer) if consumer else 0, time.perf_counter()
        out, err = sender.communicate(timeout=120)
        cpu_end, wall_end = cpu_ns(consumer) if consumer else 0, time.perf_counter()
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
        )

    def udp_series(self, label: str, consumer: int | None = None, mode: str = "cached") -> UdpResult:
        result = UdpResult(label)
        for _ in range(self.args.repeat):
            result.runs.append(self.flood(mode, consumer))
        print("  " + result.summary(), flush=True)
        return result

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

    def minimal_consumer(self, label: str, argv: list[str]) -> UdpResult:
        with self.queue_rule():
            process = self._start(self.lab.node_command(pinned(CONSUMER_CPU, argv)))
            try:
                result = self.udp_series(label, process.pid)
            finally:
                out = self._stop(process)
            result.note = out.strip().splitlines()[-1] if out.strip() else ""
        return result

    def tcp_rate(self) -> float:
        argv = [*HELPER, "tcp-connect", "--dst", SERVER[1], "--port", str(TCP_PORT), "--seconds", str(self.args.seconds)]
        processes = [self._start(self.lab.host_command(CLIENT[0], argv), ready_line=None) for _ in range(TCP_CLIENTS)]
        total = 0
        for process in processes:
            out, err = process.communicate(timeout=60)
            if process.returncode != 0:
                raise RuntimeError(f"tcp-connect failed: {err}")
            report = json.loads(out)
            total += report["connections"]
        return total / self.args.seconds

    def tcp_latency(self) -> list[float]:
        argv = [*HELPER, "tcp-latency", "--dst", SERVER[1], "--port", str(TCP_PORT), "--count", str(LATENCY_CONNECTIONS)]
        return list(json.loads(self._run(self.lab.host_command(CLIENT[0], argv), timeout=120))["microseconds"])

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


def cluster_objects(extra_policies: int) -> list[dict[str, Any]]:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}  # fmt: skip
    pods = [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"namespace": NAMESPACE, "name": name.split("/")[1], "labels": {"app": name.split("/")[1].split("-")[0]}},
         "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}  # fmt: skip
        for name, ip in (CLIENT, *SERVERS)
    ]
    return [namespace, *pods, *policies(extra_policies)]


class Agent:
    """``python -m kube_netpol run --manifests DIR`` in the node namespace, with its own table."""

    def __init__(self, bench: Bench, extra_policies: int) -> None:
        from kube_netpol.sources.manifests import objects_revision

        self.bench = bench
        self.folder = bench.workdir / f"manifests-{extra_policies}"
        self.folder.mkdir()
        self.file = self.folder / "cluster.json"
        self.extra = extra_policies
        self._revision_of = objects_revision
        self.table = f"knbench-agent-{bench.lab.lab_id}"
        revision = self.write()
        self.log = open(bench.workdir / f"agent-{extra_policies}.log", "wb")
        argv = [sys.executable, "-m", "kube_netpol", "run", "--manifests", str(self.folder),
                "--hostname-override", NODE_NAME, "--nftables-table", self.table,
                "--metrics-bind-address", f"{AGENT_STATUS[0]}:{AGENT_STATUS[1]}"]  # fmt: skip
        self.process = subprocess.Popen(
            bench.lab.node_command(pinned(CONSUMER_CPU, argv)), stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.wait_enforced(revision, AGENT_START_TIMEOUT)

    def write(self) -> str:
        objects = cluster_objects(self.extra)
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
    results: dict[str, Any] = {"udp": [], "tcp": {}}
    bench = Bench(args, workdir)
    agent: Agent | None = None
    try:
        binary = build_nfq_accept(workdir)
        print("UDP new flows per second:", flush=True)
        results["udp"].append(bench.udp_series("no queue rule (the path's ceiling)"))
        from kube_netpol.agent.verdict_loop import COPY_RANGE  # bind like the agent

        c_argv = [str(binary), str(QUEUE_NUM), str(COPY_RANGE)]
        results["udp"].append(bench.minimal_consumer("C accept-all (nfq_accept)", c_argv))
        results["udp"].append(bench.minimal_consumer("Python accept-all (NetfilterQueue)",
                                                     [*HELPER, "nfq-python", "--queue", str(QUEUE_NUM)]))  # fmt: skip
        results["queue_backend"] = bench.queue_backend
        for extra in args.policies:
            agent = Agent(bench, extra)
            try:
                before = agent.accepted()
                policies_label = f"{1 + extra} {'policy' if extra == 0 else 'policies'}"
                result = bench.udp_series(f"agent, {policies_label} selecting the servers", agent.process.pid)
                verdicts, through = agent.accepted() - before, sum(r.judged for r in result.runs)
                result.note = f"the agent counted {verdicts} accept verdicts, the servers received {through} datagrams"
                print("    " + result.note, flush=True)
                results["udp"].append(result)
                label = f"agent, {policies_label}, every flow a cache miss"
                results["udp"].append(bench.udp_series(label, agent.process.pid, mode="uncached"))
                if extra == args.policies[-1]:
                    results["tcp"]["agent"] = tcp_figures(bench, f"agent, {policies_label}")
            finally:
                agent.stop()
                agent = None
        results["tcp"]["none"] = tcp_figures(bench, "no agent")
    finally:
        if agent is not None:
            agent.stop()
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def tcp_figures(bench: Bench, label: str) -> dict[str, float]:
    server = bench._start(bench.lab.host_command(SERVER[0], [*HELPER, "tcp-server", "--port", str(TCP_PORT)]))
    try:
        rate = bench.tcp_rate()
        latency = bench.tcp_latency()
    finally:
        server.kill()
        server.wait()
    figures = {"label": label, "connections_per_s": rate, "p50_us": _percentile(latency, 0.5),
               "p99_us": _percentile(latency, 0.99), "samples": len(latency)}  # fmt: skip
    print(f"TCP, {label}: {rate:,.0f} connections/s, connect() p50 {figures['p50_us']:.0f} µs, "
          f"p99 {figures['p99_us']:.0f} µs", flush=True)  # fmt: skip
    return figures


def report(results: dict[str, Any]) -> str:
    """The figures as the Markdown tables of docs/performance.md."""
    udp: list[UdpResult] = results["udp"]
    python = next(r for r in udp if r.label.startswith("Python"))
    lines = [
        "| consumer | judged new flows/s | vs Python | offered/s | consumer CPU µs/flow | consumer busy | "
        "flows/s per CPU-second | vs Python |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in udp:
        cpu = busy = per_core = ratio = "–"
        if r.cpu_median is not None and r.busy_median is not None and python.cpu_median is not None:
            cpu, busy = f"{r.cpu_median:.2f}", f"{r.busy_median:.0%}"
            per_core, ratio = f"{1e6 / r.cpu_median:,.0f}", f"{python.cpu_median / r.cpu_median:.0%}"
        lines.append(f"| {r.label} | {r.median:,.0f} | {r.median / python.median:.0%} | {r.offered:,.0f} | "
                     f"{cpu} | {busy} | {per_core} | {ratio} |")  # fmt: skip
    tcp = results["tcp"]
    lines += ["", "| TCP | connections/s | connect() p50 µs | connect() p99 µs |", "|---|---:|---:|---:|"]
    for key, label in (("none", "no agent"), ("agent", tcp.get("agent", {}).get("label", "agent"))):
        if key in tcp:
            t = tcp[key]
            lines.append(f"| {label} | {t['connections_per_s']:,.0f} | {t['p50_us']:.0f} | {t['p99_us']:.0f} |")
    if "none" in tcp and "agent" in tcp:
        lines.append(f"\nAdded first-packet latency: p50 {tcp['agent']['p50_us'] - tcp['none']['p50_us']:.0f} µs, "
                     f"p99 {tcp['agent']['p99_us'] - tcp['none']['p99_us']:.0f} µs.")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each UDP/TCP measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per UDP figure (the median is reported)")
    parser.add_argument("--rate", type=float, default=300_000, help="datagrams per second offered")
    parser.add_argument("--policies", type=lambda t: [int(x) for x in t.split(",")], default=[0, 100, 1000],
                        help="extra policies selecting the server, besides the one admitting the client")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")

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
        serialisable = {**results, "udp": [dataclasses.asdict(r) for r in results["udp"]]}
        Path(args.json).write_text(json.dumps(serialisable, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
