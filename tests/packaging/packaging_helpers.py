"""Helpers of the packaging tests: scripts/check_packaging.py as a module, manifests, the agent's parser.

(A module of its own rather than conftest.py: tests import from it by name, and
other test folders have their own conftest.py.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

#: Values that turn on everything optional (besides the defaults).
FULL_VALUES: dict[str, Any] = {
    "adminNetworkPolicy": {"enabled": True},
    "baselineAdminNetworkPolicy": {"enabled": True},
    "clusterNetworkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True},
}


def _load_check_packaging() -> ModuleType:
    path = REPO / "scripts" / "check_packaging.py"
    spec = importlib.util.spec_from_file_location("check_packaging", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_packaging"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check_packaging = _load_check_packaging()


def load_objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def agent_container(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def parse_agent_args(args: list[str]) -> argparse.Namespace:
    """Parse a container's args with `kube-netpol run`'s own parser; fail on anything it rejects."""
    parser = check_packaging.run_parser()
    parser.exit_on_error = False
    try:
        namespace, unknown = parser.parse_known_args(args)
    except (SystemExit, argparse.ArgumentError) as err:
        pytest.fail(f"kube-netpol run rejects {args}: {err}")
    assert not unknown, f"flags that kube-netpol run does not have: {unknown}"
    return namespace


def named(objects: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def rbac_rules(objects: Iterable[dict[str, Any]], role: dict[str, Any] | None = None) -> set[tuple[str, str, str]]:
    """The ClusterRole's (or ``role``'s) rules as (apiGroup, resource, verb) triples."""
    rules = set()
    for rule in (role or only(objects, "ClusterRole"))["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    rules.add((group, resource, verb))
    return rules


def watched_rules(args: list[str]) -> set[tuple[str, str, str]]:
    """get/list/watch on exactly the resources an agent started with ``args`` watches."""
    from kube_netpol.agent.config import config_from_args
    from kube_netpol.plugins import registry_for

    config = config_from_args(parse_agent_args(args))
    watched = {(kind.group, kind.plural) for kind in registry_for(config.pipeline)}
    return {(group, plural, verb) for group, plural in watched for verb in ("get", "list", "watch")}
