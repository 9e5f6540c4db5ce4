"""The packaging docs say what the code and the chart do."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging_helpers import REPO, check_packaging

from kube_netpol.cli import build_parser
from kube_netpol.plugins import registry_for

DOCS = REPO / "docs"
PACKAGING_DOCS = ("install.md", "configuration.md", "upgrade.md", "troubleshooting.md")


def test_flag_table_is_generated_from_the_parser() -> None:
    text = (DOCS / "configuration.md").read_text()
    assert check_packaging.configuration_doc_with_table(text) == text, (
        "docs/configuration.md's flag table is stale; run: python scripts/check_packaging.py docs --write"
    )


def test_flag_table_lists_every_flag_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index(check_packaging.GENERATED_BEGIN):text.index(check_packaging.GENERATED_END)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`-"):
            for flag in re.findall(r"`(-[^`]+)`", cells[0]):
                rows[flag] = cells[2]
    parser = check_packaging.run_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert set(rows) == flags
    assert rows["--fail-open"] == "true"
    assert rows["--nfqueue-id"] == "100"
    assert rows["--metrics-bind-address"] == ":9080"
    assert rows["--enable-admin-network-policy"] == "false"


def test_every_chart_value_is_documented() -> None:
    values = yaml.safe_load((REPO / "charts" / "kube-netpol" / "values.yaml").read_text())
    text = (DOCS / "configuration.md").read_text()
    missing = [key for key in values if not re.search(rf"`{re.escape(key)}[`.]", text)]
    assert not missing, f"values not described in docs/configuration.md: {missing}"


def _commands(path: Path) -> list[str]:
    """`kube-netpol ...` command lines inside the fenced code blocks of a doc (comments dropped)."""
    commands, in_block = [], False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block = not in_block
            continue
        if in_block and stripped.startswith("kube-netpol "):
            commands.append(stripped.split(" #", 1)[0].strip())
    return commands


def test_documented_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    commands = [command for name in PACKAGING_DOCS for command in _commands(DOCS / name)]
    assert any(c.startswith("kube-netpol cleanup") for c in commands)
    assert any(c.startswith("kube-netpol explain") for c in commands)
    for command in commands:
        words = [w.replace("NAME", "my-table") for w in shlex.split(command)[1:]]
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"documented command does not parse: {command}")


def test_install_doc_names_the_crds_the_agent_watches() -> None:
    text = (DOCS / "install.md").read_text()
    for kind in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy"):
        resource = registry_for()[kind]
        assert f"{resource.plural}.{resource.group}" in text
        assert f"policy.networking.k8s.io_{resource.plural}.yaml" in text


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_docs_links_resolve() -> None:
    for name in PACKAGING_DOCS:
        text = (DOCS / name).read_text()
        for target, anchor in re.findall(r"\]\(([\w-]*\.md)?(?:#([\w-]+))?\)", text):
            target_path = DOCS / (target or name)
            assert target_path.exists(), f"{name} links to missing {target}"
            if anchor:
                assert anchor in _anchors(target_path), f"{name} links to missing {target}#{anchor}"
