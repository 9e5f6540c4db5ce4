"""Run inside a private network namespace by test_dead_watch: a watch whose packets start vanishing.

The fake API server and the Kubernetes source share this namespace's
loopback. Once the source watches, an nftables table (this namespace's own)
drops every packet to and from the server's port: the connection stays
"established" on both ends, nothing is reset, nothing answers. With the read
timeout far away (300 s), only TCP keepalive can end the watch. Then the
drop goes, and the source must resume from its resourceVersion. Prints one
JSON line with what happened.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path

from kube_netpol.sources.kube_reflector import WatchSettings
from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config
from kube_netpol.state.store import ClusterState
from kube_netpol.tools.testing import FakeApiServer

from k8s_helpers import FAST, Driver, namespace, pod

SETTINGS = WatchSettings(**{**FAST.__dict__, "watch_timeout": 300, "watch_read_timeout": 300.0,
                            "keepalive_idle": 1, "keepalive_interval": 1, "keepalive_count": 2,
                            "backoff_initial": 0.2, "backoff_max": 0.5})


class Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "watch failed" in record.getMessage():
            self.lines.append(record.getMessage())


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def main() -> None:
    failures = Failures()
    logging.getLogger("kube_netpol").addHandler(failures)
    logging.getLogger("kube_netpol").setLevel(logging.INFO)
    server = FakeApiServer(token="t")
    with tempfile.TemporaryDirectory() as folder:
        kubeconfig = server.write_kubeconfig(Path(folder) / "kubeconfig", token="t")
        server.create(namespace("a"))
        source = KubernetesSource(ClusterState(), api_client_from_config(str(kubeconfig), SETTINGS), ("Pod",),
                                  SETTINGS)
        driver = Driver(source)
        driver.start()
        try:
            driver.run_until(source.ready, what="the initial list")
            server.wait_for_watches(["Pod"])
            version_before = str(server.resource_version)
            port = int(server.url.rsplit(":", 1)[1])
            nft(f"table inet deadwatch {{\n chain out {{\n type filter hook output priority 0;\n"
                f" tcp dport {port} drop\n tcp sport {port} drop\n }}\n}}\n")
            driver.run_until(lambda: bool(failures.lines), timeout=30, what="the dead watch to fail")
            nft("delete table inet deadwatch")
            server.create(pod("a", "after", "10.0.0.7"))
            driver.run_until(lambda: source.state.pod(("a", "after")) is not None, timeout=30, what="the resumed watch")
            resumed = [r.query.get("resourceVersion") for r in server.watch_requests("Pod")]
            print(json.dumps({
                "failures": failures.lines, "version_before": version_before,
                "resumed_from": resumed[-1] if len(resumed) > 1 else None,
                "relists": len(server.list_requests("Pod")) - 1, "delivered": True,
            }))
        finally:
            source.stop()
            server.stop()


if __name__ == "__main__":
    main()
