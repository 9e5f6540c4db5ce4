"""The `dataplane` mode: the real agent enforces the scenario in a lab, and real traffic is judged.

Per scenario: one lab (every pod and external is a host; pods get all their
addresses; every host serves what the scenario probes), one manifests folder
holding the whole object set, and one agent process in the lab's node
namespace reading that folder. After every change the backend waits until the
agent reports (on /statusz) that it enforces exactly the folder's new content,
so no probe races a policy change.

Every probe is also judged by the offline backend (the engine without a
kernel). The two modes must agree: each disagreement is recorded with both
answers, shown in ``explain``, and ``close`` raises ``ModesDisagree`` listing
them, so the scenario fails (exit status 1) even when the dataplane matched
the expectations.

Teardown always stops the agent (SIGTERM, then SIGKILL), deletes the lab and
checks that nothing of it is left in the root namespace.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kube_netpol.tools.conformance.backend import BackendSetup
from kube_netpol.tools.conformance.cluster import ClusterSnapshot, StepChange
from kube_netpol.tools.conformance.dataplane_agent import APPLY_TIMEOUT, START_TIMEOUT, AgentProcess
from kube_netpol.tools.conformance.dataplane_dns import HOST as DNS_HOST
from kube_netpol.tools.conformance.dataplane_dns import LabDns, zone
from kube_netpol.tools.conformance.dataplane_leaks import root_leaks
from kube_netpol.tools.conformance.dataplane_manifests import ManifestFolder
from kube_netpol.tools.conformance.dataplane_networks import NetnsLinks, host_attachments
from kube_netpol.tools.conformance.offline import OfflineBackend, pipeline_for
from kube_netpol.tools.conformance.probes import Probe
from kube_netpol.tools.lab import Lab
from kube_netpol.tools.lab import Probe as LabProbe

#: The node every pod of the scenario runs on (the agent's --hostname-override).
NODE_NAME = "kube-netpol-lab-node"
#: Lab namespace prefix of conformance runs (`kube-netpol lab cleanup` removes leftovers of crashed runs).
LAB_PREFIX = "knlc"
#: Seconds a probe may take. Allowed traffic answers in milliseconds even through the queue;
#: blocked traffic costs this once per step (all probes of a step run together).
PROBE_TIMEOUT = 0.5


class ModesDisagree(AssertionError):
    """The dataplane and the offline engine answered differently for some probes."""


@dataclass(frozen=True)
class Disagreement:
    step: str
    probe: Probe
    dataplane: bool
    offline: bool

    def __str__(self) -> str:
        p = self.probe
        return (
            f"step {self.step!r}: {p.src} ({p.src_ip}) -> {p.dst} ({p.dst_ip}) {p.protocol}/{p.port}: "
            f"dataplane {_word(self.dataplane)}, offline {_word(self.offline)}"
        )


class DataplaneBackend:
    def __init__(
        self,
        setup: BackendSetup,
        *,
        probe_timeout: float = PROBE_TIMEOUT,
        strict_mode: bool = True,
        agent_args: Sequence[str] = (),
        lab_prefix: str = LAB_PREFIX,
        pod_netns_lookup: str = "dir",
    ) -> None:
        self.setup = setup
        self.offline = OfflineBackend(pipeline_for(setup))
        self.disagreements: list[Disagreement] = []
        self._observed: dict[Probe, bool] = {}
        self._step = "cluster setup"
        self._apply_timeout = START_TIMEOUT  # the first change also waits for the agent to start
        self._agent: AgentProcess | None = None
        self._lab: Lab | None = None
        self._dns: LabDns | None = None
        self._closed = False
        self._workdir = Path(tempfile.mkdtemp(prefix="kube-netpol-dataplane-"))
        self._folder = ManifestFolder(str(self._workdir))
        # Secondary networks: the agent finds each pod's namespace by name in this folder, or
        # ("cgroup") as on a node, by the pod's UID in processes' cgroups (the test makes those).
        self._links = NetnsLinks(self._workdir / "pod-netns")
        if setup.cluster.networks:
            lookup = (["--pod-netns-lookup", "dir", "--pod-netns-dir", str(self._links.directory)]
                      if pod_netns_lookup == "dir" else ["--pod-netns-lookup", pod_netns_lookup])
            agent_args = (*agent_args, "--evaluators", ",".join(pipeline_for(setup)), *lookup)
        self.table = ""
        try:
            self._lab = Lab(lab_prefix, probe_timeout=probe_timeout)
            self.table = f"{lab_prefix}-{self.lab.lab_id}"  # unique: the leak check looks for exactly this one
            self._folder.write([])  # the agent starts from an empty cluster while the hosts are built
            self._agent = AgentProcess(
                self.lab,
                self._folder.path,
                self._workdir / "agent.log",
                node_name=NODE_NAME,
                table=self.table,
                fail_open=False,
                strict_mode=strict_mode,
                extra_args=agent_args,
            )
            for network in setup.cluster.networks:
                self.lab.add_network(network.key)
            self.lab.serve(setup.listen)
            self._sync_hosts(setup.cluster)
            if zone(setup.cluster):
                self._dns = LabDns(self.lab, setup.cluster, probe_timeout)
        except BaseException as err:
            try:
                self._teardown()
            except Exception as teardown_error:  # noqa: BLE001 - the first failure is the one to report
                err.add_note(f"and the teardown failed too: {teardown_error}")
            raise

    @property
    def agent(self) -> AgentProcess:
        assert self._agent is not None
        return self._agent

    @property
    def lab(self) -> Lab:
        assert self._lab is not None
        return self._lab

    @property
    def manifests_file(self) -> Path:
        """The file holding the cluster's objects, which the agent reads."""
        return self._folder.file

    # --- the Backend protocol -------------------------------------------------------------------

    def apply(self, change: StepChange) -> list[str]:
        self._step = change.name
        notes = self.offline.apply(change)
        self._sync_hosts(change.cluster)
        revision = self._folder.write(change.cluster.objects(NODE_NAME))
        self.agent.wait_enforced(revision, self._apply_timeout)
        self._apply_timeout = APPLY_TIMEOUT
        return notes

    def run(self, probes: Sequence[Probe]) -> list[bool]:
        offline = self.offline.run(probes)
        lookups = list(dict.fromkeys((p.src, p.resolve, p.family) for p in probes if p.resolve and "/" in p.src))
        if lookups and self._dns is not None:
            self._dns.resolve_many(lookups)  # real queries from the pods; a blocked one teaches nothing
        observed = self.lab.probe_many(
            [LabProbe(p.src, p.dst_ip, p.port, p.protocol, p.src_ip if p.network else "") for p in probes])
        for probe, seen, judged in zip(probes, observed, offline):
            self._observed[probe] = seen
            if seen != judged:
                self.disagreements.append(Disagreement(self._step, probe, seen, judged))
        return observed

    def explain(self, probe: Probe) -> str:
        seen = self._observed.get(probe)
        offline = self.offline.run([probe])[0]
        agreement = "" if seen is None or seen == offline else "MODES DISAGREE: "
        return (
            f"{agreement}dataplane {_word(seen) if seen is not None else 'not probed'}, "
            f"offline {_word(offline)} ({self.offline.explain(probe)})"
        )

    def close(self) -> None:
        """Tear everything down; then raise ModesDisagree (with the agent's log) if the modes disagreed."""
        log = self._agent.log_tail() if self._agent is not None and self.disagreements else ""
        self._teardown()
        if self.disagreements:
            listed = "\n".join(f"  {d}" for d in self.disagreements)
            raise ModesDisagree(
                f"dataplane and offline modes disagree on {len(self.disagreements)} probe(s):\n{listed}\n{log}"
            )

    # --- internals ------------------------------------------------------------------------------

    def _sync_hosts(self, cluster: ClusterSnapshot) -> None:
        """Make the lab's hosts exactly the cluster's pods and externals, each with all its addresses."""
        wanted = {name: sorted(ips.values()) for name, ips in cluster.addresses().items()}
        attachments = host_attachments(cluster)
        present = self.lab.hosts
        for name, host in present.items():
            if name == DNS_HOST:
                continue  # the lab's DNS server: not a cluster host
            secondary = sorted(ip for _, _, ips in attachments.get(name, ()) for ip in ips)
            if sorted(host.ips) != wanted.get(name) or sorted(host.secondary) != [s.split("/")[0] for s in secondary]:
                self.lab.remove_host(name)  # gone, or readdressed: removed first so its addresses are free
                self._links.remove(name)
        present = self.lab.hosts
        for name, ips in wanted.items():
            if name not in present:
                host = self.lab.add_host(name, ips, attachments.get(name, ()))
                if "/" in name:
                    self._links.add(name, host.netns)

    def _teardown(self) -> None:
        """Stop the agent, delete the lab, check the root namespace; raise what went wrong after doing it all."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        if self._dns is not None:
            self._dns.close()
        if self._agent is not None:
            status = self._agent.stop()
            if status != 0:
                problems.append(f"the agent exited with status {status}\n{self._agent.log_tail()}")
        if self._lab is not None:
            try:
                self._lab.close()
            except Exception as err:  # noqa: BLE001 - the checks below still run
                problems.append(f"lab teardown: {err}")
            problems += [f"left in the root namespace: {leak}" for leak in root_leaks(self._lab.lab_id, self.table)]
        if problems:
            if self.disagreements:
                problems.append(f"besides, the modes disagree on {len(self.disagreements)} probe(s)")
            raise RuntimeError("; ".join(problems) + f"\n(agent log and manifests kept in {self._workdir})")
        shutil.rmtree(self._workdir, ignore_errors=True)


def create_backend(setup: BackendSetup, *, agent_args: Sequence[str] = ()) -> DataplaneBackend:
    """The backend for one scenario; ``agent_args`` go to the agent after the harness's own."""
    return DataplaneBackend(setup, agent_args=agent_args)


def _word(allowed: bool) -> str:
    return "allowed" if allowed else "blocked"
