"""Fixtures for the Kubernetes source tests: a fake API server, a kubeconfig, and sources driven like the agent does."""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable, Iterator

import pytest

from kube_netpol.plugins import registry_for
from kube_netpol.state import ClusterState
from kube_netpol.tools.testing import FakeApiServer

from k8s_helpers import FAST, Driver

TOKEN = "test-token"


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer(token=TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: pathlib.Path) -> pathlib.Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def source_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="kube_netpol")
    return caplog


@pytest.fixture
def make_driver(kubeconfig: pathlib.Path) -> Iterator[Callable[..., Driver]]:
    """``make_driver(kinds, settings=FAST)``: a KubernetesSource on a fresh ClusterState, started."""
    from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config

    sources: list[Any] = []

    def make(kinds: tuple[str, ...], settings: Any = FAST, start: bool = True) -> Driver:
        source = KubernetesSource(ClusterState(registry_for()), api_client_from_config(str(kubeconfig)), kinds, settings)
        sources.append(source)
        driver = Driver(source)
        if start:
            driver.start()
        return driver

    yield make
    for source in sources:
        source.stop()
