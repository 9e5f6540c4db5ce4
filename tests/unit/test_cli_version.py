"""`kube-netpol --version` and `kube-netpol run --version` (the image's entrypoint is `kube-netpol run`)."""

from __future__ import annotations

import pytest

from kube_netpol import __version__
from kube_netpol.cli import main


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"]])
def test_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"kube-netpol {__version__}\n"
