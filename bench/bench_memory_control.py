#!/usr/bin/env python3
"""What the kernel's verdict memory costs the agent's control plane, by how many keys it holds.

libnftables (Debian's 1.0.6, which pip-nftables drives) reads every set's
elements into its cache before it lists rules or counters of a table, terse
or not, and a ``list counter`` reads those of every table. The verdict
memory's sets hold up to ``MEMORY_SIZE`` keys, so each operation of the agent
that lists something pays for reading them. Measured here, in a network
namespace of its own (removed at the end), with the real ``Dataplane`` (xt
backend, memory on), for each fill level of ``remembered-accept-v4``:

- ``check``: the guard's read-back (every 5 s, and after any nftables change);
- ``remembered_verdicts``: the two counter reads of a metrics scrape;
- ``sync``: a new snapshot (one managed address added; it flushes the memory);
- ``forget_remembered``: the flush when the flow table fills, with and
  without a listener on the nftables notification group (the guard's
  monitor): the kernel sends the listener one message per flushed element;
- the kernel memory the keys take: ``Slab`` of /proc/meminfo with the keys
  in the set, less with the set emptied (the whole machine's slab: other
  activity adds noise of a few hundred KiB).

    python bench/bench_memory_control.py [--keys 0,1024,8192,65536] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from typing import Callable

from kube_netpol.dataplane import Dataplane, DataplaneConfig
from kube_netpol.dataplane.monitor import NftablesMonitor
from kube_netpol.tools.lab.netns import add_netns, delete_netns

SET = "remembered-accept-v4"


def fill(table: str, keys: int) -> None:
    """``keys`` distinct elements, as the remember chain adds them (the set's own timeout)."""
    if not keys:
        return
    lines = "\n".join(
        f"add element inet {table} {SET} {{ 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . 10.255.0.1 . udp . 53 }}"
        for i in range(keys)
    )
    subprocess.run(["nft", "-f", "-"], input=lines, text=True, check=True, timeout=120)


def slab_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("Slab:"))


def best_ms(action: Callable[[], object], before: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def measure(table: str, levels: list[int], repeat: int) -> None:
    """In the namespace made for it (this process runs under ``ip netns exec``)."""
    dataplane = Dataplane(DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True))
    dataplane.start(["10.0.0.1"], [])
    managed = ["10.0.0.1"]
    generation = [0]

    def grow() -> None:
        managed.append(f"10.0.{len(managed) // 256}.{len(managed) % 256}")
        generation[0] += 1
        dataplane.sync(managed, [], False, generation[0])

    print("| keys in the memory | check ms | scrape's counter reads ms | sync (new snapshot) ms "
          "| flush ms | flush with a listener ms | kernel memory of the keys MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for keys in levels:
        refill = functools.partial(fill, table, keys)
        same = lambda: None  # noqa: E731
        refill()
        check = best_ms(dataplane.check, same, repeat)
        counters = best_ms(dataplane.remembered_verdicts, same, repeat)
        sync = best_ms(grow, refill, repeat)
        flush = best_ms(dataplane.forget_remembered, refill, repeat)
        with NftablesMonitor() as monitor:
            listened = best_ms(dataplane.forget_remembered, refill, repeat)
            monitor.wait(0)
        refill()
        filled = slab_kib()
        dataplane.forget_remembered()
        time.sleep(1)  # deleted elements are freed after an RCU grace period
        kernel_mib = (filled - slab_kib()) / 1024
        print(f"| {keys:,} | {check:.1f} | {counters:.1f} | {sync:.1f} | {flush:.1f} | {listened:.1f} | {kernel_mib:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="0,1024,8192,65536")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inside", metavar="TABLE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(k) for k in args.keys.split(",")]
    if args.inside:
        measure(args.inside, levels, args.repeat)
        return
    netns = f"knbench-mem-{os.getpid()}"
    add_netns(netns)
    try:
        argv = [sys.executable, __file__, "--keys", args.keys, "--repeat", str(args.repeat),
                "--inside", f"knbench_mem_{os.getpid()}"]  # fmt: skip
        subprocess.run(["ip", "netns", "exec", netns, *argv], check=True)
    finally:
        delete_netns([netns])  # with the table and the xt rules in it


if __name__ == "__main__":
    main()
