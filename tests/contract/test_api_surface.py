"""kube_netpol.api is what third-party evaluators depend on: any change to it must be deliberate.

The expected surface is api_surface.txt. After a deliberate change (and a note
in docs/development.md for plugin authors), regenerate it with
``python tests/contract/api_surface.py > tests/contract/api_surface.txt``.
"""

from __future__ import annotations

import pathlib

import kube_netpol.api as api
from api_surface import describe

EXPECTED = pathlib.Path(__file__).with_name("api_surface.txt")


def test_the_public_surface_is_the_pinned_one() -> None:
    assert describe() == EXPECTED.read_text()


def test_every_public_name_is_exported_once_and_sorted() -> None:
    assert len(set(api.__all__)) == len(api.__all__)
    assert list(api.__all__) == sorted(api.__all__)
    assert all(hasattr(api, name) for name in api.__all__)


def test_nothing_in_the_contract_is_typed_any() -> None:
    assert ": Any" not in EXPECTED.read_text() and "-> 'Any'" not in EXPECTED.read_text()


def test_a_change_is_caught(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(api.Update, "selected_too", lambda self: None, raising=False)
    assert describe() != EXPECTED.read_text()
