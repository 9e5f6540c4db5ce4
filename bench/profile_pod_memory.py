#!/usr/bin/env python3
"""What the agent holds per pod, by the line that allocated it (tracemalloc), for bench_scale.py's pods.

Decodes pages of the bench's realistic pods the agent's way (msgspec page
decoder, then ``kube_apply.apply_page``) and, as the agent does after each
page, hands the batch to the engine (``build_engine``: the state, the
default pipeline's evaluators, the managed addresses), with the bench's
namespaces and one NetworkPolicy per 100 pods, the agent's node running
100 of the pods. Prints the bytes and objects per pod still held, biggest
first, against a snapshot taken before the pods came (``--state-only``:
the state alone, its change log drained instead). What this cannot see is
the allocator's partly used arenas and what the sync left behind, the rest
of the RSS growth bench_scale.py measures::

    python bench/profile_pod_memory.py [--pods 20000] [--top 15] [--state-only] [--by filename|lineno] [--rss]

``--rss`` measures the RSS growth instead, without tracemalloc (whose own
records would count): the arenas included, the pages' JSON too (built
before the first reading, so outside the difference only if freed).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from bench_scale import NODE, PODS_PER_POLICY, namespaces_for, policy, realistic_pod  # noqa: E402
from kube_netpol.plugins import build_engine  # noqa: E402
from kube_netpol.sources import kube_apply  # noqa: E402
from kube_netpol.sources.pod_pages import decode_pod_page  # noqa: E402


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--state-only", action="store_true", help="drain the state's changes, no engine")
    parser.add_argument("--by", default="lineno", choices=("lineno", "filename"))
    parser.add_argument("--rss", action="store_true",
                        help="no tracemalloc: the process's RSS growth per pod instead (arenas included)")
    args = parser.parse_args()
    namespaces = namespaces_for(args.pods)
    engine = build_engine(node_name=NODE)
    state = engine.state
    for n in range(namespaces):
        state.apply({"metadata": {"name": f"ns-{n}"}}, "Namespace")
    if not args.state_only:
        for k in range(max(1, args.pods // PODS_PER_POLICY)):
            state.apply(policy(k, args.pods, namespaces), "NetworkPolicy")
    engine.publish()
    pages = [json.dumps({"metadata": {"resourceVersion": "1"},
                         "items": [realistic_pod(i, namespaces) for i in range(start, min(start + 500, args.pods))]}
                        ).encode() for start in range(0, args.pods, 500)]
    gc.collect()
    rss_before = rss_kib()
    if not args.rss:
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
    seen: set[tuple[str, str]] = set()
    for body in pages:
        page = decode_pod_page(body)
        assert page is not None
        kube_apply.apply_page(state, "Pod", page["items"], seen)
        del page
        if args.state_only:
            state.take_changes()
        else:
            engine.publish()
    seen.clear()
    gc.collect()
    if args.rss:
        print(f"{args.pods} pods{' (state only)' if args.state_only else ''}: "
              f"RSS {(rss_kib() - rss_before) * 1024 / args.pods:.0f} B per pod more")
        return
    stats = tracemalloc.take_snapshot().compare_to(before, args.by)
    print(f"{args.pods} pods{' (state only)' if args.state_only else ''}: "
          f"{sum(s.size_diff for s in stats) / args.pods:.0f} B per pod held")
    for stat in stats[:args.top]:
        print(f"{stat.size_diff / args.pods:8.1f} B {stat.count_diff / args.pods:6.2f} objects per pod  "
              f"{stat.traceback[0]}")


if __name__ == "__main__":
    main()
