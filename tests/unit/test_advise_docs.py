"""docs/advise.md's worked example is real: every ``$ kube-netpol ...`` of its console blocks runs here,
on the example's files, and prints exactly what the doc shows (and ``$ cat FILE`` shows the file it wrote)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from kube_netpol.advise.flows import distinct_flows, read_records
from kube_netpol.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "advise.md"
EXAMPLE = REPO / "docs" / "examples" / "advise"


def console_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Each ```console block as (command, expected output) pairs."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        blocks.append([(command, "\n".join(lines)) for command, lines in steps])
    return blocks


def run(command: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    words = shlex.split(command)
    if words[0] == "cat":
        return 0, (workdir / words[1]).read_text()
    if words[0] == "grep":  # grep PATTERN FILE, the pattern a Python regular expression here
        lines = (workdir / words[2]).read_text().splitlines()
        return 0, "".join(line + "\n" for line in lines if re.search(words[1], line))
    assert words[0] == "kube-netpol", command
    monkeypatch.chdir(REPO)
    args = [str(workdir / w) if i and words[i - 1] in ("-o", "--output") else w for i, w in enumerate(words)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args[1:])
    return code, out.getvalue() + err.getvalue()


def test_the_worked_example_prints_what_the_doc_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = console_blocks(DOC.read_text())
    commands = [command for block in blocks for command, _ in block]
    assert sum(c.startswith("kube-netpol advise") for c in commands) >= 4, commands
    for block in blocks:
        for command, expected in block:
            code, output = run(command, tmp_path, monkeypatch)
            assert output.rstrip("\n") == expected.rstrip("\n"), f"`{command}` prints something else:\n{output}"
            # The doc shows a failed verify (exit 1) as such; everything else succeeds.
            assert code == (1 if "would now be denied" in expected else 0), command


def test_the_example_records_are_the_agents_and_cover_the_example_traffic() -> None:
    """scripts/advise_example.py wrote them (the e2e tier runs it again and compares)."""
    lines = (EXAMPLE / "decisions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r["logger"] == "kube_netpol.decisions" and r["audit"] is True for r in records)
    flows = distinct_flows(read_records(lines).flows)
    assert len(flows) == 7 and all(f.passed for f in flows)


def test_the_recipes_commands_parse() -> None:
    """The `kube-netpol ...` lines of docs/advise.md's other code blocks (the observing recipe) are real flags."""
    from kube_netpol.cli import build_parser

    text = re.sub(r"```console\n.*?```", "", DOC.read_text(), flags=re.S)
    commands = [line.strip() for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.strip().startswith("kube-netpol ")]
    assert commands, "no recipe commands found"
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])
