"""Changing the managed sets while traffic flows between pods that stay allowed loses nothing."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

from e2e_agentlab import agent_lab, allow_ingress_from_pod, deny_ingress, requires_root

pytestmark = requires_root

PODS = {
    "x/a": ["10.244.1.10"],
    "x/b": ["10.244.1.11"],
    "y/a": ["10.244.2.10"],
    "y/b": ["10.244.2.11"],
    "z/a": ["10.244.3.10"],
    "z/b": ["10.244.3.11"],
}
KEEP = allow_ingress_from_pod("x", "b", "a")  # x/a -> x/b stays allowed throughout; x/b is always managed
#: Policy sets cycled through: y's and z's pods enter and leave the managed sets.
CHANGES = [
    [KEEP, deny_ingress("y")],
    [KEEP, deny_ingress("y"), deny_ingress("z", "a")],
    [KEEP, deny_ingress("z", "a")],
    [KEEP, deny_ingress("z")],
    [KEEP],
    [KEEP, deny_ingress("y", "b"), deny_ingress("z", "b")],
]
ROUNDS = 2


def managed_v4(env) -> set[str]:  # type: ignore[no-untyped-def]
    listing = json.loads(env.node(["nft", "-j", "list", "set", "inet", env.agent.table, "managed-v4"]).stdout)
    elements = next(o["set"] for o in listing["nftables"] if "set" in o).get("elem", [])
    return set(elements)


def test_set_updates_drop_no_packet_of_allowed_traffic() -> None:
    with agent_lab(PODS, policies=[KEEP]) as env:
        assert env.probe_many([("x/a", "x/b"), ("y/a", "x/b")]) == [True, False]
        stop = threading.Event()

        # One long UDP flow (established: must survive every change and strict-mode pass) ...
        stream = env.host_socket("x/a", socket.AF_INET, socket.SOCK_DGRAM)
        stream.bind((env.ip("x/a"), 0))
        stream.connect((env.ip("x/b"), 80))
        stream.settimeout(0.5)
        sent: list[int] = []
        echoed: set[int] = set()

        def send() -> None:
            number = 0
            while not stop.is_set():
                stream.send(struct.pack("!I", number) + b"kube-netpol-e2e")
                sent.append(number)
                number += 1
                time.sleep(0.001)

        def receive() -> None:
            while True:
                try:
                    echoed.add(struct.unpack("!I", stream.recv(64)[:4])[0])
                except TimeoutError:
                    if stop.is_set():
                        return

        # ... and a stream of new connections (each judged in userspace while the sets change).
        new_connections: list[tuple[str, bool]] = []

        def connect() -> None:
            while not stop.is_set():
                for protocol in ("TCP", "UDP"):
                    new_connections.append((protocol, env.probe("x/a", "x/b", protocol=protocol, timeout=1.0)))

        threads = [threading.Thread(target=f, daemon=True) for f in (send, receive, connect)]
        for thread in threads:
            thread.start()
        try:
            seen_managed = set()
            for _ in range(ROUNDS):
                for policies in CHANGES:
                    env.apply(*policies)
                    seen_managed.add(frozenset(managed_v4(env)))
                    time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)
            stream.close()

        # The sets really changed underneath the traffic: y's and z's pods came and went.
        assert len(seen_managed) >= 5
        assert all(env.ip("x/b") in managed for managed in seen_managed)
        print(f"sent {len(sent)}, new connections {len(new_connections)}, managed sets {len(seen_managed)}")
        assert len(sent) > 500
        lost = sorted(set(sent) - echoed)
        assert not lost, f"{len(lost)} of {len(sent)} datagrams lost, first {lost[:10]}"
        failed = [protocol for protocol, ok in new_connections if not ok]
        assert len(new_connections) > 20
        assert not failed, f"{len(failed)} of {len(new_connections)} new connections failed: {failed[:10]}"
        # And the changes were enforced: the last policy set isolates y/b.
        assert env.probe_many([("x/a", "y/b"), ("x/a", "y/a")]) == [False, True]
