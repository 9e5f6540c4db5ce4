#!/usr/bin/env python3
"""The verdict loop with its metric recording patched out, for measuring what recording costs.

``patch_out_recording()`` replaces what the loop calls to record (the clock
it reads to time packets, a flow's timing record, the summary's samples) with
no-ops, in the running process: the loop itself is the agent's, unchanged.
What stays is the per-flow packet counter (``hits += 1``), which is the
packet count itself. bench_verdict_loop.py measures in process; run as a
script, this is ``kube-netpol`` with recording patched out, which
bench_dataplane.py runs as the agent without recording (its timing metrics
are then empty: for benchmarks only).

    python bench/unrecorded_loop.py run --manifests DIR ...
"""

from __future__ import annotations

import sys


def _nothing(*args: object) -> None:
    return None


def patch_out_recording() -> None:
    from kube_netpol.agent import verdict_loop
    from kube_netpol.engine.flows import FlowHistory, FlowStats

    # int() is a C call returning 0: "not timed", as cheap as a call can be.
    verdict_loop.perf_counter_ns = int  # type: ignore[assignment]
    FlowStats.record = _nothing  # type: ignore[method-assign, assignment]
    FlowHistory.record_sample = _nothing  # type: ignore[method-assign, assignment]
    FlowHistory.record_timed_hit = _nothing  # type: ignore[method-assign, assignment]


if __name__ == "__main__":
    from kube_netpol.cli import main

    patch_out_recording()
    sys.exit(main())
