"""The lab's DNS server (format v2, "externals[].dnsNames"): dnsmasq on a host outside the cluster.

It answers every external's ``dnsNames`` with the addresses of the externals
that list the name (A or AAAA, TTL 300 s), at 10.96.0.10 and, in a dual-stack
cluster, fd00:10:96::10, port 53/UDP. ``resolve`` sends a real query from a
pod's namespace and waits for the answer; a query the policies block times
out (the agent then never sees an answer, so learns nothing).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import socket
import subprocess
import time
from typing import Sequence

from kube_netpol.tools.conformance.cluster import ClusterSnapshot
from kube_netpol.tools.conformance.offline import LAB_DNS_TTL
from kube_netpol.tools.conformance.probes import DNS_SERVER
from kube_netpol.tools.lab import Lab
from kube_netpol.tools.lab.dnswire import TYPE_A, TYPE_AAAA, query
from kube_netpol.tools.lab.netns import open_netns, socket_in

HOST = "lab-dns-server"
SENDS = 2


def zone(cluster: ClusterSnapshot) -> dict[str, list[str]]:
    """Name -> the addresses (every family) of the externals that list it."""
    names: dict[str, list[str]] = {}
    for external in cluster.externals:
        for name in external.dns_names:
            names.setdefault(name, []).extend(external.ips.values())
    return names


class LabDns:
    """dnsmasq in its own host of ``lab``; ``close`` stops it (the lab removes the host)."""

    def __init__(self, lab: Lab, cluster: ClusterSnapshot, timeout: float) -> None:
        self.lab = lab
        self.timeout = timeout
        ips = [DNS_SERVER["IPv4"]] + ([DNS_SERVER["IPv6"]] if "IPv6" in cluster.families else [])
        lab.add_host(HOST, ips)
        # One record per address: dnsmasq keeps one address per family of a --host-record, but adds up records.
        records = [f"--host-record={name},{address}" for name, addresses in sorted(zone(cluster).items())
                   for address in addresses]
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--user=root", "--pid-file=", f"--local-ttl={LAB_DNS_TTL}", *records]
        self._workers = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="lab-dns")  # they enter namespaces
        self._server = subprocess.Popen(lab.host_command(HOST, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready(ips)

    def _wait_ready(self, ips: Sequence[str]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                error = self._server.stderr.read().decode(errors="replace") if self._server.stderr else ""
                raise RuntimeError(f"the lab's DNS server (dnsmasq) exited: {error.strip()}")
            if all(self._workers.submit(self._ask, HOST, ip, "ready.invalid", TYPE_A, 0.2).result() for ip in ips):
                return
        raise RuntimeError("the lab's DNS server (dnsmasq) did not answer within 10 s")

    def resolve_many(self, lookups: Sequence[tuple[str, str, str]]) -> list[bool]:
        """(source host, name, family) each: did an answer come back?"""
        futures = [self._workers.submit(self._ask, src, DNS_SERVER[family], name,
                                        TYPE_A if family == "IPv4" else TYPE_AAAA, self.timeout)
                   for src, name, family in lookups]
        return [future.result() for future in futures]

    def _ask(self, src: str, server: str, name: str, qtype: int, timeout: float) -> bool:
        family = socket.AF_INET if ipaddress.ip_address(server).version == 4 else socket.AF_INET6
        fd = open_netns(self.lab.host(src).netns)
        try:
            sock = socket_in(fd, family, socket.SOCK_DGRAM)  # this worker thread only enters the namespace
        finally:
            os.close(fd)
        try:
            sock.setblocking(True)
            sock.settimeout(timeout / SENDS)
            ident = int.from_bytes(os.urandom(2), "big")
            message = query(name, qtype, ident)
            for _ in range(SENDS):
                sock.sendto(message, (server, 53))
                try:
                    answer = sock.recv(4096)
                except (TimeoutError, OSError):
                    continue
                if answer[:2] == message[:2]:
                    return True
            return False
        finally:
            sock.close()

    def close(self) -> None:
        self._workers.shutdown()
        if self._server.poll() is None:
            self._server.terminate()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
