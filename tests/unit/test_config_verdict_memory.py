"""--verdict-memory: its default (off until issue 16's figures hold), never on by default with decision records, the flag wins."""

from __future__ import annotations

import argparse

import pytest

from kube_netpol.agent import config
from kube_netpol.agent.config import DEFAULT_VERDICT_MEMORY, AgentConfig, add_agent_arguments, config_from_args


def parse(*args: str) -> AgentConfig:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return config_from_args(parser.parse_args(list(args)))


def test_the_memory_is_off_by_default() -> None:
    assert DEFAULT_VERDICT_MEMORY is False  # docs/performance.md, "Verdict memory: the default"
    assert parse().verdict_memory is AgentConfig().verdict_memory is False
    assert parse().verdict_memory_timeout == 60


@pytest.mark.parametrize("default", [False, True])
def test_unset_the_default_holds_except_with_decision_records(default: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turning the default on (one line) keeps decision records complete: they turn it off again."""
    monkeypatch.setattr(config, "DEFAULT_VERDICT_MEMORY", default)
    assert parse().verdict_memory is default
    assert parse("--log-decisions").verdict_memory is False
    assert parse("--decision-log", "/tmp/d.jsonl").verdict_memory is False


@pytest.mark.parametrize("records", [("--log-decisions",), ("--log-decisions=true",), ("--decision-log", "/tmp/d.jsonl")])
def test_decision_records_turn_the_default_off(records: tuple[str, ...]) -> None:
    """Connections the kernel answers never reach the agent, so they would have no record."""
    assert parse(*records).verdict_memory is False


@pytest.mark.parametrize(("flags", "expected"), [
    (("--verdict-memory=false",), False),
    (("--verdict-memory",), True),
    (("--verdict-memory=true", "--log-decisions"), True),
    (("--decision-log", "/tmp/d.jsonl", "--verdict-memory=on"), True),
    (("--log-decisions=false",), DEFAULT_VERDICT_MEMORY),
])  # fmt: skip
def test_the_flag_given_wins(flags: tuple[str, ...], expected: bool) -> None:
    assert parse(*flags).verdict_memory is expected


@pytest.mark.parametrize("value", ["0", "86401", "1.5", "soon"])
def test_a_bad_timeout_is_refused(value: str) -> None:
    with pytest.raises(SystemExit):
        parse(f"--verdict-memory-timeout={value}")
