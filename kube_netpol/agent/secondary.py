"""Secondary networks on this node: rules and queue readers inside attached pods' namespaces.

The control thread calls ``sync()`` after each publication: for every pod
the snapshot wants diverted (``Snapshot.network_attachments``) it finds the
pod's namespace (``kube_netpol.agent.podnetns``), opens it and keeps the file
descriptor (every later step goes through that descriptor, so a reused PID
or a recreated namespace can never redirect it), binds one queue per
diverted interface from inside it, then installs the chain
(``kube_netpol.dataplane.secondary``); pods no longer wanted lose all three.
``sync(recheck=True)``, run every few seconds, also asks the locator again
for every installed pod and moves a pod whose namespace changed (its sandbox
recreated). One reader thread serves every bound queue: each packet is judged
with the engine's current snapshot on the interface's network (``judge_on``).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kube_netpol.api.cluster import PodKey
from kube_netpol.agent.podnetns import Identity, PodNetnsLocator, identity_of
from kube_netpol.api.packet import Packet
from kube_netpol.dataplane import conntrack
from kube_netpol.dataplane.netns import run_in_netns
from kube_netpol.dataplane.secondary import Diverted, SecondaryRules, check_interface
from kube_netpol.engine import PolicyEngine
from kube_netpol.packet import parse_packet

log = logging.getLogger(__name__)

COPY_RANGE = 4016
MAX_QUEUE_LEN = 1024
Interfaces = tuple[tuple[str, str], ...]


@dataclass
class _Installed:
    fd: int  # the pod's namespace, held open while installed
    identity: Identity
    interfaces: Interfaces
    queues: list[Any]  # NetfilterQueue objects bound in the pod's namespace

    @property
    def netns(self) -> str:
        """A path to exactly this namespace, for ``setns`` and ``nsenter`` (the descriptor, by /proc)."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"


class SecondaryNetworks:
    def __init__(self, engine: PolicyEngine[Any], locator: PodNetnsLocator | None, queue_base: int,
                 fail_open: bool, audit: bool = False, rules: SecondaryRules | None = None) -> None:
        self.engine = engine
        self.locator = locator
        self.queue_base = queue_base
        self.fail_open = fail_open
        self.audit = audit
        self.rules = rules or SecondaryRules()
        self.errors = 0
        self._installed: dict[PodKey, _Installed] = {}
        self._lock = threading.Lock()  # the reader's set of queues vs the control thread's changes
        self._generation = 0
        self._warned: set[PodKey] = set()
        #: How many times a pod was set up (strict mode judges what was established before: controller.py).
        self.installs = 0
        #: Pods wanted whose namespace is not found (for /statusz; replaced whole, read from other threads).
        self.not_found: frozenset[PodKey] = frozenset()

    @property
    def installed(self) -> Mapping[PodKey, _Installed]:
        return self._installed

    # ------------------------------------------------------------------ control thread

    def sync(self, recheck: bool = False) -> bool:
        """Follow the current snapshot; False when some pod could not be set up yet (retry later).

        ``recheck``: also look up every installed pod's namespace again and move
        the pods whose namespace changed."""
        snapshot = self.engine.snapshot
        wanted = snapshot.network_attachments()
        ok = True
        for key in [k for k in self._installed if k not in wanted]:
            self._remove(key)
        not_found = set(self.not_found).intersection(wanted)
        self._warned.intersection_update(wanted)  # a pod that comes back is said again
        for key, interfaces in wanted.items():
            present = self._installed.get(key)
            if present is not None and present.interfaces == interfaces and not recheck:
                continue
            pod = self.engine.state.pod(key)
            netns = self.locator.path(pod) if pod is not None and self.locator is not None else None
            if netns is None:
                if present is not None and present.interfaces == interfaces:
                    continue  # not visible now (no process, say): what is installed stays until it changes
                not_found.add(key)
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("pod %s/%s: its network namespace is not found (%s); its secondary interfaces "
                                "are not enforced until it is", key[0], key[1],
                                "no locator" if self.locator is None or pod is None else self.locator.describe(pod))
                ok = False
                continue
            if present is not None and present.interfaces == interfaces:
                if identity_of(netns) in (present.identity, None):
                    continue
                log.warning("pod %s/%s: its network namespace changed (sandbox recreated?); moving its "
                            "secondary-network rules to the new one", *key)
            if present is not None:
                self._remove(key)
            try:
                self._install(key, netns, interfaces)
                self._warned.discard(key)
                not_found.discard(key)
            except Exception:  # noqa: BLE001 - one pod's failure must not stop the others
                log.exception("pod %s/%s: installing its secondary-network rules failed; retrying", *key)
                ok = False
        self.not_found = frozenset(not_found)
        return ok

    def _install(self, key: PodKey, path: str, interfaces: Interfaces) -> None:
        diverted = [Diverted(check_interface(interface), self.queue_base + i)
                    for i, (interface, _network) in enumerate(interfaces, start=1)]  # fmt: skip
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        installed = _Installed(fd, (st.st_dev, st.st_ino), interfaces, [])
        try:
            for item, (_interface, network) in zip(diverted, interfaces):
                installed.queues.append(run_in_netns(installed.netns, _binder(item.queue_num, self._handler(network))))
            with self._lock:
                self._installed[key] = installed
                self._generation += 1
            # Queues first, then the rules that divert to them (fail-closed must not drop meanwhile).
            self.rules.install(installed.netns, diverted, bypass=self.fail_open)
            self.installs += 1
        except BaseException:
            with self._lock:
                self._installed.pop(key, None)
                self._generation += 1
            for queue in installed.queues:
                _unbind(queue)
            os.close(fd)
            raise
        log.info("pod %s/%s: secondary interfaces %s diverted", key[0], key[1],
                 ", ".join(f"{i} ({n})" for i, n in interfaces))

    def _remove(self, key: PodKey, keep_rules: bool = False) -> None:
        with self._lock:
            installed = self._installed.pop(key, None)
            self._generation += 1
        if installed is None:
            return
        if not keep_rules:
            try:
                self.rules.remove(installed.netns)
            except Exception:  # noqa: BLE001
                log.exception("pod %s/%s: removing its secondary-network rules failed", *key)
        for queue in installed.queues:
            _unbind(queue)
        os.close(installed.fd)

    def stop(self) -> None:
        """Fail-open keeps the rules (they bypass the unbound queues); fail-closed removes them."""
        for key in list(self._installed):
            self._remove(key, keep_rules=self.fail_open)

    def cleanup(self) -> None:
        """Remove everything installed (the agent's cleanup)."""
        for key in list(self._installed):
            self._remove(key)

    # ------------------------------------------------------------------ strict mode

    def enforce_strict(self) -> int:
        """Cut the connections on diverted interfaces that the current policies deny (conntrack in each pod's
        namespace, judged on the interface's network). Returns how many entries were deleted."""
        removed = 0
        for key, installed in list(self._installed.items()):
            try:
                removed += run_in_netns(installed.netns, functools.partial(self._strict_pass, installed))
            except Exception:  # noqa: BLE001 - strict mode must never stop the control thread
                log.exception("strict mode: pod %s/%s's secondary networks could not be checked", *key)
        return removed

    def _strict_pass(self, installed: _Installed) -> int:
        """Inside the pod's namespace (a thread that entered it)."""
        networks: dict[bytes, str] = {}
        for interface, network in installed.interfaces:
            for address in interface_addresses(interface):
                networks[address] = network
        if not networks:
            return 0
        snapshot = self.engine.snapshot

        def allowed(entry: conntrack.Entry) -> bool:
            network = networks.get(entry.src) or networks.get(entry.dst) or ""
            packet = Packet(entry.family, entry.protocol, entry.src, entry.dst, entry.sport, entry.dport)
            try:
                return snapshot.judge_on(network, packet).allowed or self.audit
            except Exception:  # noqa: BLE001 - fail-open/closed applies to re-judging too
                return self.fail_open

        with conntrack.Conntrack() as ct:
            denied = conntrack.select_denied(ct.dump(live_only=True), networks.__contains__, allowed)
            return ct.delete(denied) if denied else 0

    # ------------------------------------------------------------------ packet thread

    def _handler(self, network: str) -> Callable[[Any], None]:
        engine = self.engine
        fail_open = self.fail_open
        audit = self.audit

        def handle(queued: Any) -> None:
            try:
                packet = parse_packet(queued.get_payload())
                allowed = engine.snapshot.judge_on(network, packet).allowed or audit
            except Exception:  # noqa: BLE001 - a bad packet must never end the loop
                self.errors += 1
                allowed = fail_open
            if allowed:
                queued.accept()
            else:
                queued.drop()

        return handle

    def run(self, stop: threading.Event, poll_interval: float = 0.05) -> None:
        """Serve every bound queue until ``stop`` is set."""
        generation = -1
        poller = select.poll()
        by_fd: dict[int, Any] = {}
        while not stop.is_set():
            with self._lock:
                if generation != self._generation:
                    generation = self._generation
                    for fd in by_fd:
                        poller.unregister(fd)
                    by_fd = {q.get_fd(): q for installed in self._installed.values() for q in installed.queues}
                    for fd in by_fd:
                        poller.register(fd, select.POLLIN)
            if not by_fd:
                stop.wait(poll_interval)
                continue
            ready = poller.poll(poll_interval * 1000)
            with self._lock:
                if generation != self._generation:
                    continue  # a queue may have been unbound meanwhile
                for fd, _ in ready:
                    by_fd[fd].run(block=False)


def _binder(queue_num: int, handler: Callable[[Any], None]) -> Callable[[], Any]:
    def bind() -> Any:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        queue = NetfilterQueue()
        queue.bind(queue_num, handler, max_len=MAX_QUEUE_LEN, mode=COPY_PACKET, range=COPY_RANGE)
        return queue

    return bind


def _unbind(queue: Any) -> None:
    try:
        queue.unbind()
    except Exception:  # noqa: BLE001 - the namespace may be gone already
        pass


_SIOCGIFADDR = 0x8915


def interface_addresses(interface: str) -> list[bytes]:
    """The packed IPv4 (primary) and IPv6 addresses of an interface of the calling thread's namespace."""
    found: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
            found.append(answer[20:24])
        except OSError:
            pass  # no IPv4 address
    try:
        # thread-self: /proc/net would be the main thread's namespace.
        with open("/proc/thread-self/net/if_inet6") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 6 and fields[5] == interface:
                    found.append(bytes.fromhex(fields[0]))
    except OSError:
        pass
    return found
