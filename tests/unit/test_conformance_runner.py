"""Running scenarios: the backend seam, exit codes, printed truth tables and the --json layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import pytest

from kube_netpol.cli import main
from kube_netpol.tools.conformance import backend as backend_module
from kube_netpol.tools.conformance import cli as conformance_cli
from kube_netpol.tools.conformance.backend import BackendSetup, ModeUnavailable, load_backend_factory
from kube_netpol.tools.conformance.cluster import StepChange
from kube_netpol.tools.conformance.probes import Probe
from kube_netpol.tools.conformance.runner import prepare, run

DENY_X_INGRESS = """\
name: {name}
tags: [{tag}]
cluster:
  model: {{namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP]}}
steps:
  - name: isolate x
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: deny, namespace: x}}
        spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
    expect:
      - port: 80
        protocol: TCP
        reachability: |
          -   x/a x/b y/a y/b
          x/a .   X   .   .
          x/b X   .   .   .
          y/a X   X   .   .
          y/b {mark}   X   .   .
      - port: serve-80-tcp
        protocol: TCP
        default: allow
        overrides: [{{from: "*", to: "x/*", allowed: false}}]
  - name: remove it
    delete: [{{kind: NetworkPolicy, namespace: x, name: deny}}]
    expect: [{{port: 80, protocol: TCP, default: allow}}]
"""


def write(folder: Path, file: str, name: str = "deny-x", tag: str = "np", mark: str = "X") -> Path:
    path = folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DENY_X_INGRESS.format(name=name, tag=tag, mark=mark))
    return path


class FakeBackend:
    """Blocks everything to a pod whose labels say so; records what the runner asked."""

    def __init__(self, log: list[str], fail_at: str = "") -> None:
        self.log = log
        self.fail_at = fail_at
        self.isolated: set[str] = set()

    def apply(self, change: StepChange) -> list[str]:
        self.log.append(f"apply {change.name}: -{len(change.deletes)} +{len(change.applies)}")
        if self.fail_at == change.name:
            raise RuntimeError("lab exploded")
        self.isolated = {p.key for p in change.cluster.pods if p.namespace == "x" and change.cluster.policies}
        return ["a note"] if change.deletes else []

    def run(self, probes: Sequence[Probe]) -> list[bool]:
        self.log.append(f"run {len(probes)}")
        return [p.dst not in self.isolated for p in probes]

    def explain(self, probe: Probe) -> str:
        return f"fake says {probe.dst} is isolated"

    def close(self) -> None:
        self.log.append("close")


def factory_for(log: list[str], fail_at: str = "") -> Callable[[BackendSetup], FakeBackend]:
    def create(setup: BackendSetup) -> FakeBackend:
        log.append(f"create {setup.scenario} listen={setup.listen} families={setup.families}")
        return FakeBackend(log, fail_at)

    return create


def test_runner_drives_the_backend_in_order(tmp_path: Path) -> None:
    log: list[str] = []
    entries, skipped = prepare([write(tmp_path, "a.yaml")])
    result = run(entries, "fake", factory_for(log))
    assert skipped == 0
    assert log == [
        "create deny-x listen=((80, 'TCP'),) families=('IPv4',)",
        "apply cluster setup: -0 +6",
        "apply isolate x: -0 +1",
        "run 24",  # both probe sets of the step in one call
        "apply remove it: -1 +0",
        "run 12",
        "close",
    ]
    (scenario,) = result.scenarios
    assert scenario.passed and result.exit_code == 0
    assert scenario.probes == 36 and scenario.steps[1].notes == ("a note",)


def test_a_wrong_expectation_is_a_mismatch(tmp_path: Path) -> None:
    entries, _ = prepare([write(tmp_path, "a.yaml", mark=".")])
    result = run(entries, "fake", factory_for([]))
    (scenario,) = result.scenarios
    assert not scenario.passed and scenario.error is None and result.exit_code == 1
    (mismatch,) = scenario.steps[0].probe_sets[0].mismatches
    assert (mismatch.probe.src, mismatch.probe.dst, mismatch.expected, mismatch.observed) == ("y/b", "x/a", True, False)
    assert mismatch.explanation == "fake says x/a is isolated"


def test_a_backend_exception_fails_the_scenario_and_still_closes(tmp_path: Path) -> None:
    log: list[str] = []
    entries, _ = prepare([write(tmp_path, "a.yaml")])
    result = run(entries, "fake", factory_for(log, fail_at="remove it"))
    (scenario,) = result.scenarios
    assert not scenario.passed and not scenario.invalid and result.exit_code == 1
    assert scenario.error == "the backend failed while step 2 'remove it': RuntimeError: lab exploded"
    assert "Traceback" in scenario.detail
    assert len(scenario.steps) == 1 and log[-1] == "close"


def test_a_backend_answering_the_wrong_number_of_results_fails(tmp_path: Path) -> None:
    class Short(FakeBackend):
        def run(self, probes: Sequence[Probe]) -> list[bool]:
            return [True]

    entries, _ = prepare([write(tmp_path, "a.yaml")])
    (scenario,) = run(entries, "fake", lambda setup: Short([])).scenarios
    assert scenario.error is not None and "answered 1 results for 24 probes" in scenario.error


def fake_mode(monkeypatch: pytest.MonkeyPatch, log: list[str] | None = None) -> None:
    monkeypatch.setattr(conformance_cli, "load_backend_factory", lambda mode: factory_for([] if log is None else log))


def test_cli_exit_0_when_everything_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_mode(monkeypatch)
    write(tmp_path, "a.yaml")
    write(tmp_path, "nested/deeper/b.yaml", name="other")
    (tmp_path / "notes.txt").write_text("not a scenario")
    assert main(["conformance", "run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS deny-x: 2 steps, 36 probes" in out and "PASS other" in out
    assert "2 scenarios, 2 passed, 0 failed (0 invalid); 72 probes, 0 mismatches" in out


def test_cli_exit_1_prints_the_truth_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_mode(monkeypatch)
    path = write(tmp_path, "a.yaml", mark=".")
    assert main(["conformance", "run", str(path)]) == 1
    out = capsys.readouterr().out
    expected_block = """\
    TCP/80 IPv4 (steps[0].expect[0]): 1 wrong, 11 right
    expected:
      -   x/a x/b y/a y/b
      x/a -   X   .   .
      x/b X   -   .   .
      y/a X   X   -   .
      y/b .   X   .   -
    observed:
      -   x/a x/b y/a y/b
      x/a -   X   .   .
      x/b X   -   .   .
      y/a X   X   -   .
      y/b X   X   .   -
    comparison (X: observed differs from expected, -: not probed):
      -   x/a x/b y/a y/b
      x/a -   .   .   .
      x/b .   -   .   .
      y/a .   .   -   .
      y/b X   .   .   -
    wrong probes:
      y/b (10.244.2.11) -> x/a (10.244.1.10) TCP/80: expected allowed, observed blocked; fake says x/a is isolated
"""
    assert f"FAIL deny-x: 1 of 36 probes wrong [{path}]" in out
    assert "  step 1 'isolate x':\n" + expected_block in out
    assert "note: step 2 'remove it': a note" in out
    # Passing probe sets are not printed.
    assert "serve-80-tcp" not in out


def test_cli_exit_2_names_the_file_and_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_mode(monkeypatch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(DENY_X_INGRESS.format(name="bad", tag="np", mark="X").replace("port: 80\n", "port: 99999\n"))
    assert main(["conformance", "run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"INVALID {bad}: steps[0].expect[0].port: must be a port number 1-65535, not a number 99999" in err


def test_cli_invalid_wins_over_mismatch_and_valid_scenarios_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_mode(monkeypatch)
    write(tmp_path, "1-wrong.yaml", name="wrong", mark=".")
    write(tmp_path, "2-dup.yaml", name="wrong")
    (tmp_path / "3-broken.yaml").write_text("name: [\n")
    out_json = tmp_path / "out.json"
    assert main(["conformance", "run", str(tmp_path), "--json", str(out_json)]) == 2
    captured = capsys.readouterr()
    assert "FAIL wrong" in captured.out
    assert f"2-dup.yaml: name: scenario name 'wrong' is already used by {tmp_path / '1-wrong.yaml'}" in captured.err
    assert "3-broken.yaml: not valid YAML" in captured.err
    document = json.loads(out_json.read_text())
    assert document["summary"] == {"scenarios": 3, "passed": 0, "failed": 3, "probes": 36, "mismatches": 1}
    assert [s["name"] for s in document["scenarios"]] == ["wrong", "wrong", str(tmp_path / "3-broken.yaml")]
    assert document["scenarios"][2]["steps"] == [] and "not valid YAML" in document["scenarios"][2]["error"]


def test_cli_missing_path_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "run", str(tmp_path / "nope")]) == 2
    assert "nope: no such file or folder" in capsys.readouterr().err


def test_cli_tag_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    log: list[str] = []
    fake_mode(monkeypatch, log)
    write(tmp_path, "a.yaml", name="one", tag="np")
    write(tmp_path, "b.yaml", name="two", tag="anp", mark=".")
    assert main(["conformance", "run", str(tmp_path), "--tag", "np"]) == 0
    assert [line for line in log if line.startswith("create")] == [
        "create one listen=((80, 'TCP'),) families=('IPv4',)"
    ]
    assert "1 scenarios skipped by --tag" in capsys.readouterr().out
    assert main(["conformance", "run", str(tmp_path), "--tag", "np", "--tag", "anp"]) == 1
    assert main(["conformance", "run", str(tmp_path), "--tag", "banp"]) == 2
    assert "no scenario to run (2 skipped: none has tag banp)" in capsys.readouterr().err


def test_json_layout_is_exactly_the_documented_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mode(monkeypatch)
    write(tmp_path, "a.yaml", mark=".")
    out_json = tmp_path / "out.json"
    assert main(["conformance", "run", str(tmp_path / "a.yaml"), "--json", str(out_json)]) == 1
    assert json.loads(out_json.read_text()) == {
        "mode": "offline",
        "summary": {"scenarios": 1, "passed": 0, "failed": 1, "probes": 36, "mismatches": 1},
        "scenarios": [
            {
                "name": "deny-x",
                "passed": False,
                "error": None,
                "steps": [
                    {
                        "name": "isolate x",
                        "probes": [
                            {
                                "port": 80,
                                "protocol": "TCP",
                                "family": "IPv4",
                                "checked": 12,
                                "mismatches": [{"from": "y/b", "to": "x/a", "expected": True, "observed": False}],
                            },
                            {
                                "port": "serve-80-tcp",
                                "protocol": "TCP",
                                "family": "IPv4",
                                "checked": 12,
                                "mismatches": [],
                            },
                        ],
                    },
                    {
                        "name": "remove it",
                        "probes": [{"port": 80, "protocol": "TCP", "family": "IPv4", "checked": 12, "mismatches": []}],
                    },
                ],
            }
        ],
    }


def test_an_unavailable_mode_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(backend_module.MODES, "dataplane", "kube_netpol.tools.conformance.no_such_backend")
    assert main(["conformance", "run", str(write(tmp_path, "a.yaml")), "--mode", "dataplane"]) == 2
    assert "dataplane mode is not available yet: there is no module kube_netpol.tools.conformance.no_such_backend" in (
        capsys.readouterr().err
    )


def test_a_mode_module_whose_dependency_is_missing_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "broken_mode.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backend_module.MODES, "dataplane", "broken_mode")
    with pytest.raises(ModeUnavailable, match="cannot be loaded: No module named 'no_such_dependency_xyz'"):
        load_backend_factory("dataplane")


def test_offline_mode_loads_through_the_same_seam() -> None:
    from kube_netpol.tools.conformance import offline

    assert load_backend_factory("offline") is offline.create_backend


def test_agent_args_reach_the_dataplane_backend_of_every_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    given: list[tuple[str, ...]] = []

    def create_backend(setup: BackendSetup, *, agent_args: Sequence[str] = ()) -> FakeBackend:
        given.append(tuple(agent_args))
        return FakeBackend([])

    monkeypatch.setattr(conformance_cli, "load_backend_factory", lambda mode: create_backend)
    write(tmp_path, "a.yaml")
    write(tmp_path, "b.yaml", name="other")
    argv = ["conformance", "run", str(tmp_path), "--mode", "dataplane",
            "--agent-arg=--verdict-memory=true", "--agent-arg=--verdict-memory-timeout=5"]  # fmt: skip
    assert main(argv) == 0
    assert given == [("--verdict-memory=true", "--verdict-memory-timeout=5")] * 2


def test_agent_args_are_refused_in_offline_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_mode(monkeypatch)
    write(tmp_path, "a.yaml")
    assert main(["conformance", "run", str(tmp_path), "--agent-arg=--verdict-memory=true"]) == 2
    assert "--agent-arg is for dataplane mode, not offline" in capsys.readouterr().err
