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

``--latency-pairs N`` measures only connect() latency, interleaved much
finer: one agent (memory on, the default flags) remembers the key, is
stopped with SIGSTOP, and its table (listed with its remembered keys,
without their expiry) and iptables' mangle tables are saved; then N times
the node namespace switches between three states, ``agent's table`` (the
saved tables restored), ``conntrack on`` and ``no table``, with
``--latency-connections`` sequential connections in each (the order
reversed every other pair, so that neither side always follows a
switch). A SYN that missed the memory would wait in the stopped agent's
queue and fail after 1 s: such failures are counted and reported. The
difference is taken pair by pair (the machine's drift is slow next to
one pair) and over all connections of each state pooled.
"""

from __future__ import annotations

import argparse
import json
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

    def node(self, *argv: str, stdin: str | None = None) -> str:
        return self.bench._run(self.bench.lab.node_command(list(argv)), stdin=stdin)

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


AGENT_TABLE = "agent's table"
XT_FAMILIES = (("iptables", "ip"), ("ip6tables", "ip6"))
LATENCY_STATES = (AGENT_TABLE, CT_ON, NO_TABLE)


def _without_state(obj: object) -> object:
    """A ``nft -j list`` answer without what a restore must not carry: handles, elements' expiry."""
    if isinstance(obj, dict):
        return {key: _without_state(value) for key, value in obj.items() if key not in ("handle", "expires")}
    if isinstance(obj, list):
        return [_without_state(value) for value in obj]
    return obj


class InterleavedLatency:
    """connect() latency of a cached key with the agent's table, conntrack on and no table, switched pair by pair."""

    def __init__(self, path: KernelPath) -> None:
        self.path = path
        self.bench = path.bench
        self.samples: dict[str, list[list[float]]] = {state: [] for state in LATENCY_STATES}
        self.failed: dict[str, int] = dict.fromkeys(LATENCY_STATES, 0)

    def mangle_rules(self, binary: str, family: str) -> str:
        """iptables-restore input for the node's mangle table with exactly the chains it has ("" if none).

        iptables-save declares every built-in chain, and iptables-nft would create each one restored:
        four base chains more than the agent made, on hooks a forwarded packet passes."""
        try:
            listing = json.loads(self.path.node("nft", "-j", "list", "table", family, "mangle"))["nftables"]
        except RuntimeError:
            return ""  # no such table
        chains = {o["chain"]["name"] for o in listing if "chain" in o}
        saved = self.path.node(f"{binary}-save", "-t", "mangle").splitlines()
        return "\n".join(line for line in saved if not line.startswith(":") or line[1:].split()[0] in chains) + "\n"

    def run(self, pairs: int, connections: int) -> None:
        agent = bd.Agent(self.bench, self.path.policies, memory=True)
        try:
            self.bench.tcp_latency(50)  # the first SYN is judged, the kernel remembers the key
            os.kill(agent.process.pid, signal.SIGSTOP)
            listing = _without_state(json.loads(self.path.node("nft", "-j", "list", "table", "inet", agent.table)))
            assert isinstance(listing, dict)
            listing["nftables"] = [o for o in listing["nftables"] if "metainfo" not in o]
            saved = self.bench._write("agent-table.json", listing)
            mangle = {binary: self.mangle_rules(binary, family) for binary, family in XT_FAMILIES}
            table = agent.table

            def enter(state: str) -> None:
                if state == AGENT_TABLE:
                    self.path.node("nft", "-j", "-f", str(saved))
                    for binary, rules in mangle.items():
                        if rules:
                            self.path.node(f"{binary}-restore", stdin=rules)
                elif state == CT_ON:
                    self.bench.conntrack_table(add=True)

            def leave(state: str) -> None:
                if state == AGENT_TABLE:
                    self.path.node("nft", "delete", "table", "inet", table)
                    for binary, family in XT_FAMILIES:
                        if mangle[binary]:
                            self.path.node("nft", "delete", "table", family, "mangle")
                elif state == CT_ON:
                    self.bench.conntrack_table(add=False)

            leave(AGENT_TABLE)
            try:
                for number in range(pairs):
                    order = LATENCY_STATES if number % 2 == 0 else LATENCY_STATES[::-1]
                    for state in order:
                        enter(state)
                        try:
                            samples = self.bench.tcp_latency(connections)
                        finally:
                            leave(state)
                        self.samples[state].append(samples)
                        self.failed[state] += connections - len(samples)
                    print(f"  pair {number + 1}: " + ", ".join(
                        f"{state} {bd._percentile(self.samples[state][-1], 0.5):.1f}" for state in LATENCY_STATES
                    ) + " µs p50", flush=True)
            finally:
                os.kill(agent.process.pid, signal.SIGCONT)
        finally:
            agent.stop()

    def report(self) -> str:
        pooled = {state: [value for run in self.samples[state] for value in run] for state in LATENCY_STATES}
        p50 = {state: bd._percentile(values, 0.5) for state, values in pooled.items()}
        lines = ["| state | connections | failed | connect() p50 µs (all pooled) | p99 µs | p50 more than conntrack on "
                 "(pooled) | the same, median of pairs | mean of pairs ± standard error |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for state in LATENCY_STATES:
            differences = [bd._percentile(mine, 0.5) - bd._percentile(ct, 0.5)
                           for mine, ct in zip(self.samples[state], self.samples[CT_ON], strict=True)]  # fmt: skip
            error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
            lines.append(f"| {state} | {len(pooled[state]):,} | {self.failed[state]} | {p50[state]:.1f} | "
                         f"{bd._percentile(pooled[state], 0.99):.1f} | {p50[state] - p50[CT_ON]:+.1f} | "
                         f"{statistics.median(differences):+.1f} | {statistics.mean(differences):+.1f} ± {error:.1f} |")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of all rows (the median is reported)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=400_000, help="datagrams per second offered (above what the sender can)")
    parser.add_argument("--policies", type=int, default=10, help="extra policies selecting the servers")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="seconds to wait for an idle machine before each run")
    parser.add_argument("--latency-pairs", type=int, default=0,
                        help="measure only connect() latency, switching states this many times (see above)")
    parser.add_argument("--latency-connections", type=int, default=250, help="connections per state and pair")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_kernel_path: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    path = KernelPath(args)
    if args.latency_pairs:
        latency = InterleavedLatency(path)
        try:
            print(f"kernel {os.uname().release}; {args.latency_pairs} pairs of {args.latency_connections} "
                  "connections per state", flush=True)  # fmt: skip
            latency.run(args.latency_pairs, args.latency_connections)
        finally:
            path.close()
        print(latency.report())
        return 0
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
