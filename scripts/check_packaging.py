#!/usr/bin/env python3
"""Packaging tools that need no cluster and no helm binary.

    python scripts/check_packaging.py render [--values-json JSON] [--release NAME] [--namespace NS]
    python scripts/check_packaging.py lint [--values-json JSON]
    python scripts/check_packaging.py docs [--write]
    python scripts/check_packaging.py dashboard [--write]

``render`` prints the chart's manifests as ``helm template`` would, and
``lint`` runs ``helm lint``, both with the real Helm engine from the
``helm-sdkpy`` package. helm-sdkpy has no template action, so ``render``
installs the chart into a stand-in API server on 127.0.0.1 that answers
discovery and accepts every create, with Helm's release storage in memory
(HELM_DRIVER=memory); the release it returns holds the rendered manifest.
Helm runs in a child process: its Go runtime reads the environment once, when
the library is loaded, and keeps global state.

``docs`` checks (or rewrites) the flag table in docs/configuration.md against
``kube-netpol run``'s parser; ``dashboard`` checks (or copies) the chart's
copy of docs/grafana-dashboard.json. tests/packaging imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kube-netpol"
CONFIGURATION_DOC = REPO / "docs" / "configuration.md"
DASHBOARD_SOURCE = REPO / "docs" / "grafana-dashboard.json"
DASHBOARD_IN_CHART = CHART / "dashboards" / "kube-netpol.json"

#: The version the stand-in API server reports (the chart's kubeVersion must accept it).
FAKE_KUBERNETES_VERSION = ("1", "33")
#: Helm's lint severities (helm.sh/helm/v4/pkg/chart/v2/lint/support).
SEVERITY_NAMES = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
WARNING = 2

GENERATED_BEGIN = "<!-- BEGIN GENERATED: kube-netpol run flags (python scripts/check_packaging.py docs --write) -->"
GENERATED_END = "<!-- END GENERATED -->"


class PackagingError(RuntimeError):
    """A render, lint or check failed; the message says why."""


# --------------------------------------------------------------------------- the stand-in API server

#: group/version -> resources (plural, kind, namespaced) that the chart may create.
_API_RESOURCES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "v1": (
        ("configmaps", "ConfigMap", True),
        ("namespaces", "Namespace", False),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
    ),
    "apps/v1": (("daemonsets", "DaemonSet", True), ("deployments", "Deployment", True)),
    "rbac.authorization.k8s.io/v1": (
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("clusterroles", "ClusterRole", False),
    ),
    "monitoring.coreos.com/v1": (
        ("prometheusrules", "PrometheusRule", True),
        ("servicemonitors", "ServiceMonitor", True),
    ),
}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _discovery(path: str) -> Any:
    """The legacy (unaggregated) discovery documents; None for other paths."""
    if path == "/version":
        major, minor = FAKE_KUBERNETES_VERSION
        return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for group_version in _API_RESOURCES:
            if "/" not in group_version:
                continue
            group, version = group_version.split("/")
            entry = {"groupVersion": group_version, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    group_version = path.removeprefix("/api/") if path.startswith("/api/") else path.removeprefix("/apis/")
    if path.startswith(("/api/", "/apis/")) and group_version in _API_RESOURCES:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": _VERBS}
                for plural, kind, namespaced in _API_RESOURCES[group_version]
            ],
        }
    return None


class _StandInHandler(BaseHTTPRequestHandler):
    """Discovery, 404 for every object (nothing exists yet), and creates echoed back."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        document = _discovery(self.path.split("?", 1)[0])
        if document is None:
            self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": "not found"})
        else:
            self._reply(200, document)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        created = json.loads(self.rfile.read(length) or b"{}")
        created.setdefault("metadata", {}).update(uid="00000000-0000-0000-0000-000000000000", resourceVersion="1")
        self._reply(201, created)

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _kubeconfig(port: int, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "stand-in", "user": {"token": "stand-in"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in", "namespace": namespace}}],
        "current-context": "stand-in",
    })


# --------------------------------------------------------------------------- Helm, in this process

def _helm_render_here(chart: Path, values: Mapping[str, Any], release: str, namespace: str) -> dict[str, Any]:
    """Install into the stand-in server; the release's manifest and notes. Needs HELM_DRIVER=memory."""
    import helm_sdkpy

    if os.environ.get("HELM_DRIVER") != "memory":
        raise PackagingError("rendering needs HELM_DRIVER=memory (use render_chart)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=_kubeconfig(server.server_port, namespace))
        release_info = asyncio.run(
            helm_sdkpy.Install(config).run(release, str(chart), values=dict(values) or None, wait=False, timeout=60)
        )
        # The install's answer leaves the hooks (`helm test` pods) out; the release's status has them.
        hooks = asyncio.run(helm_sdkpy.Status(config).run(release)).get("hooks") or []
    finally:
        server.shutdown()
    return {
        "manifest": release_info.get("manifest", ""),
        "notes": (release_info.get("info") or {}).get("notes", ""),
        "hooks": [{"events": hook.get("events") or [], "manifest": hook.get("manifest", "")} for hook in hooks],
    }


def _helm_lint_here(chart: Path) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default")
    return asyncio.run(helm_sdkpy.Lint(config).run(str(chart)))


# --------------------------------------------------------------------------- Helm, in a child process

def _child_env(home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HELM_DRIVER="memory",
        # Keep Helm's cache, config and data out of the user's home directory.
        HELM_CACHE_HOME=os.path.join(home, "cache"),
        HELM_CONFIG_HOME=os.path.join(home, "config"),
        HELM_DATA_HOME=os.path.join(home, "data"),
        KUBECONFIG=os.path.join(home, "no-kubeconfig"),
    )
    return env


def _run_child(args: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="kube-netpol-helm-") as home:
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            capture_output=True, text=True, env=_child_env(home), timeout=300, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("check_packaging: ")
        raise PackagingError(message or f"helm child exited with {result.returncode}")
    return result.stdout


@dataclass(frozen=True)
class Rendered:
    manifest: str
    notes: str
    hooks: tuple[tuple[tuple[str, ...], str], ...] = ()  # (events, manifest) of each hook

    def objects(self) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.manifest) if doc]

    def hook_objects(self, event: str) -> list[dict[str, Any]]:
        """The objects of the hooks run on ``event`` (e.g. "test" for `helm test`)."""
        return [doc for events, manifest in self.hooks if event in events for doc in yaml.safe_load_all(manifest) if doc]


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    chart: Path = CHART,
    release: str = "kube-netpol",
    namespace: str = "kube-system",
) -> Rendered:
    """The chart rendered by Helm with these values (like ``helm template``)."""
    out = _run_child(["_render", str(chart), json.dumps(values or {}), release, namespace])
    data = json.loads(out)
    hooks = tuple((tuple(hook["events"]), hook["manifest"]) for hook in data["hooks"])
    return Rendered(data["manifest"], data["notes"], hooks)


@dataclass(frozen=True)
class LintMessage:
    severity: int
    path: str

    def __str__(self) -> str:
        return f"{SEVERITY_NAMES.get(self.severity, self.severity)}: {self.path}"


@dataclass(frozen=True)
class LintResult:
    charts_linted: int
    messages: tuple[LintMessage, ...]
    errors: int

    @property
    def problems(self) -> tuple[LintMessage, ...]:
        """Warnings and errors (helm lint fails on errors, --strict also on warnings)."""
        return tuple(m for m in self.messages if m.severity >= WARNING)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def lint_chart(values: Mapping[str, Any] | None = None, *, chart: Path = CHART) -> LintResult:
    """``helm lint`` of the chart; with ``values``, of a copy whose values.yaml has them merged in.

    helm-sdkpy's lint takes no values, so the copy stands in for ``--set``.
    """
    with tempfile.TemporaryDirectory(prefix="kube-netpol-lint-") as workdir:
        target = chart
        if values:
            target = Path(workdir) / chart.name
            shutil.copytree(chart, target)
            defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
            (target / "values.yaml").write_text(yaml.safe_dump(_deep_merge(defaults, values), sort_keys=False))
        data = json.loads(_run_child(["_lint", str(target)]))
    messages = tuple(LintMessage(int(m.get("Severity", 0)), str(m.get("Path", ""))) for m in data.get("Messages") or ())
    return LintResult(int(data.get("TotalChartsLinted", 0)), messages, len(data.get("Errors") or ()))


# --------------------------------------------------------------------------- docs/configuration.md

def run_parser() -> argparse.ArgumentParser:
    """A parser with exactly the flags of ``kube-netpol run``."""
    sys.path.insert(0, str(REPO))
    from kube_netpol.agent.config import add_agent_arguments

    parser = argparse.ArgumentParser(prog="kube-netpol run", add_help=False)
    add_agent_arguments(parser)
    return parser


def _iter_flag_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


_DEFAULT_NOTE = re.compile(r"\s*\(default:?\s*(?P<text>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):  # a bind address
        host, port = value
        return f"{host}:{port}" if port else "0"
    return str(value)


def flag_rows() -> list[tuple[str, str, str, str]]:
    """(flags, value, default, meaning) for every flag of ``kube-netpol run``."""
    rows = []
    for action in _iter_flag_actions(run_parser()):
        help_text = action.help or ""
        note = _DEFAULT_NOTE.search(help_text)
        meaning = help_text[: note.start()] if note else help_text
        if isinstance(action, argparse._CountAction):
            value = "(repeat)"
        elif action.choices:
            value = "|".join(str(c) for c in action.choices)
        elif action.metavar and "BOOL" in action.metavar:
            value = action.metavar.replace("BOOL", "true|false")
        else:
            value = action.metavar or action.dest.upper()
        if action.default is None:
            default = note.group("text") if note else "(none)"
        else:
            default = _format_default(action.default)
        flags = ", ".join(action.option_strings)
        rows.append((flags, value, default, meaning.strip() or "-"))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def flag_table() -> str:
    lines = ["| flag | value | default | meaning |", "| --- | --- | --- | --- |"]
    for flags, value, default, meaning in flag_rows():
        flag_cell = ", ".join(f"`{f}`" for f in flags.split(", "))
        lines.append(f"| {flag_cell} | `{_cell(value)}` | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(lines)


def configuration_doc_with_table(text: str) -> str:
    """``text`` with the generated section replaced by the current flag table."""
    begin, end = text.find(GENERATED_BEGIN), text.find(GENERATED_END)
    if begin < 0 or end < begin:
        raise PackagingError(f"{CONFIGURATION_DOC} lacks the generated-section markers")
    return text[: begin + len(GENERATED_BEGIN)] + "\n" + flag_table() + "\n" + text[end:]


def check_docs(write: bool) -> bool:
    current = CONFIGURATION_DOC.read_text()
    wanted = configuration_doc_with_table(current)
    if wanted == current:
        return True
    if write:
        CONFIGURATION_DOC.write_text(wanted)
        return True
    return False


def check_dashboard(write: bool) -> bool:
    """The chart's dashboard is a byte copy of docs/grafana-dashboard.json (when that exists)."""
    if not DASHBOARD_SOURCE.exists():
        return True
    if DASHBOARD_IN_CHART.exists() and DASHBOARD_IN_CHART.read_bytes() == DASHBOARD_SOURCE.read_bytes():
        return True
    if write:
        shutil.copyfile(DASHBOARD_SOURCE, DASHBOARD_IN_CHART)
        return True
    return False


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print the chart's manifests (helm template)")
    render.add_argument("--values-json", default="{}", help='values as JSON, e.g. \'{"failOpen": false}\'')
    render.add_argument("--release", default="kube-netpol")
    render.add_argument("--namespace", default="kube-system")
    lint = commands.add_parser("lint", help="helm lint the chart")
    lint.add_argument("--values-json", default="{}")
    for name, what in (("docs", "docs/configuration.md's flag table"), ("dashboard", "the chart's dashboard copy")):
        command = commands.add_parser(name, help=f"check {what}")
        command.add_argument("--write", action="store_true", help="bring it up to date instead")
    child_render = commands.add_parser("_render")  # in-process: what render runs in its child
    child_render.add_argument("chart")
    child_render.add_argument("values_json")
    child_render.add_argument("release")
    child_render.add_argument("namespace")
    child_lint = commands.add_parser("_lint")
    child_lint.add_argument("chart")
    args = parser.parse_args(argv)

    try:
        if args.command == "render":
            rendered = render_chart(json.loads(args.values_json), release=args.release, namespace=args.namespace)
            print(rendered.manifest)
            for events, manifest in rendered.hooks:  # as `helm template` prints them, after the rest
                print(f"---\n# hook: {','.join(events)}\n{manifest}")
        elif args.command == "lint":
            result = lint_chart(json.loads(args.values_json))
            for message in result.messages:
                print(message)
            print(f"{result.charts_linted} chart(s) linted, {result.errors} error(s), {len(result.problems)} warning(s) or error(s)")
            return 1 if result.errors or result.problems else 0
        elif args.command in ("docs", "dashboard"):
            check = check_docs if args.command == "docs" else check_dashboard
            if not check(args.write):
                print(f"{args.command}: out of date; run: python scripts/check_packaging.py {args.command} --write",
                      file=sys.stderr)
                return 1
            print(f"{args.command}: up to date")
        elif args.command == "_render":
            out = _helm_render_here(Path(args.chart), json.loads(args.values_json), args.release, args.namespace)
            print(json.dumps(out))
        elif args.command == "_lint":
            print(json.dumps(_helm_lint_here(Path(args.chart))))
    except PackagingError as err:
        print(f"check_packaging: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - helm-sdkpy raises its own error classes; one line each
        print(f"check_packaging: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
