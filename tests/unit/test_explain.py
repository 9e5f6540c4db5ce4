"""`kube-netpol explain`: the deciding evaluator, policy and rule of each direction, output layouts, exit statuses."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from kube_netpol.cli import main
from kube_netpol.tools.explain import loaders as explain_state
from kube_netpol.tools.explain.render import ExplainError, explain_connection
from kube_netpol.plugins import build_engine

ANP_API = "policy.networking.k8s.io/v1alpha1"

# Step 1 puts every evaluator in charge of some pair of pods:
#   ANP anp-x (subject x): Allow y/a, Deny z, Pass the rest of y (to NetworkPolicy x/only-80)
#   ANP anp-y (subject y): Pass z (no NetworkPolicy selects y, so the BANP decides)
#   BANP default (subject y): Allow x/a, Deny x, Deny z
#   NetworkPolicy z/b-egress-80: z/b may only connect to TCP 80
# Step 2 deletes x/only-80.
SCENARIO = f"""
name: explain-fixture
cluster:
  model: {{namespaces: [x, y, z], pods: [a, b], ports: [80, 81], protocols: [TCP, UDP], ipFamilies: [IPv4, IPv6]}}
  externals:
    - {{name: outside, ips: ["192.0.2.10"]}}
steps:
  - name: every evaluator
    apply:
      - apiVersion: {ANP_API}
        kind: AdminNetworkPolicy
        metadata: {{name: anp-x}}
        spec:
          priority: 10
          subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}
          ingress:
            - name: allow-y-a
              action: Allow
              from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}]
            - name: deny-z
              action: Deny
              from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]
            - name: pass-y
              action: Pass
              from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]
      - apiVersion: {ANP_API}
        kind: AdminNetworkPolicy
        metadata: {{name: anp-y}}
        spec:
          priority: 20
          subject: {{namespaces: {{matchLabels: {{ns: y}}}}}}
          ingress:
            - name: pass-z
              action: Pass
              from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]
      - apiVersion: {ANP_API}
        kind: BaselineAdminNetworkPolicy
        metadata: {{name: default}}
        spec:
          subject: {{namespaces: {{matchLabels: {{ns: y}}}}}}
          ingress:
            - name: allow-x-a
              action: Allow
              from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}]
            - name: deny-x
              action: Deny
              from: [{{namespaces: {{matchLabels: {{ns: x}}}}}}]
            - name: deny-z
              action: Deny
              from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: only-80, namespace: x}}
        spec:
          podSelector: {{}}
          policyTypes: [Ingress]
          ingress:
            - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
              ports: [{{port: 80, protocol: TCP}}]
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: b-egress-80, namespace: z}}
        spec:
          podSelector: {{matchLabels: {{pod: b}}}}
          policyTypes: [Egress]
          egress:
            - ports: [{{port: 80, protocol: TCP}}]
  - name: drop only-80
    delete:
      - {{kind: NetworkPolicy, namespace: x, name: only-80}}
"""


@pytest.fixture
def scenario(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "explain.yaml"
    path.write_text(SCENARIO)
    return str(path)


#: The v1alpha1 pipeline the SCENARIO tests walk, evaluator by evaluator (the default adds both CNP tiers).
V1ALPHA1 = "adminnetworkpolicy,networkpolicy,baselineadminnetworkpolicy"


def explain_json(capsys: pytest.CaptureFixture[str], *args: str, pipeline: str = V1ALPHA1) -> tuple[int, dict[str, Any]]:
    code = main(["explain", *args, *(("--evaluators", pipeline) if pipeline else ()), "--output", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def decided(direction: dict[str, Any]) -> tuple[Any, str, str, str]:
    return direction["evaluator"], direction["verdict"], direction["policy"], direction["rule"]


END = (None, "allow", "", "")


@pytest.mark.parametrize(
    ("source", "destination", "port", "egress", "ingress", "answers", "code"),
    [
        # ANP Allow overrides the NetworkPolicy, which would admit only port 80.
        ("y/a", "x/a", "81", END, ("adminnetworkpolicy", "allow", "anp-x", "allow-y-a"), ["ACCEPT"], 0),
        ("z/a", "x/a", "80", END, ("adminnetworkpolicy", "deny", "anp-x", "deny-z"), ["DENY"], 1),
        # Pass hands the decision to NetworkPolicy: allowed by its rule, or denied by its isolation.
        ("y/b", "x/a", "80", END, ("networkpolicy", "allow", "x/only-80", "ingress[0]"), ["NEXT", "ACCEPT"], 0),
        ("y/b", "x/a", "81", END, ("networkpolicy", "deny", "x/only-80", ""), ["NEXT", "DENY"], 1),
        # Pass with no NetworkPolicy selecting the pod: the BANP decides.
        ("z/a", "y/a", "80", END, ("baselineadminnetworkpolicy", "deny", "default", "deny-z"), ["NEXT", "NEXT", "DENY"], 1),
        ("x/a", "y/b", "80", END, ("baselineadminnetworkpolicy", "allow", "default", "allow-x-a"), ["NEXT", "NEXT", "ACCEPT"], 0),
        ("x/b", "y/b", "80", END, ("baselineadminnetworkpolicy", "deny", "default", "deny-x"), ["NEXT", "NEXT", "DENY"], 1),
        # No policy anywhere: the end of the pipeline accepts both directions.
        ("z/a", "z/b", "81", END, END, ["NEXT", "NEXT", "NEXT"], 0),
        # Egress: NetworkPolicy on the source.
        ("z/b", "z/a", "80", ("networkpolicy", "allow", "z/b-egress-80", "egress[0]"), END, ["NEXT", "NEXT", "NEXT"], 0),
        ("z/b", "z/a", "81", ("networkpolicy", "deny", "z/b-egress-80", ""), END, ["NEXT", "NEXT", "NEXT"], 1),
    ],
)
def test_deciding_evaluator_policy_and_rule(
    capsys: pytest.CaptureFixture[str], scenario: str, source: str, destination: str, port: str,
    egress: tuple, ingress: tuple, answers: list[str], code: int,
) -> None:
    status, data = explain_json(capsys, "--scenario", scenario, "--step", "1", "--from", source, "--to", destination,
                                "--port", port)
    assert status == code
    assert data["verdict"] == ("allow" if code == 0 else "deny")
    assert decided(data["egress"]) == egress
    assert decided(data["ingress"]) == ingress
    assert [step["answer"] for step in data["ingress"]["steps"]] == answers


def test_pass_steps_name_the_passing_rule(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    _, data = explain_json(capsys, "--scenario", scenario, "--step", "1", "--from", "z/a", "--to", "y/a", "--port", "80")
    first, second, third = data["ingress"]["steps"]
    assert first == {"evaluator": "adminnetworkpolicy", "answer": "NEXT", "policy": "anp-y", "rule": "pass-z",
                     "reason": "Pass"}
    assert second == {"evaluator": "networkpolicy", "answer": "NEXT", "policy": "", "rule": "", "reason": ""}
    assert third["evaluator"] == "baselineadminnetworkpolicy" and third["rule"] == "deny-z"


def test_json_layout(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    code, data = explain_json(capsys, "--scenario", scenario, "--step", "1", "--from", "y/b", "--to", "x/a",
                              "--port", "serve-80-tcp")
    assert code == 0
    assert set(data) == {"source", "destination", "family", "protocol", "port", "port_name", "pipeline", "egress",
                         "ingress", "verdict", "reuse", "state", "refused_objects"}
    assert data["reuse"] == {"lifetime": None, "kernel_memory": True}
    assert data["source"] == {"given": "y/b", "ip": "10.244.2.11", "pod": "y/b", "notes": []}
    assert data["destination"] == {"given": "x/a", "ip": "10.244.1.10", "pod": "x/a", "notes": []}
    assert (data["family"], data["protocol"], data["port"], data["port_name"]) == ("IPv4", "TCP", 80, "serve-80-tcp")
    assert data["pipeline"] == ["adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy"]
    assert set(data["ingress"]) == {"evaluator", "verdict", "policy", "rule", "reason", "steps"}
    assert data["ingress"]["reason"] == "allowed by x/only-80 ingress[0]"
    assert data["egress"]["reason"] == "no evaluator decided; the end of the pipeline accepts"
    assert data["state"] == {"source": "scenario", "path": scenario, "step": 1, "step_name": "every evaluator",
                             "notes": []}
    assert data["refused_objects"] == []


def test_text_output(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    code = main(["explain", "--scenario", scenario, "--step", "1", "--from", "y/b", "--to", "x/a", "--port", "81",
                 "--evaluators", V1ALPHA1])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "y/b (10.244.2.11) -> x/a (10.244.1.10): TCP port 81, IPv4"
    assert "after step 1/2 ('every evaluator')" in lines[1]
    ingress = lines[lines.index("ingress (the destination x/a):") + 1:][:3]
    assert ingress[0].split()[:3] == ["1.", "adminnetworkpolicy", "NEXT"] and "rule pass-y: Pass" in ingress[0]
    assert ingress[1].split()[:3] == ["2.", "networkpolicy", "DENY"] and ingress[1].endswith("<- decides")
    assert "policy x/only-80" in ingress[1]
    assert ingress[2].split()[:3] == ["3.", "baselineadminnetworkpolicy", "-"] and "not asked" in ingress[2]
    egress = lines[lines.index("egress (the source y/b):") + 1:][:4]
    assert "(end of pipeline)" in egress[3] and egress[3].endswith("<- decides")
    assert lines[-1] == ("verdict: DENY (egress allowed at the end of the pipeline; "
                         "ingress denied by networkpolicy x/only-80)")


CNP_API = "policy.networking.k8s.io/v1alpha2"
# Admin CNP admin-x (subject x): Deny z, Pass y (to NetworkPolicy x/only-80, which admits y on port 80);
# Baseline CNP baseline-y (subject y, which no NetworkPolicy selects): Deny x.
CNP_SCENARIO = f"""
name: explain-cnp
cluster:
  model: {{namespaces: [x, y, z], pods: [a, b], ports: [80, 81], protocols: [TCP]}}
steps:
  - name: both tiers
    apply:
      - apiVersion: {CNP_API}
        kind: ClusterNetworkPolicy
        metadata: {{name: admin-x}}
        spec:
          tier: Admin
          priority: 5
          subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}
          ingress:
            - {{name: deny-z, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]}}
            - {{name: pass-y, action: Pass, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}
      - apiVersion: {CNP_API}
        kind: ClusterNetworkPolicy
        metadata: {{name: baseline-y}}
        spec:
          tier: Baseline
          priority: 5
          subject: {{namespaces: {{matchLabels: {{ns: y}}}}}}
          ingress:
            - {{name: deny-x, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: x}}}}}}]}}
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: only-80, namespace: x}}
        spec:
          podSelector: {{}}
          policyTypes: [Ingress]
          ingress:
            - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
              ports: [{{port: 80, protocol: TCP}}]
"""


@pytest.mark.parametrize(
    ("source", "destination", "port", "ingress", "answers", "code"),
    [
        ("z/a", "x/a", "80", ("clusternetworkpolicy-admin", "deny", "admin-x", "deny-z"), ["DENY"], 1),
        ("y/a", "x/a", "81", ("networkpolicy", "deny", "x/only-80", ""), ["NEXT", "NEXT", "DENY"], 1),
        ("y/a", "x/a", "80", ("networkpolicy", "allow", "x/only-80", "ingress[0]"), ["NEXT", "NEXT", "ACCEPT"], 0),
        ("x/a", "y/a", "80", ("clusternetworkpolicy-baseline", "deny", "baseline-y", "deny-x"),
         ["NEXT", "NEXT", "NEXT", "NEXT", "DENY"], 1),
        ("z/a", "y/a", "80", END, ["NEXT", "NEXT", "NEXT", "NEXT", "NEXT"], 0),
    ],
)
def test_cnp_verdicts_name_the_tier_policy_and_rule(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, source: str, destination: str, port: str,
    ingress: tuple, answers: list[str], code: int,
) -> None:
    path = tmp_path / "cnp.yaml"
    path.write_text(CNP_SCENARIO)
    status, data = explain_json(capsys, "--scenario", str(path), "--from", source, "--to", destination, "--port", port,
                                pipeline="")  # the default pipeline: every built-in evaluator
    assert data["pipeline"] == ["clusternetworkpolicy-admin", "adminnetworkpolicy", "networkpolicy",
                                "baselineadminnetworkpolicy", "clusternetworkpolicy-baseline"]
    assert status == code and decided(data["ingress"]) == ingress
    steps = data["ingress"]["steps"]
    assert [step["answer"] for step in steps] == answers
    if source == "y/a":  # the Admin tier's Pass is named too, with its policy and rule
        assert steps[0] == {"evaluator": "clusternetworkpolicy-admin", "answer": "NEXT", "policy": "admin-x",
                            "rule": "pass-y", "reason": "Pass"}


def test_cnp_text_output_names_the_tier(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cnp.yaml"
    path.write_text(CNP_SCENARIO)
    assert main(["explain", "--scenario", str(path), "--from", "x/a", "--to", "y/a", "--port", "80"]) == 1
    lines = capsys.readouterr().out.splitlines()
    ingress = lines[lines.index("ingress (the destination y/a):") + 1:][:5]
    assert ingress[4].split()[:3] == ["5.", "clusternetworkpolicy-baseline", "DENY"] and ingress[4].endswith("<- decides")
    assert "policy baseline-y" in ingress[4] and "deny-x" in ingress[4]
    assert lines[-1].endswith("ingress denied by clusternetworkpolicy-baseline baseline-y deny-x)")


def test_step_selects_the_cluster(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    args = ["--scenario", scenario, "--from", "y/b", "--to", "x/a", "--port", "81"]
    assert explain_json(capsys, *args, "--step", "1")[0] == 1
    code, data = explain_json(capsys, *args)  # after the last step only-80 is gone: Pass -> no NP -> BANP -> end
    assert code == 0 and decided(data["ingress"]) == END
    assert data["state"]["step"] == 2
    code, data = explain_json(capsys, *args, "--step", "0")
    assert code == 0 and data["state"] == {"source": "scenario", "path": scenario, "step": 0, "step_name": None,
                                          "notes": []}


def test_families_addresses_and_externals(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    base = ["--scenario", scenario, "--step", "1", "--port", "80"]
    code, data = explain_json(capsys, *base, "--from", "z/a", "--to", "x/a", "--family", "IPv6")
    assert code == 1 and data["family"] == "IPv6"
    assert (data["source"]["ip"], data["destination"]["ip"]) == ("fd00:10:244:3::10", "fd00:10:244:1::10")
    assert decided(data["ingress"])[3] == "deny-z"
    # An address is named after the pod owning it.
    code, data = explain_json(capsys, *base, "--from", "10.244.2.10", "--to", "x/a", "--port", "81")
    assert data["source"] == {"given": "10.244.2.10", "ip": "10.244.2.10", "pod": "y/a", "notes": []}
    assert decided(data["ingress"])[3] == "allow-y-a"
    # An external address: no pod; ANP ingress peers are pods, so only the NetworkPolicy's isolation applies.
    code, data = explain_json(capsys, *base, "--from", "192.0.2.10", "--to", "x/a")
    assert code == 1 and data["source"]["pod"] is None
    assert decided(data["ingress"]) == ("networkpolicy", "deny", "x/only-80", "")


def test_evaluators_option_changes_the_pipeline(capsys: pytest.CaptureFixture[str], scenario: str) -> None:
    code, data = explain_json(capsys, "--scenario", scenario, "--step", "1", "--from", "y/a", "--to", "x/a",
                              "--port", "81", pipeline="networkpolicy")
    assert code == 1 and data["pipeline"] == ["networkpolicy"]
    assert decided(data["ingress"]) == ("networkpolicy", "deny", "x/only-80", "")


def test_manifests_folder_and_refused_objects(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        pod("shop", "web", "10.1.0.5", {"app": "web"}, [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]),
        pod("shop", "db", "10.1.0.6", {"app": "db"}, [{"name": "pg", "containerPort": 5432, "protocol": "TCP"}]),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "pg"}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "broken", "namespace": "shop"},
         "spec": {"podSelector": {"matchLabels": "not a map"}}},
    ]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(objects))
    code, data = explain_json(capsys, "--manifests", str(folder), "--from", "shop/web", "--to", "shop/db", "--port", "pg")
    assert code == 0 and data["port"] == 5432 and data["port_name"] == "pg"
    assert decided(data["ingress"]) == ("networkpolicy", "allow", "shop/db", "ingress[0]")
    assert data["state"] == {"source": "manifests", "path": str(folder), "notes": []}
    assert len(data["refused_objects"]) == 1 and data["refused_objects"][0].startswith("NetworkPolicy shop/broken:")
    code = main(["explain", "--manifests", str(folder), "--from", "shop/db", "--to", "shop/db", "--port", "8080"])
    assert code == 1
    assert "note: ignored invalid NetworkPolicy shop/broken" in capsys.readouterr().out


def test_an_unreadable_manifest_is_a_usage_error_not_an_answer(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "pods.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        pod("shop", "web", "10.1.0.5", {"app": "web"}, []), pod("shop", "db", "10.1.0.6", {"app": "db"}, [])]))
    # The file that holds the deny-all cannot be read: an answer from the rest would be "allowed".
    (folder / "deny.yaml").write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: [d\n")
    for output in ("text", "json"):
        code = main(["explain", "--manifests", str(folder), "--from", "shop/web", "--to", "shop/db", "--port", "80",
                     "--output", output])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert "cannot read every manifest" in captured.err and "deny.yaml: line 4, column 1" in captured.err


def pod(ns: str, name: str, ip: str, labels: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "x/nope", "--to", "x/a", "--port", "80"], "source 'x/nope': no such pod"),
        (["--from", "x/a", "--to", "10.244.1.300", "--port", "80"], "neither a pod (namespace/name) nor an IP address"),
        (["--from", "x/a", "--to", "x/b", "--port", "70000"], "out of range"),
        (["--from", "x/a", "--to", "x/b", "--port", "serve-80-udp"], "no TCP container port named 'serve-80-udp'"),
        (["--from", "x/a", "--to", "192.0.2.10", "--port", "http"], "needs a destination pod"),
        (["--from", "x/a", "--to", "192.0.2.10", "--port", "80", "--family", "IPv6"], "no IPv6 address"),
        (["--from", "fd00::1", "--to", "192.0.2.10", "--port", "80"], "share no address family"),
        (["--from", "x/a", "--to", "x/b", "--port", "80", "--step", "3"], "out of range"),
        (["--from", "x/a", "--to", "x/b", "--port", "80", "--evaluators", "nosuch"], "unknown evaluator 'nosuch'"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], scenario: str, args: list[str], message: str) -> None:
    assert main(["explain", "--scenario", scenario, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.startswith("kube-netpol explain: ")


def test_missing_or_unreadable_state_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, scenario: str) -> None:
    endpoints = ["--from", "x/a", "--to", "x/b", "--port", "80"]
    with pytest.raises(SystemExit) as no_source:
        main(["explain", *endpoints])
    assert no_source.value.code == 2
    assert "one of the arguments --manifests --scenario --kubeconfig is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as two_sources:
        main(["explain", *endpoints, "--scenario", scenario, "--manifests", str(tmp_path)])
    assert two_sources.value.code == 2
    capsys.readouterr()
    assert main(["explain", *endpoints, "--manifests", str(tmp_path / "absent")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["explain", *endpoints, "--manifests", str(tmp_path), "--step", "1"]) == 2
    assert "--step needs --scenario" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncluster: {}\n")
    assert main(["explain", *endpoints, "--scenario", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["explain", *endpoints, "--kubeconfig", str(tmp_path / "no-kubeconfig")]) == 2
    assert "cannot load the kubeconfig" in capsys.readouterr().err


def test_explain_connection_api(scenario: str) -> None:
    engine = build_engine()
    loaded = explain_state.load_scenario(engine.state, scenario, 1)
    engine.publish()
    assert "after step 1/" in loaded.description
    result = explain_connection(engine.state, engine, "y/b", "x/a", 80, "tcp")
    assert result.allowed and result.exit_code == 0
    assert result.explanation.judgement.ingress.policy == "x/only-80"
    with pytest.raises(ExplainError, match="unknown protocol"):
        explain_connection(engine.state, engine, "y/b", "x/a", 80, "icmp")


# ----------------------------------------------------------------- live cluster


def test_kubeconfig_lists_the_cluster_once(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kube_netpol.tools.testing import FakeApiServer

    monkeypatch.setattr(explain_state, "LIST_PAGE_SIZE", 2)  # several pages per kind
    with FakeApiServer(token="secret") as server:
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}})
        for i in range(5):
            server.create(pod("shop", f"web-{i}", f"10.1.0.{10 + i}", {"app": "web"}, []))
        server.create(pod("shop", "db", "10.1.0.6", {"app": "db"}, []))
        server.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "db", "namespace": "shop"},
                       "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}})
        server.create({"apiVersion": ANP_API, "kind": "AdminNetworkPolicy", "metadata": {"name": "no-web-4"},
                       "spec": {"priority": 5, "subject": {"pods": {"namespaceSelector": {},
                                                                    "podSelector": {"matchLabels": {"app": "db"}}}},
                                "ingress": [{"name": "deny-10-1-0-14", "action": "Deny", "from": [{"pods": {
                                    "namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}],
                                    "ports": [{"portNumber": {"port": 5433, "protocol": "TCP"}}]}]}})
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        code, data = explain_json(capsys, "--kubeconfig", str(kubeconfig), "--from", "shop/web-4", "--to", "shop/db",
                                  "--port", "5432")
        assert code == 0 and decided(data["ingress"]) == ("networkpolicy", "allow", "shop/db", "ingress[0]")
        assert data["state"] == {"source": "cluster", "kubeconfig": str(kubeconfig), "server": server.url,
                                 "notes": []}
        code, data = explain_json(capsys, "--kubeconfig", str(kubeconfig), "--from", "shop/web-4", "--to", "shop/db",
                                  "--port", "5433")
        assert code == 1 and decided(data["ingress"]) == ("adminnetworkpolicy", "deny", "no-web-4", "deny-10-1-0-14")
        watches = [r for r in server.requests if r.watch]
        assert not watches, "explain lists once; it never watches"
        pod_pages = [r for r in server.requests if r.path == "/api/v1/pods"]
        assert len(pod_pages) == 2 * 3 and sum("continue" in r.query for r in pod_pages) == 2 * 2  # 6 pods, pages of 2, twice
        bad = server.write_kubeconfig(tmp_path / "bad-token", token="wrong")
        assert main(["explain", "--kubeconfig", str(bad), "--from", "shop/web-4", "--to", "shop/db", "--port", "80"]) == 2
        assert "cannot list from the API server: HTTP 401" in capsys.readouterr().err


def test_kubeconfig_without_admin_network_policy_crds(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kube_netpol.tools.testing import FakeApiServer, default_kinds

    # A cluster without the network-policy-api CRDs: it does not serve those kinds at all.
    served = [kind for kind in default_kinds() if not kind.kind.endswith("AdminNetworkPolicy")]
    with FakeApiServer(kinds=served) as server:
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        server.create(pod("shop", "web", "10.1.0.5", {"app": "web"}, []))
        server.create(pod("shop", "db", "10.1.0.6", {"app": "db"}, []))
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        code, data = explain_json(capsys, "--kubeconfig", str(kubeconfig), "--from", "shop/web", "--to", "shop/db",
                                  "--port", "80")
    assert code == 0 and decided(data["ingress"]) == END
    notes = data["state"]["notes"]
    assert len(notes) == 2 and "adminnetworkpolicies (CRD not installed?)" in notes[0]
    assert "no BaselineAdminNetworkPolicy objects" in notes[1]
