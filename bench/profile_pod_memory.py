#!/usr/bin/env python3
"""What ClusterState holds per pod, by the line that allocated it (tracemalloc), for bench_scale.py's pods.

Decodes pages of the bench's realistic pods the agent's way (msgspec page
decoder, then ``kube_apply.apply_page``), drains the change log as the agent
does after each batch, and prints the bytes and objects per pod still held,
biggest first. The state only: the engine's indexes, the allocator's
arenas and what the sync left behind make up the rest of the RSS growth
bench_scale.py measures::

    python bench/profile_pod_memory.py [--pods 20000] [--top 15]
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

from bench_scale import namespaces_for, realistic_pod  # noqa: E402
from kube_netpol.plugins import registry_for  # noqa: E402
from kube_netpol.sources import kube_apply  # noqa: E402
from kube_netpol.sources.pod_pages import decode_pod_page  # noqa: E402
from kube_netpol.state import ClusterState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    namespaces = namespaces_for(args.pods)
    state = ClusterState(registry_for())
    for n in range(namespaces):
        state.apply({"metadata": {"name": f"ns-{n}"}}, "Namespace")
    pages = [json.dumps({"metadata": {"resourceVersion": "1"},
                         "items": [realistic_pod(i, namespaces) for i in range(start, min(start + 500, args.pods))]}
                        ).encode() for start in range(0, args.pods, 500)]
    state.take_changes()
    gc.collect()
    tracemalloc.start(1)
    seen: set[tuple[str, str]] = set()
    for body in pages:
        page = decode_pod_page(body)
        assert page is not None
        kube_apply.apply_page(state, "Pod", page["items"], seen)
        del page
        state.take_changes()
    seen.clear()
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    print(f"{args.pods} pods: {sum(s.size for s in stats) / args.pods:.0f} B per pod held")
    for stat in stats[:args.top]:
        print(f"{stat.size / args.pods:8.1f} B {stat.count / args.pods:6.2f} objects per pod  {stat.traceback[0]}")


if __name__ == "__main__":
    main()
