"""Helpers of the observability end-to-end tests: scraping /metrics, counted traffic, decision records.

Traffic here is made with our own sockets rather than the lab's probes, so
that a test knows exactly how many packets reached the queue: only the packets
of a connection sent before its first reply are in conntrack state "new", and
only those are queued. A TCP attempt therefore queues one packet per SYN it
sent (the kernel's TCP_INFO says how many it retransmitted), and a UDP exchange
made of one datagram queues one packet.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

from e2e_agentlab import AgentLab

from kube_netpol.tools.testing.metrics_text import parse_metrics

PREFIX = "kube_network_policies_"
#: Offset of ``tcpi_total_retrans`` in Linux's ``struct tcp_info`` (stable ABI since 2.6).
TCPI_TOTAL_RETRANS_OFFSET = 100
TCP_INFO_SIZE = 104
DECISIONS_LOGGER = "kube_netpol.decisions"

T = TypeVar("T")


# --------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricFamily:
    name: str
    type: str
    samples: tuple[tuple[str, dict[str, str], float], ...]

    @property
    def label_names(self) -> frozenset[str]:
        """Label names of the family's series, without the histogram's ``le`` and summary's ``quantile``."""
        return frozenset(name for _, labels, _ in self.samples for name in labels) - {"le", "quantile"}


class Metrics:
    """One scrape of /metrics, names and types as written (what Prometheus stores)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, MetricFamily] = {}
        for family in parse_metrics(text).values():
            self.families[family.name] = MetricFamily(
                family.name, family.type, tuple((s.name, s.labels, s.value) for s in family.samples)
            )

    def ours(self) -> dict[str, MetricFamily]:
        """The agent's own families (the ``kube_network_policies_`` ones), by name without the prefix."""
        return {name[len(PREFIX):]: family for name, family in self.families.items() if name.startswith(PREFIX)}

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``PREFIX + name`` (e.g. ``packet_process_time_count``), with its labels."""
        full = PREFIX + name
        return [(labels, value) for family in self.families.values()
                for sample_name, labels, value in family.samples if sample_name == full]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when the agent does not export it."""
        for sample_labels, value in self.series(name):
            if sample_labels == labels:
                return value
        return None

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples whose labels include ``labels`` (0 when there are none)."""
        return sum(value for sample_labels, value in self.series(name)
                   if all(sample_labels.get(k) == v for k, v in labels.items()))


def scrape(env: AgentLab) -> Metrics:
    """/metrics of the agent, fetched from inside the node namespace."""
    return Metrics(env.agent.metrics())


# --------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Attempt:
    """One new connection: did it get through, and how many of its packets were queued (judged)."""

    src: str
    dst: str
    protocol: str
    family: str
    src_port: int
    dst_port: int
    connected: bool
    queued: int


def _family(version: int) -> tuple[int, str]:
    return (socket.AF_INET, "IPv4") if version == 4 else (socket.AF_INET6, "IPv6")


def syns_sent(sock: socket.socket) -> int:
    """SYNs a connecting (or just connected) TCP socket sent: the first plus its retransmissions."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    (retransmitted,) = struct.unpack_from("=I", info, TCPI_TOTAL_RETRANS_OFFSET)
    return 1 + retransmitted


def tcp_connect(env: AgentLab, src: str, dst: str, *, port: int = 80, version: int = 4,
                timeout: float = 0.5, keep_open: bool = False) -> tuple[Attempt, socket.socket | None]:
    """Connect ``src`` to ``dst`` and exchange an echo; a blocked attempt lasts ``timeout`` seconds.

    A SYN the agent drops is retransmitted after one second (then 2, 4 ... s), and
    every retransmission is a new queued packet: a timeout above 1 s gives two.
    With ``keep_open`` the connected socket is returned open (the caller closes it).
    """
    family, family_name = _family(version)
    sock = env.host_socket(src, family, socket.SOCK_STREAM)
    try:
        sock.bind((env.ip(src, version), 0))
        src_port = sock.getsockname()[1]
        sock.settimeout(timeout)
        try:
            sock.connect((env.ip(dst, version), port))
            connected = True
        except OSError:
            connected = False
        # Read before sending data: from here on retransmissions would be data, not SYNs.
        queued = syns_sent(sock)
        if connected:
            connected = echo(sock, b"kube-netpol-observe")
        attempt = Attempt(src, dst, "TCP", family_name, src_port, port, connected, queued)
        if keep_open and connected:
            return attempt, sock
        sock.close()
        return attempt, None
    except BaseException:
        sock.close()
        raise


def echo(sock: socket.socket, payload: bytes) -> bool:
    """Send ``payload`` on a connected TCP socket; True when the peer echoes it back."""
    try:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(len(payload) - len(received))
            if not chunk:
                return False
            received += chunk
        return received == payload
    except OSError:
        return False


def udp_exchange(env: AgentLab, src: str, dst: str, *, port: int = 80, version: int = 4,
                 timeout: float = 0.5) -> Attempt:
    """One datagram from ``src`` to ``dst`` (never resent: exactly one queued packet); did its echo come back?"""
    family, family_name = _family(version)
    sock = env.host_socket(src, family, socket.SOCK_DGRAM)
    try:
        sock.bind((env.ip(src, version), 0))
        src_port = sock.getsockname()[1]
        sock.connect((env.ip(dst, version), port))
        payload = b"kube-netpol-observe-udp"
        sock.settimeout(timeout)
        sock.send(payload)
        try:
            answered = sock.recv(2048) == payload
        except OSError:
            answered = False
        return Attempt(src, dst, "UDP", family_name, src_port, port, answered, 1)
    finally:
        sock.close()


def udp_flood(env: AgentLab, src: str, dst: str, ports: Iterable[int], *, version: int = 4) -> int:
    """One datagram from one socket of ``src`` to each of ``ports`` of ``dst``: a new flow each. Returns how many."""
    family, _ = _family(version)
    sock = env.host_socket(src, family, socket.SOCK_DGRAM)
    sent = 0
    try:
        sock.bind((env.ip(src, version), 0))
        destination = env.ip(dst, version)
        for port in ports:
            sock.sendto(b"flood", (destination, port))
            sent += 1
    finally:
        sock.close()
    return sent


# ------------------------------------------------------------ decision records


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among ``text``'s lines (the agent's text log lines are skipped)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def decision_records(text: str) -> list[dict[str, Any]]:
    """Records of judged connections (not the "suppressed K records" summaries)."""
    return [r for r in json_lines(text) if r.get("logger") == DECISIONS_LOGGER and "verdict" in r]


def suppression_summaries(text: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(text) if r.get("logger") == DECISIONS_LOGGER and "suppressed" in r]


def records_of(records: Iterable[Mapping[str, Any]], attempt: Attempt) -> list[Mapping[str, Any]]:
    """The records of one attempt's queued packets (matched by pods, family, protocol and ports)."""
    return [r for r in records if (r.get("src"), r.get("dst")) == (attempt.src, attempt.dst)
            and r.get("protocol") == attempt.protocol and r.get("family") == attempt.family
            and r.get("src_port") == attempt.src_port and r.get("dst_port") == attempt.dst_port]


def wait_for(produce: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0,
             interval: float = 0.05) -> T:
    """Call ``produce`` until ``done`` accepts its result; the last result, accepted or not, after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
