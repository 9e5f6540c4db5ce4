"""The real-kernel tier: Debian's kernel, booted under qemu, runs the native nftables queue backend.

This machine's kernel has no nftables ``queue`` expression, so everything else
here exercises the xt fallback; most nodes run a distribution kernel where
``--queue-backend auto`` picks the native one. One boot (module fixture) runs
guest_suite.py in the guest; the tests below check what it left in the share
and print the guest's kernel version and queue backend into the test output.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from guest_image import REPO, GuestKernel, cached_kernel, can_provide_kernel
from guest_suite import CONFORMANCE_SELECTION, PYTEST_SELECTION
from qemu_vm import GuestRun, choose_accelerator, run_in_guest, why_qemu_cannot_run

pytestmark = [pytest.mark.root, pytest.mark.realkernel]

GUEST_SUITE = Path(__file__).with_name("guest_suite.py")
#: Seconds the whole guest run may take before qemu is killed (measured: about 5 minutes under TCG).
GUEST_TIMEOUT = 1200.0
#: KUBE_NETPOL_LAB_TIME_SCALE per accelerator: emulation runs Python about 20x slower, and a first
#: packet that needs one retransmission (1 s) must still fit in a probe's timeout (0.5 s x 3).
TIME_SCALE = {"kvm": 1.0, "tcg": 3.0}


@dataclass(frozen=True)
class Outcome:
    kernel: GuestKernel
    run: GuestRun
    summary: dict[str, Any]

    def console_tail(self, lines: int = 80) -> str:
        return "guest console (last lines):\n" + "\n".join(self.run.console.splitlines()[-lines:])


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    reason = why_qemu_cannot_run()
    if reason is None and not can_provide_kernel():
        reason = "no cached guest kernel and no apt-get to fetch Debian's"
    if reason is not None:
        pytest.skip(reason)
    kernel = cached_kernel()
    scale = TIME_SCALE[choose_accelerator().name]
    argv = [sys.executable, str(GUEST_SUITE), "--time-scale", str(scale)]
    run = run_in_guest(kernel, argv, REPO, tmp_path_factory.mktemp("realkernel"), GUEST_TIMEOUT)
    summary_file = run.share / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    outcome = Outcome(kernel, run, summary)
    assert summary, f"the guest suite wrote no summary (exit status {run.exit_status})\n{outcome.console_tail()}"
    return outcome


def test_the_guest_runs_debians_kernel(guest: Outcome, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nreal-kernel tier: kernel {guest.summary['kernel']} ({guest.kernel.package}), "
              f"qemu accelerator {guest.run.accelerator.name} ({guest.run.accelerator.reason}); {guest.run.seconds:.0f} s: "
              f"agent check {guest.summary['agent']['seconds']} s, conformance {guest.summary['conformance'][1]} s, "
              f"pytest {guest.summary['pytest'][1]} s")  # fmt: skip
    assert guest.summary["kernel"] == guest.kernel.version


def test_auto_picks_the_native_queue_backend(guest: Outcome, capsys: pytest.CaptureFixture[str]) -> None:
    agent = guest.summary["agent"]
    with capsys.disabled():
        print(f"real-kernel tier: queue backend {agent['backend'] or '(none)'} "
              f"(kube-netpol run with --queue-backend auto: {agent['ready_log'].strip()})")  # fmt: skip
    assert agent["backend"] == "nft", guest.console_tail()
    assert "queue backend nft" in agent["ready_log"]
    assert agent["readyz"] == 200 and agent["agent_exit"] == 0
    # `kube-netpol cleanup` removes what the fail-open agent kept; the native backend added no xt rules.
    assert "kube-netpol" in agent["tables_after_stop"]
    assert agent["cleanup_exit"] == 0 and "kube-netpol" not in agent["tables_after_cleanup"]
    assert agent["xt_rules_after_cleanup"] == []
    # The kernel loaded the native queue expression on demand; up to pytest (whose backend-switch test
    # asks for xt), no agent, the conformance run's included, used the xtables NFQUEUE target.
    modules = guest.summary["modules_before_pytest"]
    assert "nft_queue" in modules and "nfnetlink_queue" in modules
    assert "xt_NFQUEUE" not in modules and "nft_compat" not in modules, modules


def _testcases(junit: Path) -> dict[str, str]:
    """Each test's outcome in pytest's JUnit XML: passed, skipped (with its reason), failure or error."""
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcomes[name] = "passed" if problem is None else f"{problem.tag}: {problem.get('message', '')[:300]}"
    return outcomes


def test_the_native_backend_tests_all_run_and_pass(guest: Outcome) -> None:
    junit = guest.run.share / "pytest.xml"
    assert junit.is_file(), f"pytest wrote no report\n{guest.console_tail()}"
    outcomes = _testcases(junit)
    # Every selected test must run here (no skip: this kernel has what they need) and pass.
    assert {n: o for n, o in outcomes.items() if o != "passed"} == {}, guest.console_tail()
    for selected in PYTEST_SELECTION:
        module, _, test = selected.removesuffix(".py").partition(".py::")
        dotted = module.replace("/", ".").removeprefix("tests.")
        assert any(dotted in name and test in name for name in outcomes), f"{selected} did not run"
    assert guest.summary["pytest"][0] == 0


def test_the_dataplane_conformance_subset_passes(guest: Outcome) -> None:
    report_file = guest.run.share / "conformance.json"
    assert report_file.is_file(), f"the conformance run wrote no report\n{guest.console_tail()}"
    report = json.loads(report_file.read_text())
    failed = {s["name"]: s["error"] or "mismatches" for s in report["scenarios"] if not s["passed"]}
    assert failed == {}, guest.console_tail(150)
    assert report["summary"]["scenarios"] == len(CONFORMANCE_SELECTION)
    assert report["summary"]["mismatches"] == 0 and report["summary"]["probes"] > 0


def test_the_guest_suite_passed(guest: Outcome) -> None:
    assert guest.run.exit_status == 0, guest.console_tail()
