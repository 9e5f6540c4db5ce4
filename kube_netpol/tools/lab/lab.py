"""Lab: pods and external hosts as network namespaces behind one node namespace.

The node netns forwards between hosts (the agent under test runs there, e.g.
started with ``lab.node_command([...])``). Every host serves TCP/UDP echo and
observes SCTP on the ports given to ``serve``; probes open one new connection
each. One process runs it all: an event loop thread owns every socket, created
inside the right namespace with setns; the caller's threads never move.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import resource
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Coroutine, Final, Iterable, Sequence, TypeVar

from kube_netpol.tools.lab import teardown
from kube_netpol.tools.lab.loop import LoopThread
from kube_netpol.tools.lab.names import DEFAULT_PREFIX, LabNames
from kube_netpol.tools.lab.netns import (
    NetnsError,
    add_netns,
    delete_netns,
    entered,
    ip_batch,
    open_netns,
    pids_in_netns,
    write_sysctl,
)
from kube_netpol.tools.lab.processes import end_processes
from kube_netpol.tools.lab.probes import Probe, SctpProber, probe_tcp, probe_udp
from kube_netpol.tools.lab.servers import PROTOCOLS, HostServers
from kube_netpol.tools.lab.timing import scaled
from kube_netpol.tools.lab.topology import (
    HOST_SYSCTLS,
    NODE_SYSCTLS,
    host_commands,
    node_commands,
    node_link_commands,
    parse_addresses,
)

#: Probe timeout in seconds when the caller gives none. Allowed traffic answers in
#: milliseconds, even through the agent's queue; blocked traffic costs exactly this.
DEFAULT_PROBE_TIMEOUT: Final = 1.0
#: Probes in flight at once (each holds one socket): a quarter of the open-files limit, at most 1024.
DEFAULT_MAX_PARALLEL: Final = max(16, min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))
_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
T = TypeVar("T")


class LabError(RuntimeError):
    """The lab could not be built or torn down."""


class LabClosed(LabError):
    """The lab was used after close() (or was closed by a signal)."""


@dataclass(frozen=True)
class LabHost:
    """A pod or external host: its own netns, ``eth0`` with ``ips``, joined to the node by ``node_ifname``."""

    name: str
    netns: str
    ips: tuple[str, ...]
    node_ifname: str
    secondary: tuple[str, ...] = ()  # addresses on secondary networks' interfaces

    def ips_of(self, version: int) -> tuple[str, ...]:
        """The host's addresses of IP version 4 or 6."""
        return tuple(ip for ip in self.ips if ipaddress.ip_address(ip).version == version)


@dataclass
class _Host:
    public: LabHost
    netns_fd: int
    servers: HostServers


@dataclass(frozen=True)
class _PlannedProbe:
    """A validated probe, with what the loop thread needs to send it."""

    protocol: str
    netns_fd: int
    family: int
    src_ip: str
    dst_ip: str
    port: int


class Lab:
    """A node netns and hosts behind it. Use as a context manager; close() always tears everything down."""

    def __init__(
        self,
        prefix: str | None = None,
        *,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        process_grace: float = 2.0,
    ) -> None:
        if probe_timeout <= 0 or max_parallel < 1:
            raise ValueError("probe_timeout must be > 0 and max_parallel >= 1")
        self._names = LabNames.new(prefix or DEFAULT_PREFIX)
        self.probe_timeout = probe_timeout
        self.process_grace = process_grace
        self._max_parallel = max_parallel
        self._lock = threading.RLock()
        self._closed = False
        self._netns: list[str] = []  # every namespace created, node first
        self._hosts: dict[str, _Host] = {}
        self._next_index = 1
        self._served: list[tuple[int, str]] = []
        self._segments: dict[str, str] = {}  # secondary network -> its segment's namespace
        self._ports = 0  # segment-side interfaces made (their names are unique per lab)
        self._sctp = SctpProber()
        self._loop: LoopThread | None = None
        teardown.register(self)
        try:
            self._loop = LoopThread(name=f"kube-netpol-lab-{self._names.lab_id}")
            node = self._names.node_netns()
            self._create_netns(node)
            self._set_sysctls(node, NODE_SYSCTLS)
            ip_batch(node, node_commands())
        except BaseException:
            self.close()
            raise

    # --- names -------------------------------------------------------------------------------

    @property
    def lab_id(self) -> str:
        return self._names.lab_id

    @property
    def node_netns(self) -> str:
        """The node namespace's name, for ``ip netns exec <node_netns> ...`` / ``ip -n <node_netns> ...``."""
        return self._names.node_netns()

    @property
    def netns_names(self) -> list[str]:
        """Every namespace this lab currently owns (node first)."""
        return list(self._netns)

    @property
    def hosts(self) -> dict[str, LabHost]:
        return {name: host.public for name, host in self._hosts.items()}

    @property
    def closed(self) -> bool:
        return self._closed

    def host(self, name: str) -> LabHost:
        return self._host(name).public

    def node_command(self, argv: Sequence[str]) -> list[str]:
        """An argument list running ``argv`` inside the node namespace."""
        return ["ip", "netns", "exec", self.node_netns, *argv]

    def host_command(self, name: str, argv: Sequence[str]) -> list[str]:
        """An argument list running ``argv`` inside a host's namespace."""
        return ["ip", "netns", "exec", self._host(name).public.netns, *argv]

    # --- building ----------------------------------------------------------------------------

    def add_network(self, network: str) -> str:
        """A secondary network: a namespace holding a bridge, which attached hosts join by a veth of their own.

        Traffic between attached hosts crosses only that bridge, never the
        node namespace, as macvlan or SR-IOV traffic does not. Returns the
        segment's namespace name.
        """
        with self._lock:
            self._check_open()
            if network in self._segments:
                raise ValueError(f"network {network!r} already exists")
            netns = self._names.segment_netns(len(self._segments) + 1)
            self._create_netns(netns)
            ip_batch(netns, [["link", "set", "lo", "up"], ["link", "add", "br0", "type", "bridge"],
                             ["link", "set", "br0", "up"]])  # fmt: skip
            self._segments[network] = netns
            return netns

    def add_host(self, name: str, ips: list[str],
                 attachments: Sequence[tuple[str, str, Sequence[str]]] = ()) -> LabHost:
        """Add a pod ("ns/pod") or external host with these IPv4/IPv6 addresses; it serves what serve() named.

        ``attachments``: (network, interface, addresses with prefix length) on
        secondary networks made by ``add_network``; the host serves on those
        addresses too.
        """
        with self._lock:
            self._check_open()
            if name in self._hosts:
                raise ValueError(f"host {name!r} already exists")
            addresses = parse_addresses(ips)
            taken = {ip: other for other, host in self._hosts.items() for ip in host.public.ips}
            for address in addresses:
                if str(address) in taken:
                    raise ValueError(f"{address} already belongs to host {taken[str(address)]!r}")
            index = self._next_index
            self._next_index += 1
            netns = self._names.host_netns(index)
            ifname = self._names.node_ifname(index)
            netns_fd = -1
            try:
                self._create_netns(netns)
                self._set_sysctls(netns, HOST_SYSCTLS)  # before eth0 exists: it copies the defaults
                ip_batch(self.node_netns, node_link_commands(ifname, netns, addresses))
                ip_batch(netns, host_commands(addresses))
                secondary = self._attach(netns, attachments)
                netns_fd = open_netns(netns)
                public = LabHost(name, netns, tuple(str(a) for a in addresses), ifname, secondary)
                host = _Host(public, netns_fd,
                             HostServers(netns_fd, public.ips + secondary, self._sctp.init_seen))
                self._hosts[name] = host
                self._call(self._serve_hosts([host], self._served))
            except BaseException:
                self._forget_host(name, netns, netns_fd, ifname)
                raise
            return host.public

    def _attach(self, netns: str, attachments: Sequence[tuple[str, str, Sequence[str]]]) -> tuple[str, ...]:
        addresses: list[str] = []
        for network, interface, interface_addresses in attachments:
            segment = self._segments.get(network)
            if segment is None:
                raise ValueError(f"no network {network!r} (add_network first)")
            self._ports += 1
            port = f"p{self._ports}"
            ip_batch(segment, [["link", "add", port, "type", "veth", "peer", "name", interface, "netns", netns],
                               ["link", "set", port, "master", "br0"], ["link", "set", port, "up"]])  # fmt: skip
            commands = []
            for text in interface_addresses:
                parsed = ipaddress.ip_interface(text)
                flags = ["nodad"] if parsed.version == 6 else []
                commands.append(["addr", "add", str(parsed), "dev", interface, *flags])
                addresses.append(str(parsed.ip))
            commands.append(["link", "set", interface, "up"])
            ip_batch(netns, commands)
        return tuple(addresses)

    def remove_host(self, name: str) -> None:
        """Remove a host: its servers stop, its namespace (and veth) is deleted."""
        with self._lock:
            self._check_open()
            host = self._host(name)
            self._forget_host(name, host.public.netns, host.netns_fd, host.public.node_ifname)

    def serve(self, ports: Iterable[tuple[int, str]]) -> None:
        """Every host, present and future, serves every (port, protocol); adds to what is served already."""
        with self._lock:
            self._check_open()
            wanted = [(_check_port(port), _check_protocol(protocol)) for port, protocol in ports]
            new = [pair for pair in dict.fromkeys(wanted) if pair not in self._served]
            self._served.extend(new)
            if new:
                self._call(self._serve_hosts(list(self._hosts.values()), new))

    @property
    def served(self) -> list[tuple[int, str]]:
        return list(self._served)

    # --- probing -----------------------------------------------------------------------------

    def probe(self, src: str, dst_ip: str, port: int, protocol: str, timeout: float | None = None) -> bool:
        """Does one new connection from host ``src`` to ``dst_ip``:``port`` get through (and back)?"""
        return self.probe_many([Probe(src, dst_ip, port, protocol)], timeout)[0]

    def probe_many(self, probes: Sequence[Probe], timeout: float | None = None) -> list[bool]:
        """Run the probes concurrently; results in the same order. Takes about ``timeout`` if any is blocked.

        The timeout is multiplied by ``KUBE_NETPOL_LAB_TIME_SCALE`` (see ``timing``).
        """
        timeout = self.probe_timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        timeout = scaled(timeout)
        with self._lock:
            self._check_open()
            planned = [self._plan(probe) for probe in probes]
        if not planned:
            return []
        rounds = -(-len(planned) // self._max_parallel)
        return self._call(self._run_probes(planned, timeout), timeout=rounds * timeout + 30.0)

    def _plan(self, probe: Probe) -> _PlannedProbe:
        host = self._host(probe.src)
        try:
            version = ipaddress.ip_address(probe.dst_ip).version
        except ValueError as error:
            raise ValueError(f"probe destination is not an IP address: {probe.dst_ip!r}") from error
        sources = host.public.ips_of(version)
        if probe.src_ip:
            if probe.src_ip not in host.public.ips + host.public.secondary:
                raise ValueError(f"host {probe.src!r} has no address {probe.src_ip}")
            sources = (probe.src_ip,)
        if not sources:
            raise ValueError(f"host {probe.src!r} has no IPv{version} address to probe {probe.dst_ip} from")
        return _PlannedProbe(
            _check_protocol(probe.protocol), host.netns_fd, _FAMILY[version], sources[0], probe.dst_ip,
            _check_port(probe.port),
        )

    async def _run_probes(self, planned: list[_PlannedProbe], timeout: float) -> list[bool]:
        limit = asyncio.Semaphore(self._max_parallel)
        senders = {"TCP": probe_tcp, "UDP": probe_udp, "SCTP": self._sctp.probe}

        async def one(plan: _PlannedProbe) -> bool:
            async with limit:
                send = senders[plan.protocol]
                return await send(plan.netns_fd, plan.family, plan.src_ip, plan.dst_ip, plan.port, timeout)

        return list(await asyncio.gather(*(one(plan) for plan in planned)))

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every server and thread, close every socket, delete every namespace. Idempotent.

        Processes still running inside the lab's namespaces (an agent started with
        ``node_command``) get SIGTERM, then SIGKILL after ``process_grace`` seconds:
        they would keep a namespace alive after its name is gone. Stop them first
        for a graceful exit.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._names.owner.pid:
                return  # a forked child: the namespaces are the parent's to delete
            errors: list[BaseException] = []
            if self._loop is not None:
                try:
                    self._loop.stop(self._close_servers)
                except BaseException as error:  # noqa: BLE001 - the namespaces must go regardless
                    errors.append(error)
            for host in self._hosts.values():
                host.servers.close_sockets()  # normally done on the loop already; a stuck loop must not leak
                _close_fd(host.netns_fd)  # an open fd would keep a deleted namespace alive
            self._hosts.clear()
            try:
                end_processes(pids_in_netns(self._netns), self.process_grace)
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
            try:
                delete_netns(self._netns)
                self._netns.clear()
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
            teardown.unregister(self)
            if errors:
                raise LabError(f"lab {self.lab_id} teardown incomplete: {errors}") from errors[0]

    def __enter__(self) -> "Lab":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._hosts)} hosts"
        return f"<Lab {self.lab_id} node={self.node_netns} {state}>"

    # --- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LabClosed(f"lab {self.lab_id} is closed")

    def _host(self, name: str) -> _Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in lab {self.lab_id}") from None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        assert self._loop is not None
        try:
            return self._loop.call(coro, timeout)
        except concurrent.futures.CancelledError:
            if self._closed:  # close() (maybe from a signal handler) cancelled the work
                raise LabClosed(f"lab {self.lab_id} was closed") from None
            raise

    def _create_netns(self, name: str) -> None:
        add_netns(name)
        self._netns.append(name)
        if self._closed:  # closed by a signal handler while `ip` ran: nobody else will delete it
            delete_netns([name])
            raise LabClosed(f"lab {self.lab_id} was closed while building")

    def _set_sysctls(self, netns: str, sysctls: Sequence[tuple[str, str]]) -> None:
        fd = open_netns(netns)
        try:
            self._call(_write_sysctls(fd, sysctls))
        finally:
            os.close(fd)

    def _forget_host(self, name: str, netns: str, netns_fd: int, ifname: str) -> None:
        host = self._hosts.pop(name, None)
        try:
            if host is not None and self._loop is not None and not self._closed:
                self._call(host.servers.close())
        finally:
            _close_fd(netns_fd)
            end_processes(pids_in_netns([netns]), self.process_grace)
            # Deleting the veth now takes its node routes with it at once; a deleted namespace's
            # interfaces go only later (the kernel cleans namespaces up asynchronously), and until
            # then re-adding the same address would find its route still there.
            try:
                ip_batch(self.node_netns, [["link", "del", ifname]])
            except NetnsError:
                pass  # not created yet
            if netns in self._netns:
                delete_netns([netns])
                self._netns.remove(netns)

    async def _serve_hosts(self, hosts: list[_Host], ports: list[tuple[int, str]]) -> None:
        for host in hosts:
            for port, protocol in ports:
                await host.servers.serve(port, protocol)

    async def _close_servers(self) -> None:
        for host in self._hosts.values():
            await host.servers.close()


async def _write_sysctls(netns_fd: int, sysctls: Sequence[tuple[str, str]]) -> None:
    with entered(netns_fd):
        for key, value in sysctls:
            write_sysctl(key, value)


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be a number 1-65535: {port!r}")
    return port


def _check_protocol(protocol: str) -> str:
    name = protocol.upper()
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}: {protocol!r}")
    return name


def _close_fd(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
