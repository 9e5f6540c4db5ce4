#!/usr/bin/env python3
"""The verdict loop without its metric recording, for measuring what recording costs.

``UnrecordedLoop.handle`` is ``VerdictLoop.handle`` less the clock reading
and the hit counter (keep the two in step). bench_verdict_loop.py times it
in process; run as a script, this is ``kube-netpol`` with every VerdictLoop
using it, which bench_dataplane.py runs as the agent without recording
(its packet counters then miss the flow-table hits: for benchmarks only).

    python bench/unrecorded_loop.py run --manifests DIR ...
"""

from __future__ import annotations

import sys
from struct import error as struct_error
from typing import Any

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.observability.flowstats import unpack_raw_v4, unpack_raw_v6


class UnrecordedLoop(VerdictLoop):
    """``VerdictLoop.handle`` without its metric recording (no clock, no hit counter)."""

    def handle(self, queued: Any) -> None:
        payload = queued.get_payload()
        try:
            raw = unpack_raw_v4(payload) if payload[0] == 0x45 else unpack_raw_v6(payload)
        except (IndexError, struct_error):
            raw = None
        if self.observer is None:
            flow = self.stats.flows.get(raw)  # type: ignore[arg-type]
            if flow is not None:
                if flow.accepted:
                    queued.accept()
                else:
                    queued.drop()
                return
        self._judge(queued, payload, raw, 0)


if __name__ == "__main__":
    from kube_netpol.cli import main

    VerdictLoop.handle = UnrecordedLoop.handle  # type: ignore[method-assign]
    sys.exit(main())
