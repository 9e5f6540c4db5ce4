"""Flags added for issue 10: the new-flow limit and the dual-stack default bind address."""

from __future__ import annotations

import argparse

import pytest

from kube_netpol.agent.config import AgentConfig, add_agent_arguments, config_from_args
from kube_netpol.dataplane import DataplaneConfig


def parse(*args: str) -> AgentConfig:
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return config_from_args(parser.parse_args(list(args)))


def test_the_new_flow_limit_defaults_to_the_dataplanes() -> None:
    assert parse().new_flow_rate_limit == AgentConfig().new_flow_rate_limit == DataplaneConfig().new_flow_limit == 2000
    assert parse("--new-flow-rate-limit=0").new_flow_rate_limit == 0
    assert parse("--new-flow-rate-limit", "250").new_flow_rate_limit == 250


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "20000000"])
def test_a_bad_new_flow_limit_is_refused(value: str) -> None:
    with pytest.raises(SystemExit):
        parse(f"--new-flow-rate-limit={value}")


def test_the_default_bind_address_is_every_address() -> None:
    assert parse().metrics_bind_address == ("", 9080)
    assert parse("--metrics-bind-address=[::1]:9090").metrics_bind_address == ("::1", 9090)
