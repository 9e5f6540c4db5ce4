#!/usr/bin/env python3
"""Record the decision records of docs/advise.md's worked example with the real agent in the lab.

    sudo .venv/bin/python scripts/advise_example.py [OUTPUT]   (default docs/examples/advise/decisions.jsonl)

The pods of docs/examples/advise/cluster run as lab hosts, two more hosts
stand for a client on the Internet and a service the report job uploads to;
the agent runs in audit mode with one policy per namespace that selects every
pod both ways, so every connection is judged, recorded, and let through.
Then the example's traffic flows, and the records are the agent's own.
Needs root (network namespaces, nftables); leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kube_netpol.sources.manifests import read_manifest_file  # noqa: E402
from kube_netpol.tools.conformance.dataplane_agent import AgentProcess  # noqa: E402
from kube_netpol.tools.conformance.dataplane_manifests import ManifestFolder  # noqa: E402
from kube_netpol.tools.lab import Lab, Probe  # noqa: E402

CLUSTER = REPO / "docs" / "examples" / "advise" / "cluster"
OUTPUT = REPO / "docs" / "examples" / "advise" / "decisions.jsonl"
NODE = "node-1"
#: Hosts that are not pods: a client on the Internet, the service the report uploads to.
EXTERNALS = {"client": "198.51.100.7", "reports.example.com": "203.0.113.10"}
PORTS = ((80, "TCP"), (8080, "TCP"), (5432, "TCP"), (443, "TCP"))
#: (from, to, port): the example's traffic; pods by namespace/name, others by the names above.
TRAFFIC = (
    ("shop/web-5d8f7c9b4-q2x7z", "shop/api-7c9f8b6d5-m4n8p", 8080),
    ("shop/web-5d8f7c9b4-h8k3m", "shop/api-7c9f8b6d5-m4n8p", 8080),
    ("shop/api-7c9f8b6d5-m4n8p", "shop/db-0", 5432),
    ("ops/report-29000000-x9v4c", "shop/db-0", 5432),
    ("ops/report-29000000-x9v4c", "reports.example.com", 443),
    ("client", "shop/web-5d8f7c9b4-q2x7z", 80),
    ("client", "shop/web-5d8f7c9b4-h8k3m", 80),
)


def cluster_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        objects.extend(dict(o) for o in read_manifest_file(path))
    return objects


def observe_policies(namespaces: list[str]) -> list[dict[str, Any]]:
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "observe", "namespace": ns},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}} for ns in namespaces]


def record(output: Path) -> int:
    """Run the example's traffic in a lab; returns how many records the agent wrote."""
    objects = cluster_objects()
    pods = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["status"]["podIP"]
            for o in objects if o["kind"] == "Pod"}
    addresses = {**pods, **EXTERNALS}
    namespaces = sorted({key.split("/")[0] for key in pods})
    output.unlink(missing_ok=True)
    folder = ManifestFolder()
    lab = Lab("knadvex")
    agent = None
    try:
        agent = AgentProcess(lab, folder.path, folder.path.parent / f"{folder.path.name}.log", node_name=NODE,
                             table=f"knadvex-{lab.lab_id}",
                             extra_args=["--audit", "--decision-log", str(output), "--decision-log-rate", "1000"])
        lab.serve(PORTS)
        for name, ip in addresses.items():
            lab.add_host(name, [ip])
        agent.wait_enforced(folder.write(objects + observe_policies(namespaces)), timeout=20)
        results = lab.probe_many([Probe(src, addresses[dst], port, "TCP") for src, dst, port in TRAFFIC])
        if not all(results):
            raise RuntimeError(f"audit mode let through only {results}\n{agent.log_tail()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            written = output.read_text().count('"connection') if output.exists() else 0
            if written >= len(TRAFFIC):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the agent wrote {written} records for {len(TRAFFIC)} connections")
        return written
    finally:
        if agent is not None:
            agent.stop()
            agent.log_path.unlink(missing_ok=True)
        lab.close()
        folder.remove()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    print(f"{record(target)} decision records in {target}")
