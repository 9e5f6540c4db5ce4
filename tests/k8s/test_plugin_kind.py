"""A plugin package with a kind of its own (a CRD): listed, watched, trimmed and handed to its evaluator.

The plugin is written out as a separate distribution (a package plus its
``.dist-info`` with the ``kube_netpol.evaluators`` entry point) on a path of
its own: nothing in kube_netpol knows it, exactly as with a plugin installed
from PyPI. Objects of its kind served by the fake API server change verdicts,
in process (the Kubernetes source and the engine, as the agent wires them) and
through the `kube-netpol explain` command line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Iterator

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.api import Packet  # noqa: E402
from kube_netpol.plugins import build_engine  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

from k8s_helpers import FAST, Driver, namespace, pod  # noqa: E402

PLUGIN = textwrap.dedent('''
    """Denies egress to the CIDRs of BlockList objects (blocklist.example.com/v1, cluster-scoped)."""

    import ipaddress

    from kube_netpol.api import NEXT, Decision, InvalidObject, KindSpec, Update, Verdict, trim_to_spec


    class BlockList:
        def __init__(self, name, networks):
            self.name, self.networks = name, networks


    def parse(obj):
        name = (obj.get("metadata") or {}).get("name")
        cidrs = (obj.get("spec") or {}).get("cidrs")
        if not isinstance(cidrs, list):
            raise InvalidObject("must be a list of CIDRs", "spec.cidrs")
        try:
            return BlockList(name, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))
        except (TypeError, ValueError) as err:
            raise InvalidObject(str(err), "spec.cidrs") from None


    def trim(obj):
        trimmed = trim_to_spec(obj)
        TRIMMED.append(dict(trimmed))
        return trimmed


    TRIMMED = []
    BLOCKLIST = KindSpec("BlockList", "blocklist.example.com", "v1", "blocklists", False, parse, trim)


    class Stage:
        def __init__(self, lists):
            self.lists = lists

        def evaluate_egress(self, packet, src, dst):
            address = ipaddress.ip_address(packet.dst)
            for blocklist in self.lists:
                if any(address in network for network in blocklist.networks):
                    return Decision(Verdict.DENY, blocklist.name, "cidrs", "in a BlockList")
            return NEXT

        def evaluate_ingress(self, packet, src, dst):
            return NEXT


    class BlockListEvaluator:
        name = "blocklist"
        kinds = (BLOCKLIST,)
        pod_annotations = ()

        def ready(self):
            return True

        def update(self, view, changes):
            lists = tuple(view.objects("BlockList").values())
            # Every pod's egress may be judged: it cannot name the pods it cares about.
            return Update(Stage(lists), divert_all=bool(lists))


    def create(context):
        return BlockListEvaluator()
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A directory holding the plugin as an installed distribution would: module plus dist-info."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "kn_blocklist_plugin.py").write_text(PLUGIN)
    info = root / "kn_blocklist_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kn-blocklist-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[kube_netpol.evaluators]\nblocklist = kn_blocklist_plugin:create\n")
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("kn_blocklist_plugin", None)


def blocklist(name: str, *cidrs: str) -> dict:
    return {"apiVersion": "blocklist.example.com/v1", "kind": "BlockList",
            "metadata": {"name": name, "managedFields": [{"manager": "kubectl"}]}, "spec": {"cidrs": list(cidrs)}}


def test_the_plugins_kind_is_watched_and_its_objects_change_verdicts(plugin_path: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config

    engine = build_engine(("blocklist", "networkpolicy"))
    kinds = engine.state.kinds
    assert kinds["BlockList"].path == "/apis/blocklist.example.com/v1/blocklists"
    to_external = Packet.from_strings("10.0.0.1", "192.0.2.7", "TCP", 443)
    with FakeApiServer(kinds=list(kinds)) as server:
        server.create(namespace("a"))
        server.create(pod("a", "p", "10.0.0.1"))
        server.create(blocklist("bad-hosts", "198.51.100.0/24"))
        source = KubernetesSource(engine.state, api_client_from_config(str(server.write_kubeconfig(tmp_path / "kc"))),
                                  settings=FAST)
        assert source.kinds == ("Namespace", "Pod", "BlockList", "NetworkPolicy")
        driver = Driver(source)
        driver.start()
        try:
            driver.run_until(source.ready, what="the initial lists, the plugin's kind included")
            engine.publish()
            assert engine.evaluate(to_external).allowed
            assert engine.managed.divert_all
            server.create(blocklist("more-bad-hosts", "192.0.2.0/24"))  # through the watch
            driver.run_until(lambda: "more-bad-hosts" in {k[1] for k in engine.state.objects("BlockList")},
                             what="the watched BlockList")
            engine.publish()
            judgement = engine.evaluate(to_external)
            assert not judgement.allowed
            assert (judgement.egress_by, judgement.egress.policy) == ("blocklist", "more-bad-hosts")
            server.delete("BlockList", "more-bad-hosts")
            driver.run_until(lambda: len(engine.state.objects("BlockList")) == 1, what="the deletion")
            engine.publish()
            assert engine.evaluate(to_external).allowed
            # An invalid object of the plugin's kind is refused like any other.
            server.create(blocklist("broken", "not-a-cidr"))
            driver.run_until(lambda: engine.state.invalid_objects["BlockList"] == 1, what="the refusal")
        finally:
            source.stop()
    import kn_blocklist_plugin  # the plugin's own trim ran on what the API served

    assert kn_blocklist_plugin.TRIMMED and all("managedFields" not in t["metadata"] for t in kn_blocklist_plugin.TRIMMED)


def test_the_command_line_finds_the_plugin_and_lists_its_kind(plugin_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with FakeApiServer(kinds=list(build_engine(("blocklist", "networkpolicy")).state.kinds)) as server:
        server.create(namespace("a"))
        server.create(pod("a", "p", "10.0.0.1"))
        server.create(blocklist("bad-hosts", "192.0.2.0/24"))
        kubeconfig = server.write_kubeconfig(tmp_path / "kc")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-m", "kube_netpol", "explain", "--kubeconfig", str(kubeconfig),
             "--evaluators", "blocklist,networkpolicy", "--from", "a/p", "--to", "192.0.2.9", "--port", "443",
             "-o", "json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr  # denied
    result = json.loads(done.stdout)
    assert (result["egress"]["evaluator"], result["egress"]["policy"]) == ("blocklist", "bad-hosts")
