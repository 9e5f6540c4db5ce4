"""What the real-kernel tier runs inside the guest (Debian's kernel), through the agent's stable interfaces.

1. The agent as a node runs it (``kube-netpol run``, every backend default:
   ``--queue-backend auto``): its /statusz must report the native backend,
   then ``kube-netpol cleanup`` must leave no table behind.
2. The dataplane conformance subset covering every rule kind.
3. pytest on the tests that need this kernel: the native ruleset in the
   kernel, a restart switching backends, real SCTP associations,
   fail-open/closed after SIGKILL and strict mode, with the native backend.

Results go to the share (``$REALKERNEL_SHARE``): ``summary.json``, pytest's
JUnit XML and the conformance JSON; the host test reads them. Exit status 0
only when every step passed. Run only inside the guest (see qemu_vm.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kube_netpol.tools.lab.timing import ENV as TIME_SCALE_ENV

REPO = Path(__file__).resolve().parents[2]
SHARED_EXAMPLES = REPO.parent / "shared" / "conformance" / "examples"
CORPUS = REPO / "tests" / "conformance"

#: The tests that must run (none may skip) on a kernel with the native queue backend and SCTP sockets.
#: Each e2e test costs a lab and an agent, ~16 s under emulation: only those whose kernel side differs
#: between the backends (the xt-only ones and backend-blind controls run on the host).
PYTEST_SELECTION = (
    "tests/dataplane/test_nftables_dataplane.py::test_detection_matches_kernel_and_leaves_nothing",
    "tests/dataplane/test_nftables_dataplane.py::test_start_builds_table_sets_chain_and_rules[nft]",
    "tests/dataplane/test_nftables_dataplane.py::test_a_restart_with_the_other_backend_leaves_only_its_rules",
    "tests/e2e/test_kernel_capabilities.py::test_real_sctp_associations_follow_the_policy",
    # Debian's 6.1: auto keeps the netfilter bug 1766 workaround (the host's 6.18 drops it).
    "tests/e2e/test_kernel_capabilities.py::test_auto_turns_the_bug_1766_workaround_on_exactly_before_kernel_6_12",
    "tests/e2e/test_failure_modes.py::test_fail_open_traffic_to_managed_pods_flows_after_the_agent_is_killed",
    "tests/e2e/test_failure_modes.py::test_fail_closed_new_connections_to_selected_pods_are_dropped_after_the_agent_is_killed",
    "tests/e2e/test_failure_modes.py::test_graceful_stop_keeps_rules_only_when_failing_open[True]",
    "tests/e2e/test_strict_mode.py::test_deny_policy_cuts_an_established_connection_only_in_strict_mode[True]",
    # The verdict memory's remember chain follows the native queue at priority 96 (xt: iptables' mangle).
    "tests/e2e/test_verdict_memory.py::test_a_remembered_accept_is_answered_by_the_kernel_and_denied_right_after_a_policy_change",
    "tests/e2e/test_verdict_memory.py::test_a_remembered_drop_is_allowed_after_the_policy_is_deleted",
    # DNS answers are queued by their own rule (native queue with the answer bit; xt: iptables' mangle).
    "tests/e2e/test_dns_observation.py::test_a_real_answer_through_the_queue_teaches_the_agent",
)
#: Every rule kind at least once, in as few scenarios as possible: each costs a lab and an agent
#: (~17 s under emulation).
CONFORMANCE_SELECTION = {
    "NetworkPolicy ingress, named ports, multi-step (pod relabel)": SHARED_EXAMPLES / "04-named-port-and-relabel.yaml",
    "NetworkPolicy egress, ipBlock with except, IPv6": CORPUS / "networkpolicy" / "ipv6-egress-ipblock-except.yaml",
    "NetworkPolicy port ranges (endPort), TCP and UDP": CORPUS / "networkpolicy" / "endport-range-per-protocol.yaml",
    "SCTP, UDP and TCP isolated": CORPUS / "networkpolicy" / "sctp-udp-tcp-isolated.yaml",
    "ANP Allow and Deny, port ranges, SCTP/UDP/TCP": CORPUS / "anp" / "npa-anp-port-range-combined.yaml",
    "ANP Pass to NetworkPolicy, BANP": CORPUS / "anp" / "pass-to-networkpolicy.yaml",
}
STATUS_ADDRESS = "127.0.0.1:9080"
#: Seconds the agent may take to become ready under emulation (Python alone starts ~20x slower).
AGENT_READY_TIMEOUT = 120.0


def say(message: str) -> None:
    print(f"realkernel: {message}", flush=True)


def _get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{STATUS_ADDRESS}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check_agent_backend(workdir: Path) -> dict[str, Any]:
    """Run the agent with its defaults in this (the guest's root) namespace; what it reports, then clean up."""
    manifests = workdir / "manifests"
    manifests.mkdir()
    log_path = workdir / "agent.log"
    argv = [sys.executable, "-m", "kube_netpol", "run", "--manifests", str(manifests),
            "--hostname-override", "realkernel", "--metrics-bind-address", STATUS_ADDRESS]  # fmt: skip
    result: dict[str, Any] = {"ok": False}
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = _wait_ready(agent)
            result["statusz"] = status
            result["readyz"] = _get("/readyz")[0] if status is not None else 0
        finally:
            agent.send_signal(signal.SIGTERM)
            result["agent_exit"] = agent.wait(30)
    log_text = log_path.read_text(errors="replace")
    result["ready_log"] = next((line for line in log_text.splitlines() if "agent ready" in line), "")
    result["backend"] = (result.get("statusz") or {}).get("queue_backend", "")
    # Failing open (the default), a stopped agent keeps its table: packets bypass the unread queue.
    result["tables_after_stop"] = _tables()
    cleanup = subprocess.run([sys.executable, "-m", "kube_netpol", "cleanup"], capture_output=True, text=True)
    result["cleanup_exit"] = cleanup.returncode
    result["tables_after_cleanup"] = _tables()
    xt = [subprocess.run([b], capture_output=True, text=True, check=True).stdout for b in ("iptables-save", "ip6tables-save")]
    result["xt_rules_after_cleanup"] = [line for out in xt for line in out.splitlines() if line.startswith("-A ")]
    result["ok"] = (
        result["backend"] == "nft" and result["readyz"] == 200 and result["agent_exit"] == 0
        and "kube-netpol" in result["tables_after_stop"] and result["cleanup_exit"] == 0
        and "kube-netpol" not in result["tables_after_cleanup"] and not result["xt_rules_after_cleanup"]
    )  # fmt: skip
    if not result["ok"]:
        print(log_text[-4000:], cleanup.stdout, cleanup.stderr, sep="\n", flush=True)
    return result


def _tables() -> list[str]:
    """Names of the kernel's nftables tables (``nft list tables`` says "table FAMILY NAME" per line)."""
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return [line.split()[2] for line in listed.splitlines() if len(line.split()) == 3]


def _wait_ready(agent: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            code, body = _get("/statusz")
        except OSError:
            code, body = 0, b""
        if code == 200:
            status: dict[str, Any] = json.loads(body)
            if status.get("ready"):
                return status
        time.sleep(0.2)
    return None


def loaded_modules() -> list[str]:
    return sorted(line.split()[0] for line in Path("/proc/modules").read_text().splitlines() if line)


def _timed(argv: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    status = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL).returncode
    return status, round(time.monotonic() - started, 1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0, help="KUBE_NETPOL_LAB_TIME_SCALE for the lab tools")
    args = parser.parse_args(argv)
    os.environ[TIME_SCALE_ENV] = str(args.time_scale)  # the children (pytest, conformance) read it
    share = Path(os.environ["REALKERNEL_SHARE"])
    summary: dict[str, Any] = {"kernel": os.uname().release, "time_scale": args.time_scale}
    say(f"kernel {summary['kernel']}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        summary["agent"] = check_agent_backend(Path(tmp))
    summary["agent"]["seconds"] = round(time.monotonic() - started, 1)
    say(f"queue backend {summary['agent']['backend'] or '(none reported)'} (kube-netpol run, --queue-backend auto)")

    summary["conformance"] = _timed([
        sys.executable, "-m", "kube_netpol", "conformance", "run", "--mode", "dataplane",
        "--json", str(share / "conformance.json"), *map(str, CONFORMANCE_SELECTION.values()),
    ])  # fmt: skip
    # Before pytest, whose backend-switch test uses xt on purpose: so far every agent chose by itself.
    summary["modules_before_pytest"] = loaded_modules()
    summary["pytest"] = _timed([
        sys.executable, "-m", "pytest", "-q", "-rs", "--durations=10", "-p", "no:cacheprovider",
        f"--junitxml={share / 'pytest.xml'}", *PYTEST_SELECTION,
    ])  # fmt: skip
    summary["modules"] = loaded_modules()
    (share / "summary.json").write_text(json.dumps(summary, indent=1))
    ok = summary["agent"]["ok"] and summary["pytest"][0] == 0 and summary["conformance"][0] == 0
    say(f"{'passed' if ok else 'FAILED'}: agent {summary['agent']['ok']}, pytest exit {summary['pytest'][0]} "
        f"({summary['pytest'][1]} s), conformance exit {summary['conformance'][0]} ({summary['conformance'][1]} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
