#!/usr/bin/env python3
"""The cost of one /proc scan of the cgroup lookup (--pod-netns-lookup=cgroup) on this machine.

Reads every process's cgroup file under --proc (as the agent does when a pod's
namespace is not cached) --rounds times and prints the median and worst scan
time with the number of processes read. Optionally --extra N sleeping
processes are started first (in the host's cgroup and namespace: read, never
matched) to see how the scan grows with the process count. No root needed for
the scan itself.

Usage: python bench/bench_podnetns_scan.py [--rounds 20] [--extra 0] [--proc /proc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess

from kube_netpol.agent.podnetns import CgroupLocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--extra", type=int, default=0, help="start this many sleeping processes first")
    parser.add_argument("--proc", default="/proc")
    args = parser.parse_args()
    extra = [subprocess.Popen(["sleep", "300"]) for _ in range(args.extra)]
    try:
        locator = CgroupLocator(args.proc)
        times = []
        for _ in range(args.rounds):
            locator.scan()
            times.append(locator.last_scan_seconds * 1000)
        print(f"processes read per scan: {locator.last_scan_processes}; load {os.getloadavg()[0]:.2f}")
        print(f"scan: median {statistics.median(times):.2f} ms, max {max(times):.2f} ms over {args.rounds} rounds")
    finally:
        for process in extra:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
