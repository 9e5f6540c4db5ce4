"""Send new UDP flows as fast as one process can for a while; run inside a pod's namespace.

    python e2e_new_flow_flood.py SRC DST SECONDS

Every datagram has a source port of its own, so each is a new conntrack
entry: the first packet of a new flow, which the agent's ruleset sends to the
queue. A raw socket (IPPROTO_RAW, the header is ours; the kernel fills in the
length, id and checksum) keeps the cost per packet to one sendto. Prints a
JSON line: datagrams sent, send errors, seconds.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

PORT = 9  # discard: nothing answers, nothing needs to


def main(argv: list[str]) -> int:
    src, dst, seconds = argv[1], argv[2], float(argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    packet = bytearray(ip + struct.pack("!HHHH", 0, PORT, 8 + 5, 0) + b"flood")
    view = memoryview(packet)
    sports = [struct.pack("!H", p) for p in range(1024, 65536)]
    address = (dst, 0)
    sent = errors = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for sport in sports[(sent % len(sports)):][:256]:
            view[20:22] = sport
            try:
                sock.sendto(view, address)
            except OSError:
                errors += 1
            sent += 1
    print(json.dumps({"sent": sent, "errors": errors, "seconds": time.perf_counter() - started}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
