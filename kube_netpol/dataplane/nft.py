"""A thin shell around libnftables' JSON API: one call, one transaction, errors as exceptions.

Never builds nft command strings: every command is a JSON object (see ruleset.py).
libnftables acts on the network namespace of the calling process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from kube_netpol.dataplane.ruleset import FAMILY, Json

_ENOENT_TEXT = "No such file or directory"


class NftablesError(RuntimeError):
    """libnftables rejected a transaction; ``message`` is libnftables' own error text."""

    def __init__(self, message: str, rc: int, commands: Sequence[Json] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc
        self.commands = list(commands)

    @property
    def not_found(self) -> bool:
        """The kernel answered ENOENT (missing object, or an expression it does not have)."""
        return _ENOENT_TEXT in self.message


class NftClient:
    """Runs JSON command lists through one libnftables context.

    A libnftables context is not thread-safe, so calls are serialised.
    """

    def __init__(self, lib: Any | None = None) -> None:
        if lib is None:
            import nftables  # the dataplane extra; imported here so pure users need not have it

            lib = nftables.Nftables()
        self._lib = lib
        self._lib.set_json_output(True)
        self._lock = threading.Lock()

    def run(self, commands: Sequence[Json], *, terse: bool = False) -> list[Json]:
        """Run ``commands`` as one transaction; returns the output objects (metainfo dropped).

        ``terse``: listings leave set elements out.
        """
        if not commands:
            return []
        with self._lock:
            if terse:
                self._lib.set_terse_output(True)
            try:
                rc, output, error = self._lib.json_cmd({"nftables": list(commands)})
            finally:
                if terse:
                    self._lib.set_terse_output(False)
        if rc != 0:
            raise NftablesError(error.strip() or f"libnftables returned {rc}", rc, commands)
        if not output:
            return []
        return [o for o in output.get("nftables", []) if "metainfo" not in o]

    def list_table(self, table: str, family: str = FAMILY, *, terse: bool = False) -> list[Json] | None:
        """The table's objects (table, sets with elements unless ``terse``, chains, rules), None when it
        does not exist."""
        try:
            return self.run([{"list": {"table": {"family": family, "name": table}}}], terse=terse)
        except NftablesError as e:
            if e.not_found:
                return None
            raise

    def list_set(self, table: str, name: str, family: str = FAMILY) -> Json | None:
        """One set with its elements (the ``set`` object's value), None when it does not exist."""
        try:
            out = self.run([{"list": {"set": {"family": family, "table": table, "name": name}}}])
        except NftablesError as e:
            if e.not_found:
                return None
            raise
        return next((o["set"] for o in out if "set" in o), None)
