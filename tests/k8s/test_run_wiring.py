"""`kube-netpol run` without --manifests builds the Kubernetes source from the agent's configuration."""

from __future__ import annotations

import argparse
import pathlib

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.agent import run  # noqa: E402
from kube_netpol.agent.config import AgentConfig  # noqa: E402
from kube_netpol.sources.kubernetes import (  # noqa: E402
    KubernetesConfigError,
    KubernetesSource,
    kubernetes_source_factory,
)
from kube_netpol.plugins import build_engine  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

from k8s_helpers import FAST, Driver, namespace, pod  # noqa: E402


@pytest.mark.parametrize(
    ("config", "kinds"),
    [
        (AgentConfig(), ("Namespace", "Pod", "NetworkPolicy")),
        (AgentConfig(enable_admin_network_policy=True),
         ("Namespace", "Node", "Pod", "AdminNetworkPolicy", "NetworkPolicy")),
        (AgentConfig(enable_admin_network_policy=True, enable_baseline_admin_network_policy=True),
         ("Namespace", "Node", "Pod", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "NetworkPolicy")),
    ],
)
def test_factory_watches_what_the_pipeline_needs(kubeconfig: pathlib.Path, config: AgentConfig,
                                                 kinds: tuple[str, ...]) -> None:
    factory = kubernetes_source_factory(str(kubeconfig))
    source = factory(build_engine(config.pipeline).state)  # type: ignore[arg-type]
    assert isinstance(source, KubernetesSource)
    assert source.kinds == kinds


def test_factory_source_syncs_from_the_kubeconfig_server(apiserver: FakeApiServer, kubeconfig: pathlib.Path) -> None:
    apiserver.create(namespace("a"))
    apiserver.create(pod("a", "p", "10.0.0.1"))
    source = kubernetes_source_factory(str(kubeconfig), FAST)(build_engine(AgentConfig().pipeline).state)  # type: ignore[arg-type]
    driver = Driver(source)
    driver.start()
    try:
        driver.run_until(source.ready, what="the initial lists")
        assert set(source.state.keys("Pod")) == {("a", "p")}
    finally:
        source.stop()


@pytest.mark.parametrize(("argv", "streams"), [([], True), (["--watch-list=false"], False), (["--watch-list"], True)])
def test_the_watch_list_flag_reaches_the_source(kubeconfig: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                argv: list[str], streams: bool) -> None:
    from kube_netpol.agent.config import add_agent_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    args = parser.parse_args(["--kubeconfig", str(kubeconfig), *argv])
    config = config_from_args(args)
    assert config.watch_list is streams
    made: list[KubernetesSource] = []

    def factory(kubeconfig: str | None, settings: object = None) -> object:
        made.append(kubernetes_source_factory(kubeconfig, settings)(build_engine(config.pipeline).state))  # type: ignore[arg-type]
        raise SystemExit(0)  # enough: the source the agent would run

    monkeypatch.setattr("kube_netpol.sources.kubernetes.kubernetes_source_factory", factory)
    with pytest.raises(SystemExit):
        run.run_command(args)
    (source,) = made
    assert source.settings.watch_list is streams


def test_bad_configuration_is_reported(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubernetesConfigError, match="kubeconfig"):
        kubernetes_source_factory(str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubernetesConfigError, match="in-cluster"):
        kubernetes_source_factory(None)


def test_run_command_refuses_a_bad_kubeconfig(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(run, "configure_logging", lambda *a, **k: None)  # leave pytest's logging alone
    parser = argparse.ArgumentParser()
    run.register(parser.add_subparsers())
    args = parser.parse_args(["run", "--kubeconfig", str(tmp_path / "missing")])
    assert run.run_command(args) == 2
    assert "cannot load the kubeconfig" in capsys.readouterr().err
