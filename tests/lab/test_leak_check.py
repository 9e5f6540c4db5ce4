"""scripts/leak_check.py counts only what the project's tests make, whatever else the machine does meanwhile."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

from kube_netpol.tools.lab.names import Owner, name_owner, owned_name
from kube_netpol.tools.lab.netns import add_netns, delete_netns

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "leak_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("leak_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


leak_check = _load()
DEAD = Owner(1, 0)  # pid 1 with another start time: not that process
ME = Owner.current()


def name_of(owner: Owner, prefix: str = "knlt") -> str:
    return f"{prefix}-{owner.pid}.{owner.start_time}-{secrets.token_hex(3)}-node"


# --------------------------------------------------------------------- pure


def test_owned_names_say_who_made_them() -> None:
    name = owned_name("kn-dp")
    assert name_owner(name) == ME
    assert name_owner(name_of(ME)) == ME  # a lab's namespace
    for foreign in ("cni-1234-5678", "hx-exp4", "knative-serving", "kn-dp-123-abcdef", "netns-1.2-xyz"):
        assert name_owner(foreign) is None, foreign
    with pytest.raises(ValueError):
        owned_name("Bad_Prefix")


def test_only_the_projects_items_are_snapshotted() -> None:
    lab = name_of(DEAD)
    items = leak_check.project_items(
        netns=["cni-1234", lab, "hx-exp4"],
        tables=["inet kube-netpol", "inet knle2e-abc123", "ip filter", "inet firewalld", "ip nat"],
        rules=["iptables -t mangle -A POSTROUTING -m comment --comment knle2e-abc123 -j NFQUEUE --queue-num 100",
               'iptables -t filter -A FORWARD -m comment --comment "docker rule" -j ACCEPT',
               "iptables -t nat -A POSTROUTING -j MASQUERADE"],
    )
    assert items == {
        "netns": [lab],
        "nftables": ["inet knle2e-abc123", "inet kube-netpol"],
        "xtables": ["iptables -t mangle -A POSTROUTING -m comment --comment knle2e-abc123 -j NFQUEUE --queue-num 100"],
    }


def test_leftovers_are_new_and_for_namespaces_orphaned() -> None:
    old, orphan, running = name_of(DEAD), name_of(DEAD), name_of(ME)
    before = {"netns": [old], "nftables": ["inet kube-netpol"], "xtables": []}
    after = {"netns": [old, orphan, running], "nftables": ["inet kube-netpol", "inet kntest-1.2-abcdef"], "xtables": []}
    assert leak_check.leftovers(before, after) == [f"netns: {orphan}", "nftables: inet kntest-1.2-abcdef"]
    assert leak_check.leftovers(after, after) == []


# --------------------------------------------------------------------- the real machine


requires_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def orphan_name() -> str:
    """An owned name whose maker has already exited (made by a child process)."""
    code = "from kube_netpol.tools.lab.names import owned_name; print(owned_name('knleak'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Namespaces a test creates; removed afterwards, also when it fails."""
    made: list[str] = []
    try:
        yield made
    finally:
        delete_netns(made)


@requires_root
def test_compare_names_the_tests_leftover_and_ignores_the_machines_own(tmp_path: Path, namespaces: list[str]) -> None:
    snapshot = tmp_path / "before.json"
    assert run_script("snapshot", str(snapshot)).returncode == 0
    foreign = f"foreign-{secrets.token_hex(3)}"  # another process's, made during the run
    running = owned_name("knleak")  # a test still running (this one)
    orphan = orphan_name()  # a test's, whose process is gone
    for name in (foreign, running, orphan):
        add_netns(name)
        namespaces.append(name)

    result = run_script("compare", str(snapshot))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"netns: {orphan}" in result.stderr
    assert foreign not in result.stderr and running not in result.stderr

    delete_netns([orphan])
    again = run_script("compare", str(snapshot))
    assert orphan not in again.stderr and foreign not in again.stderr
