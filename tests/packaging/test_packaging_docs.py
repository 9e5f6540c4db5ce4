"""The packaging docs say what the code and the chart do."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging_helpers import REPO, check_packaging

from kube_netpol.cli import build_parser
from kube_netpol.plugins import registry_for

DOCS = REPO / "docs"
PACKAGING_DOCS = ("install.md", "configuration.md", "upgrade.md", "troubleshooting.md")
#: Docs whose links are checked too (their code blocks hold usage synopses, not commands).
LINKED_DOCS = (*PACKAGING_DOCS, "observability.md", "development.md", "advise.md")


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
    for name in LINKED_DOCS:
        text = (DOCS / name).read_text()
        for target, anchor in re.findall(r"\]\(([\w-]*\.md)?(?:#([\w-]+))?\)", text):
            target_path = DOCS / (target or name)
            assert target_path.exists(), f"{name} links to missing {target}"
            if anchor:
                assert anchor in _anchors(target_path), f"{name} links to missing {target}#{anchor}"


# --------------------------------------------------------------------------- README: the first hour

def _first_hour_commands() -> list[str]:
    """The commands of the README's "Your first hour" table (one per row)."""
    section = (REPO / "README.md").read_text().split("## Your first hour", 1)[1].split("\n## ", 1)[0]
    return [cell.replace("\\|", "|") for cell in re.findall(r"^\| [^|]+ \| `(.+)` \|$", section, re.M)]


def test_readme_first_hour_commands_are_true() -> None:
    commands = _first_hour_commands()
    assert len(commands) == 7, commands
    metrics_doc = (DOCS / "observability.md").read_text()
    for command in commands:
        words = shlex.split(command.split(" | ")[0])
        program, args = words[0], words[1:]
        if program.startswith("./scripts/"):
            assert os.access(REPO / program, os.X_OK), f"{program} is not an executable script"
        elif program == ".venv/bin/kube-netpol":
            build_parser().parse_args(args)  # SystemExit (a failure) if the CLI rejects it
            for flag in ("--scenario",):
                if flag in args:
                    assert (REPO / args[args.index(flag) + 1]).is_file()
        elif program == "kubectl":
            assert args[:2] in (["apply", "-f"], ["delete", "-f"]) and (REPO / args[2]).is_file(), command
        elif program == "curl":
            metric = re.search(r"\^(\w+)", command)
            assert metric and f"`{metric.group(1)}`" in metrics_doc, command
            assert args[-1].endswith(":9080/metrics")  # the default --metrics-bind-address
        else:
            pytest.fail(f"unchecked command in the README: {command}")


def test_readme_first_hour_explain_gives_the_verdict_it_promises() -> None:
    (explain,) = [c for c in _first_hour_commands() if "--scenario" in c]
    words = shlex.split(explain)[1:]
    result = subprocess.run([sys.executable, "-m", "kube_netpol", *words], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # 1: denied
    assert "verdict: DENY" in result.stdout and "y/a" in result.stdout and "x/b" in result.stdout


def test_license_is_the_apache_2_0_text_pyproject_names() -> None:
    import tomllib

    text = (REPO / "LICENSE").read_text()
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert text.rstrip().endswith("limitations under the License.")
    assert len(text) > 11000  # the full text, not a notice
