"""The domainNames scenarios (format v2 externals[].dnsNames) pass offline, and fail without the DNS observation
(the dataplane run of tests/conformance covers them with dnsmasq and real queries)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kube_netpol.cli import main
from kube_netpol.tools.conformance import offline

CNP = Path(__file__).resolve().parents[1] / "conformance" / "cnp"
SCENARIOS = sorted(str(path) for path in CNP.glob("domain-names-*.yaml"))


def test_dns_scenarios_pass_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(SCENARIOS) == 6
    assert main(["conformance", "run", *SCENARIOS, "--mode", "offline"]) == 0
    assert "6 passed" in capsys.readouterr().out


def test_without_the_observation_names_are_not_learnt(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(offline, "observe", lambda *args: 0)
    assert main(["conformance", "run", *SCENARIOS, "--mode", "offline"]) != 0
    assert "mismatch" in capsys.readouterr().out
