"""The layer rule: what runs on a node never imports the tools, and no package imports a higher layer.

The order is written down once, here and in docs/development.md ("Layout"):
a package may import itself and packages of lower layers only.
"""

from __future__ import annotations

import ast
import pathlib

import kube_netpol

ROOT = pathlib.Path(kube_netpol.__file__).parent

#: Lowest first. Within a layer, packages do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "api"),  # the plugin contract (and the version)
    ("dns",),  # pure: DNS answers, domainNames patterns, the per-pod name cache
    ("packet", "policy", "state", "engine"),  # pure: bytes, policies, cluster records, snapshots
    ("evaluators",),  # the built-in evaluators: api and policy only, as a plugin would be
    ("plugins",),  # evaluator discovery, assembling the engine over the state
    ("sources", "dataplane", "observability", "logs"),  # I/O at the edges
    ("agent",),  # what `kube-netpol run` wires together
    ("advise",),  # policies proposed from flows and workloads, the policy controller: in the image, not on a node
    ("tools", "cli"),  # the lab, conformance, the fake API server, explain, advise's CLI; the command line
    ("__main__",),  # python -m kube_netpol
)
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}
#: What a built-in evaluator may import: what a third-party plugin can (the API) and its own policy modules.
EVALUATOR_IMPORTS = {"api", "policy", "evaluators"}


def package_of(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_packages(path: pathlib.Path) -> set[str]:
    """kube_netpol packages ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kube_netpol":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def modules() -> list[pathlib.Path]:
    return [p for p in ROOT.rglob("*.py") if "generated" not in p.parts]


def test_every_package_has_a_layer() -> None:
    assert {package_of(p) for p in modules()} <= set(LAYER_OF)


def test_no_package_imports_a_higher_layer_or_its_own_layer() -> None:
    problems = []
    for path in modules():
        package = package_of(path)
        for other in imported_packages(path) - {package}:
            if LAYER_OF[other] >= LAYER_OF[package]:
                problems.append(f"{path.relative_to(ROOT)} imports kube_netpol.{other}")
    assert problems == []


def test_nothing_that_runs_on_a_node_imports_the_tools() -> None:
    runtime = [p for p in modules() if package_of(p) not in ("tools", "cli", "__main__")]
    assert [str(p.relative_to(ROOT)) for p in runtime if "tools" in imported_packages(p)] == []


def test_built_in_evaluators_use_only_the_api_and_their_policy_modules() -> None:
    for path in (ROOT / "evaluators").rglob("*.py"):
        assert imported_packages(path) <= EVALUATOR_IMPORTS, path


def test_the_rule_catches_a_violation(tmp_path: pathlib.Path) -> None:
    module = ROOT / "engine" / "_layer_probe.py"
    module.write_text("from kube_netpol.tools import lab\nfrom kube_netpol.state import ClusterState\n")
    try:
        assert imported_packages(module) == {"tools", "state"}
        assert any(LAYER_OF[other] >= LAYER_OF["engine"] for other in imported_packages(module))
    finally:
        module.unlink()
