"""The agent's flags: names and defaults compatible with the reference implementation, plus ours."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml

from kube_netpol.dataplane.kernel_release import fixes_bug_1766
from kube_netpol.dataplane.ruleset import DEFAULT_MEMORY_TIMEOUT, DEFAULT_NEW_FLOW_LIMIT
from kube_netpol.plugins import BUILTIN_ORDER

#: The kernel's verdict memory: off until issue 16's figures hold (docs/performance.md, "Verdict memory:
#: the default"). On 2026-12-03 cached keys reached 64-66% of the lab's UDP flows/s without conntrack and
#: 88-89% with it, and each policy change took 3-4 ms more; on 2026-12-07, without the bug 1766
#: workaround's chains, 75% and 92%, and a cached key's connect() p50 +4 to +8 µs over conntrack alone
#: (+18 to +21 over none) run by run, +0.6 to +3.5 switched pair by pair (+8 to +11 over none). Were
#: it on, decision records would still turn it off unless the flag is given (``verdict_memory_of``):
#: the kernel's answers would have no record.
DEFAULT_VERDICT_MEMORY = False

_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def parse_bool(text: str) -> bool:
    """Go-style boolean flag values, so `--fail-open=false` works as with the reference."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def parse_bind_address(text: str) -> tuple[str, int]:
    """`:9080`, `0.0.0.0:9080`, `[::1]:9080`, or `0` to disable: (host, port).

    As with the reference's Go listener, an empty or unspecified host (`:9080`,
    `0.0.0.0:9080`, `[::]:9080`) serves IPv4 and IPv6 (kube_netpol.agent.http).
    """
    if text == "0":
        return ("", 0)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid bind address {text!r} (expected [host]:port, e.g. :9080)")
    return (host.strip("[]"), int(port_text))


def parse_queue_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid queue number {text!r} (0 to 65535)")
    return value


def parse_memory_timeout(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"verdict memory timeout must be whole seconds, not {text!r}") from None
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"verdict memory timeout {value} out of range 1-86400 seconds")
    return value


def _memory_default_text() -> str:
    if DEFAULT_VERDICT_MEMORY:
        return "true; false with --log-decisions or --decision-log, whose records need every connection judged"
    return "false"


def parse_bool_or_auto(text: str) -> bool | None:
    """``true``/``false`` as ``parse_bool``, or ``auto`` (None): the agent decides from the node."""
    if text.strip().lower() == "auto":
        return None
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (use true, false or auto)") from None


def bug_1766_fix_of(args: argparse.Namespace, release: str | None = None) -> bool:
    """``--netfilter-bug-1766-fix`` as given; ``auto``, on unless the kernel (``release``, default this
    node's) is known to fix the bug (kube_netpol.dataplane.kernel_release)."""
    if args.netfilter_bug_1766_fix is not None:
        return bool(args.netfilter_bug_1766_fix)
    return not fixes_bug_1766(os.uname().release if release is None else release)


def verdict_memory_of(args: argparse.Namespace) -> bool:
    """``--verdict-memory`` as given; unset, the default, except that decision records turn it off
    (the connections the kernel answered would reach no record)."""
    if args.verdict_memory is not None:
        return bool(args.verdict_memory)
    return DEFAULT_VERDICT_MEMORY and not (args.log_decisions or args.decision_log)


def parse_new_flow_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"invalid new flow limit {text!r} (new flows per second per source, 0 for none)")
    return value


def parse_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid rate {text!r} (a positive number of records per second)")
    return value


def parse_evaluators(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("at least one evaluator is needed")
    return names


@dataclass(frozen=True)
class AgentConfig:
    kubeconfig: str | None = None
    manifests: str | None = None
    watch_list: bool = True
    fail_open: bool = True
    nfqueue_id: int = 100
    metrics_bind_address: tuple[str, int] = ("", 9080)
    hostname_override: str | None = None
    strict_mode: bool = True
    netfilter_bug_1766_fix: bool = True
    enable_admin_network_policy: bool = False
    enable_baseline_admin_network_policy: bool = False
    enable_cluster_network_policy: bool = False
    queue_backend: str = "auto"
    nftables_table: str = "kube-netpol"
    new_flow_rate_limit: int = DEFAULT_NEW_FLOW_LIMIT
    verdict_memory: bool = DEFAULT_VERDICT_MEMORY
    verdict_memory_timeout: int = DEFAULT_MEMORY_TIMEOUT
    evaluators: tuple[str, ...] | None = None
    evaluator_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    exempt_root_traffic: bool = True
    audit: bool = False
    log_decisions: bool = False
    decision_log: str | None = None
    decision_log_rate: float = 100.0
    decision_log_denied_only: bool = False
    log_format: str = "text"
    verbosity: int = 0
    pod_netns_dir: str | None = None
    observe_dns: bool | None = None  # None: when the pipeline has a ClusterNetworkPolicy tier
    pod_netns_lookup: str = "cgroup"
    host_proc: str = "/proc"

    @property
    def dns_observation(self) -> bool:
        """Queue DNS answers to managed pods and learn from them (ClusterNetworkPolicy ``domainNames``)."""
        if self.observe_dns is not None:
            return self.observe_dns
        return any(name.startswith("clusternetworkpolicy-") for name in self.pipeline)

    @property
    def node_name(self) -> str:
        """--hostname-override, else NODE_NAME (the downward API), else the host name."""
        return self.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()

    @property
    def pipeline(self) -> tuple[str, ...]:
        if self.evaluators is not None:
            return self.evaluators
        enabled = {
            "adminnetworkpolicy": self.enable_admin_network_policy,
            "baselineadminnetworkpolicy": self.enable_baseline_admin_network_policy,
            # One switch for the v1alpha2 API: both of its tiers.
            "clusternetworkpolicy-admin": self.enable_cluster_network_policy,
            "clusternetworkpolicy-baseline": self.enable_cluster_network_policy,
        }
        return tuple(name for name in BUILTIN_ORDER if enabled.get(name, True))


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    from kube_netpol import __version__

    parser.add_argument("--version", action="version", version=f"kube-netpol {__version__}",
                        help="print the version and exit")


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    bool_flag: dict[str, Any] = {"nargs": "?", "const": True, "type": parse_bool, "metavar": "BOOL"}
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    parser.add_argument("--manifests", metavar="DIR", help="read objects from YAML/JSON files in DIR instead of the API server")
    parser.add_argument("--watch-list", default=True,
                        help="stream each kind's initial state from the API server (a watch-list, sendInitialEvents) "
                             "where the client supports it, falling back to paged lists where the server does not; "
                             "false: paged lists always (default true)", **bool_flag)
    parser.add_argument("--fail-open", default=True, help="let traffic through when the agent cannot judge it (default true)", **bool_flag)
    parser.add_argument("--nfqueue-id", type=parse_queue_id, default=100, help="NFQUEUE number (default 100)")
    parser.add_argument("--metrics-bind-address", type=parse_bind_address, default=("", 9080),
                        help="address of /metrics, /healthz and /readyz (default :9080, IPv4 and IPv6; 0 disables)")
    parser.add_argument("--hostname-override", help="this node's name (default: $NODE_NAME, else the host name)")
    parser.add_argument("--strict-mode", default=True, help="cut established connections that policies no longer allow (default true)", **bool_flag)
    parser.add_argument("--netfilter-bug-1766-fix", default=None, nargs="?", const=True, type=parse_bool_or_auto,
                        metavar="BOOL|auto",
                        help="judge new DNS requests on prerouting, working around netfilter bug 1766 (conntrack "
                             "races on parallel UDP, e.g. DNS); auto: on for kernels before 6.12, which fixed it "
                             "(default auto)")
    parser.add_argument("--enable-admin-network-policy", default=False, help="enforce AdminNetworkPolicy (default false)", **bool_flag)
    parser.add_argument("--enable-baseline-admin-network-policy", default=False,
                        help="enforce BaselineAdminNetworkPolicy (default false)", **bool_flag)
    parser.add_argument("--enable-cluster-network-policy", default=False,
                        help="enforce ClusterNetworkPolicy v1alpha2, both tiers (default false)", **bool_flag)
    parser.add_argument("--observe-dns", default=None,
                        help="queue every DNS answer (UDP from port 53) to a managed pod and learn the names it "
                             "resolves, for ClusterNetworkPolicy domainNames (default: true when ClusterNetworkPolicy "
                             "is enforced)", **bool_flag)
    parser.add_argument("--queue-backend", choices=("auto", "nft", "xt"), default="auto",
                        help="how packets reach the queue: native nftables queue, xtables NFQUEUE, or detect (default auto)")
    parser.add_argument("--nftables-table", default="kube-netpol", help="name of our inet table (default kube-netpol)")
    parser.add_argument("--new-flow-rate-limit", type=parse_new_flow_limit, default=DEFAULT_NEW_FLOW_LIMIT, metavar="N",
                        help="new connections per second one source address may send to the queue; beyond, they are "
                             f"dropped before it, so that one pod's flood cannot delay the others' (default "
                             f"{DEFAULT_NEW_FLOW_LIMIT}; 0: no limit)")
    parser.add_argument("--verdict-memory", default=None,
                        help="let the kernel remember the agent's verdicts per (source, destination, protocol, "
                             "destination port) until the next policy change, so that repeat connections skip the "
                             f"queue (default {_memory_default_text()})", **bool_flag)
    parser.add_argument("--verdict-memory-timeout", type=parse_memory_timeout, default=DEFAULT_MEMORY_TIMEOUT,
                        metavar="SECONDS",
                        help=f"longest time the kernel remembers a verdict (default {DEFAULT_MEMORY_TIMEOUT})")
    parser.add_argument("--evaluators", type=parse_evaluators,
                        help="comma-separated pipeline order (default: clusternetworkpolicy-admin,adminnetworkpolicy,networkpolicy,"
                             "baselineadminnetworkpolicy,clusternetworkpolicy-baseline as enabled)")
    parser.add_argument("--evaluator-config", metavar="FILE", help="YAML file: evaluator name -> its settings")
    parser.add_argument("--exempt-root-traffic", default=True,
                        help="never judge traffic of the node's root-owned sockets, e.g. kubelet probes (default true)", **bool_flag)
    parser.add_argument("--audit", default=False, help="judge and record every connection but accept all (default false)", **bool_flag)
    parser.add_argument("--log-decisions", default=False,
                        help="write one JSON record per judged connection to stderr (default false)", **bool_flag)
    parser.add_argument("--decision-log", metavar="FILE",
                        help="append decision records to FILE instead of stderr; implies --log-decisions")
    parser.add_argument("--decision-log-rate", type=parse_rate, default=100.0, metavar="N",
                        help="at most N decision records per second; the rest are counted and reported (default 100)")
    parser.add_argument("--decision-log-denied-only", default=False,
                        help="record only denied connections, those audit mode let through included (default false)", **bool_flag)
    parser.add_argument("--pod-netns-dir", metavar="DIR",
                        help="secondary networks: each pod's network namespace is DIR/<namespace>_<name> (a bind "
                             "mount or symlink), where the agent diverts its secondary interfaces (docs/multinetwork.md); "
                             "implies --pod-netns-lookup=dir")
    parser.add_argument("--pod-netns-lookup", choices=("cgroup", "dir"), default=None,
                        help="secondary networks: how the agent finds a pod's network namespace: cgroup (a process "
                             "in the cgroup of the pod's UID, read from --host-proc; needs hostPID) or dir "
                             "(--pod-netns-dir) (default dir with --pod-netns-dir, else cgroup)")
    parser.add_argument("--host-proc", metavar="DIR", default="/proc",
                        help="the node's /proc, for --pod-netns-lookup=cgroup (default /proc: hostPID)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format (default text)")
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="verbosity", help="more logs (-v, -vv)")


def load_evaluator_settings(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--evaluator-config {path}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"--evaluator-config {path}: expected a mapping of evaluator name to settings")
    return data


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if args.kubeconfig and args.manifests:
        raise ValueError("--kubeconfig and --manifests exclude each other")
    lookup = args.pod_netns_lookup or ("dir" if args.pod_netns_dir else "cgroup")
    if lookup == "dir" and not args.pod_netns_dir:
        raise ValueError("--pod-netns-lookup=dir needs --pod-netns-dir")
    if lookup == "cgroup" and args.pod_netns_dir:
        raise ValueError("--pod-netns-dir is for --pod-netns-lookup=dir")
    return AgentConfig(
        kubeconfig=args.kubeconfig,
        manifests=args.manifests,
        watch_list=args.watch_list,
        fail_open=args.fail_open,
        nfqueue_id=args.nfqueue_id,
        metrics_bind_address=args.metrics_bind_address,
        hostname_override=args.hostname_override,
        strict_mode=args.strict_mode,
        netfilter_bug_1766_fix=bug_1766_fix_of(args),
        enable_admin_network_policy=args.enable_admin_network_policy,
        enable_baseline_admin_network_policy=args.enable_baseline_admin_network_policy,
        enable_cluster_network_policy=args.enable_cluster_network_policy,
        queue_backend=args.queue_backend,
        nftables_table=args.nftables_table,
        new_flow_rate_limit=args.new_flow_rate_limit,
        verdict_memory=verdict_memory_of(args),
        verdict_memory_timeout=args.verdict_memory_timeout,
        evaluators=args.evaluators,
        evaluator_settings=load_evaluator_settings(args.evaluator_config),
        exempt_root_traffic=args.exempt_root_traffic,
        audit=args.audit,
        log_decisions=args.log_decisions or bool(args.decision_log),
        decision_log=args.decision_log,
        decision_log_rate=args.decision_log_rate,
        decision_log_denied_only=args.decision_log_denied_only,
        log_format=args.log_format,
        verbosity=args.verbosity,
        pod_netns_dir=args.pod_netns_dir,
        observe_dns=args.observe_dns,
        pod_netns_lookup=lookup,
        host_proc=args.host_proc,
    )
