"""Helpers of the Kubernetes end-to-end tests (and of bench/bench_apply_latency.py).

The real agent runs in a lab's node namespace with ``--kubeconfig``; the fake
API server runs in this process but listens inside the node namespace (its
listening socket is made there by a helper thread), so the kubeconfig's
``http://127.0.0.1:<port>`` reaches it from the agent and from nowhere else.

A change made through the server is enforced when the agent's /statusz
``enforced_revision`` (``KubernetesSource.revision()``: per kind, the
resourceVersion of the last event applied) reaches the resourceVersion the
server gave the change; ``KubeLab.wait_enforced`` waits for exactly that.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from e2e_agentlab import NODE, namespace_object, pod_object
from kube_netpol.tools.conformance.dataplane_agent import (
    APPLY_TIMEOUT,
    POLL_INTERVAL,
    START_TIMEOUT,
    AgentError,
    AgentProcess,
)
from kube_netpol.tools.conformance.dataplane_leaks import root_leaks
from kube_netpol.tools.lab import Lab, Probe
from kube_netpol.tools.lab.netns import open_netns, socket_in
from kube_netpol.sources.kubernetes import revision_versions
from kube_netpol.tools.testing import FakeApiServer

#: Kinds the agent watches with the default pipeline (NetworkPolicy only).
WATCHED_KINDS = ("Namespace", "Pod", "NetworkPolicy")


def socket_factory_in(netns: str) -> Callable[[], socket.socket]:
    """For ``FakeApiServer(socket_factory=...)``: a TCP/IPv4 socket made inside ``netns``.

    A helper thread enters the namespace (setns moves only the calling thread);
    the socket stays there for its whole life wherever it is used from.
    """

    def make() -> socket.socket:
        fd = open_netns(netns)
        try:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="apiserver-netns") as maker:
                return maker.submit(socket_in, fd, socket.AF_INET, socket.SOCK_STREAM).result()
        finally:
            os.close(fd)  # an open fd would keep the namespace alive after the lab deletes it

    return make


class KubeAgentProcess(AgentProcess):
    """``AgentProcess`` reading the Kubernetes API (``run --kubeconfig FILE``) instead of a manifests folder."""

    def __init__(self, lab: Lab, kubeconfig: Path, log_path: Path, **options: Any) -> None:
        super().__init__(lab, None, log_path, source_args=["--kubeconfig", str(kubeconfig)], **options)

    def enforced_versions(self, status: Mapping[str, Any] | None) -> dict[str, int]:
        """{kind: resourceVersion} the dataplane enforces, from a /statusz answer (empty when not ready)."""
        if not status or not status.get("ready"):
            return {}
        versions = revision_versions(str(status.get("enforced_revision", "")))
        return {kind: int(version) for kind, version in versions.items() if version.isdigit()}

    def wait_versions(
        self,
        wanted: Mapping[str, int],
        timeout: float = APPLY_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
    ) -> Mapping[str, Any]:
        """Wait until the agent is ready and enforces, for each kind in ``wanted``, at least that resourceVersion."""
        deadline = time.monotonic() + timeout
        status: Mapping[str, Any] | None = None
        while True:
            if self.process.poll() is not None:
                raise AgentError(f"the agent exited with status {self.process.returncode}\n{self.log_tail()}")
            status = self.status()
            enforced = self.enforced_versions(status)
            if enforced and all(enforced.get(kind, -1) >= version for kind, version in wanted.items()):
                return status  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"the agent did not enforce {dict(wanted)} within {timeout:.1f} s "
                    f"(last status: {json.dumps(status)})\n{self.log_tail()}"
                )
            time.sleep(poll_interval)


@dataclass
class KubeLab:
    lab: Lab
    server: FakeApiServer
    agent: KubeAgentProcess
    pods: dict[str, list[str]]

    # --- the API (each returns the stored object, with its resourceVersion) -------------------

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.server.create(obj)

    def update(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.server.update(obj)

    def delete(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        return self.server.delete(kind, name, namespace)

    def relabel_pod(self, key: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """Replace a pod's labels through the API (a MODIFIED event)."""
        namespace, name = key.split("/")
        pod = self.server.get("Pod", name, namespace)
        assert pod is not None, key
        pod["metadata"]["labels"] = dict(labels)
        return self.server.update(pod)

    def wait_enforced(self, change: Mapping[str, Any], timeout: float = APPLY_TIMEOUT) -> Mapping[str, Any]:
        """Wait until the agent enforces ``change`` (an object the server returned); returns /statusz."""
        kind = change.get("kind")
        assert isinstance(kind, str), "the server returns objects with their kind"
        version = int(change["metadata"]["resourceVersion"])
        return self.agent.wait_versions({kind: version}, timeout)

    def wait_current(self, timeout: float = APPLY_TIMEOUT) -> Mapping[str, Any]:
        """Wait until the agent enforces everything the server holds now.

        Per kind: at least the newest resourceVersion among its objects (a list
        answers with the server's current resourceVersion, an event with its
        object's, so either reaches it). Deletions leave no object behind to
        count: wait for one with ``wait_enforced``.
        """
        wanted = {kind: self.last_version(kind) for kind in WATCHED_KINDS}
        return self.agent.wait_versions(wanted, timeout)

    def last_version(self, kind: str) -> int:
        """The newest resourceVersion among the objects of ``kind`` (0 when none)."""
        versions = [int(obj["metadata"]["resourceVersion"]) for obj in self.server.objects(kind)]
        return max(versions, default=0)

    # --- traffic -----------------------------------------------------------------------------

    def ip(self, pod: str, version: int = 4) -> str:
        return self.lab.host(pod).ips_of(version)[0]

    def probe(self, src: str, dst: str, port: int = 80, protocol: str = "TCP", timeout: float | None = None) -> bool:
        return self.lab.probe(src, self.ip(dst), port, protocol, timeout)

    def probe_many(self, pairs: Sequence[tuple[str, str]], port: int = 80, protocol: str = "TCP") -> list[bool]:
        return self.lab.probe_many([Probe(src, self.ip(dst), port, protocol) for src, dst in pairs])


@contextmanager
def kube_agent_lab(
    pods: Mapping[str, list[str]],
    served: Sequence[tuple[int, str]] = ((80, "TCP"),),
    *,
    objects: Sequence[Mapping[str, Any]] = (),
    fail_open: bool = False,
    strict_mode: bool = True,
    probe_timeout: float = 0.5,
    extra_args: Sequence[str] = (),
    prefix: str = "knlk8s",
    start_timeout: float = START_TIMEOUT,
) -> Iterator[KubeLab]:
    """A lab with ``pods`` (namespaces in the lab, Pod and Namespace objects in the API), the agent enforcing them.

    ``objects`` are created in the API server too, before the agent starts
    (e.g. policies, or pods that exist only in the API: scale for benchmarks
    without building hundreds of namespaces). Everything (agent, server, lab,
    temporary files) is removed on the way out, also on failure; then nothing
    of the lab may be left in the root namespace.
    """
    lab = Lab(prefix, probe_timeout=probe_timeout)
    table = f"{prefix}-{lab.lab_id}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    server: FakeApiServer | None = None
    agent: KubeAgentProcess | None = None
    failed = False
    try:
        server = FakeApiServer(socket_factory=socket_factory_in(lab.node_netns))
        for namespace in sorted({key.split("/")[0] for key in pods}):
            server.create(namespace_object(namespace))
        for key, ips in pods.items():
            server.create(pod_object(key, ips, NODE))
        for obj in objects:
            server.create(obj)
        lab.serve(served)
        for key, ips in pods.items():
            lab.add_host(key, ips)
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        agent = KubeAgentProcess(lab, kubeconfig, workdir / "agent.log", node_name=NODE, table=table,
                                 fail_open=fail_open, strict_mode=strict_mode, extra_args=extra_args)
        env = KubeLab(lab, server, agent, dict(pods))
        env.wait_current(timeout=start_timeout)
        yield env
    except BaseException:
        failed = True
        raise
    finally:
        # Agent first (it holds watches on the server), then the server (its sockets live in the
        # node namespace), then the lab (it deletes the namespaces).
        if agent is not None:
            agent.stop()
            if failed:
                print(agent.log_tail(200))
        if server is not None:
            server.stop()
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
        leaks = root_leaks(lab.lab_id, table)
        assert not leaks, leaks
