#!/usr/bin/env python3
"""What the agent's table costs a packet the kernel answers itself, base chain by base chain.

A repeat key with the verdict memory on never reaches the agent: its cost is
the kernel's path through the node namespace, which the sender's CPU carries
(bench/bench_dataplane.py, "the path's CPU"). This bench measures that cost
for the table as the agent makes it, and for the same table with one base
chain after another removed, against the two ceilings (no table; one
conntrack rule). Run as root::

    python bench/bench_kernel_path.py [--rounds 4] [--seconds 2]

Method: the lab and the UDP load of bench/bench_dataplane.py (``cached``
mode: 128 keys, every datagram a new conntrack flow). Each round measures,
in this order, one run each:

- ``agent, workaround on``: the agent (memory on, 11 policies) with
  ``--netfilter-bug-1766-fix=true``, after one warm-up run that lets the
  kernel remember the keys;
- ``... without the remember chain``: the same table with its remember chain
  deleted (the agent is stopped with SIGSTOP first, so that its guard does
  not put the chain back; no packet of the load reaches the queue);
- ``... without our prerouting chain``: also without the workaround's chain
  (what ``--netfilter-bug-1766-fix=false`` leaves of the xt backend but
  the iptables rule);
- ``... without iptables' mangle PREROUTING rule``;
- ``agent, auto``: a new agent with the default (on this kernel: the
  workaround on before 6.12, off from 6.12), warmed up the same way;
- ``conntrack on`` and ``no table``: the ceilings.

In the rows of the agent with the workaround on, the agent with auto and
the two ceilings, the bench also times 2,000 sequential TCP connections
(bench/bench_dataplane.py's connect() latency, 1 ms apart, to one server
port): with the agent, the key is remembered after its first SYN, so the
figure is a cached key's. Interleaved with the ceilings round by round, the
p50 differences are less at the mercy of the machine's drift than one run
of each.

The rows are interleaved by round, so slow drift of the machine shows in
every row alike. Reported: the median of the rounds, and the fastest run of
each row (sender CPU per flow, µs: what else runs on the machine only adds
to it, so the fastest run is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dataplane as bd  # noqa: E402  (the lab, the load and the agent of the dataplane bench)

WORKAROUND_ON = "agent, workaround on"
NO_REMEMBER = "... without the remember chain"
NO_PREROUTING = "... without our prerouting chain"
NO_XT_PREROUTING = "... without iptables' mangle PREROUTING rule"
AUTO = "agent, auto"
CT_ON = "conntrack on"
NO_TABLE = "no table"
ROWS = (WORKAROUND_ON, NO_REMEMBER, NO_PREROUTING, NO_XT_PREROUTING, AUTO, CT_ON, NO_TABLE)
#: The rows whose TCP connect() latency is measured too (a cached key: the kernel answers every SYN).
LATENCY_ROWS = (WORKAROUND_ON, AUTO, CT_ON, NO_TABLE)


class KernelPath:
    def __init__(self, args: argparse.Namespace) -> None:
        bench_args = argparse.Namespace(seconds=args.seconds, repeat=1, rate=args.rate, quiet_wait=args.quiet_wait,
                                        retries=0, max_disturbance=1.0)  # fmt: skip
        self.bench = bd.Bench(bench_args, Path(tempfile.mkdtemp(prefix="kube-netpol-bench-path-")))
        self.policies = args.policies
        self.runs: dict[str, list[bd.Flood]] = {row: [] for row in ROWS}
        self.connects: dict[str, list[list[float]]] = {row: [] for row in LATENCY_ROWS}
        self.tcp_server = self.bench.start_tcp_server()

    def measure(self, row: str) -> None:
        self.bench.wait_quiet()
        flood = self.bench.flood("cached", None)
        self.runs[row].append(flood)
        text = f"  {row:48s} {flood.judged_per_s:10,.0f} flows/s, sender {flood.sender_cpu_us_per_flow or 0:.3f} µs/flow"
        if row in LATENCY_ROWS:
            self.bench.wait_quiet()
            connects = self.bench.tcp_latency()
            self.connects[row].append(connects)
            text += f", connect() p50 {bd._percentile(connects, 0.5):.1f} µs"
        print(text, flush=True)

    def node(self, *argv: str) -> str:
        return self.bench._run(self.bench.lab.node_command(list(argv)))

    def agent(self, extra_args: tuple[str, ...]) -> bd.Agent:
        agent = bd.Agent(self.bench, self.policies, memory=True, extra_args=extra_args)
        self.bench.wait_quiet()
        self.bench.flood("cached", None)  # warm-up: the agent judges each key once, the kernel remembers it
        return agent

    def round(self) -> None:
        agent = self.agent(("--netfilter-bug-1766-fix=true",))
        try:
            self.measure(WORKAROUND_ON)
            os.kill(agent.process.pid, signal.SIGSTOP)
            try:
                self.node("nft", "delete", "chain", "inet", agent.table, "remember")
                self.measure(NO_REMEMBER)
                self.node("nft", "delete", "chain", "inet", agent.table, "prerouting")
                self.measure(NO_PREROUTING)
                for binary in ("iptables", "ip6tables"):
                    self.node(binary, "-w", "5", "-t", "mangle", "-F", "PREROUTING")
                self.measure(NO_XT_PREROUTING)
            finally:
                os.kill(agent.process.pid, signal.SIGCONT)
        finally:
            agent.stop()
        agent = self.agent(())
        try:
            self.measure(AUTO)
        finally:
            agent.stop()
        with self.bench.conntrack_on():
            self.measure(CT_ON)
        self.measure(NO_TABLE)

    def report(self) -> str:
        def median(row: str, field: str) -> float:
            return statistics.median(getattr(f, field) or 0.0 for f in self.runs[row])

        def fastest(row: str) -> float:
            return min(f.sender_cpu_us_per_flow or 0.0 for f in self.runs[row])

        ct_rate, ct_cpu, ct_fastest = median(CT_ON, "judged_per_s"), median(CT_ON, "sender_cpu_us_per_flow"), fastest(CT_ON)
        lines = ["| row | new flows/s | % of conntrack on | sender CPU µs/flow | more than conntrack on | "
                 "fastest run | more than conntrack on's fastest | runs (µs/flow) |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for row in ROWS:
            rate, cpu = median(row, "judged_per_s"), median(row, "sender_cpu_us_per_flow")
            each = ", ".join(f"{f.sender_cpu_us_per_flow or 0:.2f}" for f in self.runs[row])
            lines.append(f"| {row} | {rate:,.0f} | {rate / ct_rate:.0%} | {cpu:.2f} | {cpu - ct_cpu:+.2f} | "
                         f"{fastest(row):.2f} | {fastest(row) - ct_fastest:+.2f} | {each} |")
        lines += ["", "| row | connect() p50 µs (median of rounds) | p99 µs | p50 more than conntrack on | "
                  "p50 more than no table | runs' p50 µs |", "|---|---:|---:|---:|---:|---|"]
        run_p50 = {row: [bd._percentile(run, 0.5) for run in self.connects[row]] for row in LATENCY_ROWS}
        p50 = {row: statistics.median(values) for row, values in run_p50.items()}
        for row in LATENCY_ROWS:
            p99 = statistics.median(bd._percentile(run, 0.99) for run in self.connects[row])
            each = ", ".join(f"{value:.1f}" for value in run_p50[row])
            lines.append(f"| {row} | {p50[row]:.1f} | {p99:.1f} | {p50[row] - p50[CT_ON]:+.1f} | "
                         f"{p50[row] - p50[NO_TABLE]:+.1f} | {each} |")
        return "\n".join(lines)

    def close(self) -> None:
        self.tcp_server.kill()
        self.tcp_server.wait()
        self.bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of all rows (the median is reported)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=400_000, help="datagrams per second offered (above what the sender can)")
    parser.add_argument("--policies", type=int, default=10, help="extra policies selecting the servers")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for an idle machine before each run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_kernel_path: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    path = KernelPath(args)
    try:
        print(f"kernel {os.uname().release}; {args.rounds} rounds", flush=True)
        for number in range(args.rounds):
            print(f"round {number + 1}:", flush=True)
            path.round()
    finally:
        path.close()
    print(path.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
