"""The checked-in PodInfo module must be what protoc makes of the .proto file."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_module_is_current(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            str(ROOT / "proto" / "kubenetworkpolicies.proto"),
        ],
        check=True,
    )
    generated = ROOT / "kube_netpol" / "api" / "generated"
    for name in ("kubenetworkpolicies_pb2.py", "kubenetworkpolicies_pb2.pyi"):
        assert (tmp_path / name).read_text() == (generated / name).read_text(), (
            f"{name} is stale: regenerate it (docs/development.md)"
        )


def test_podinfo_fields() -> None:
    from kube_netpol.api import PodInfo

    info = PodInfo(name="a", labels={"app": "web"}, cluster_id="c1", last_updated=5)
    info.namespace.name = "x"
    info.container_ports.add(name="http", port=8080, protocol="TCP")
    info.node.name = "n1"
    copy = PodInfo.FromString(info.SerializeToString())
    assert copy == info and copy.container_ports[0].port == 8080
