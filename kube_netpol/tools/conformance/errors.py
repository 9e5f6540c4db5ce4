"""The error every part of the harness raises for a scenario that cannot be used."""

from __future__ import annotations


class ScenarioError(Exception):
    """A scenario that cannot be read or is invalid.

    ``where`` is the field path inside the file (``steps[1].expect[0].port``);
    ``source`` is the file. ``str()`` gives ``source: where: message``.
    """

    def __init__(self, message: str, where: str = "", source: str = "") -> None:
        self.message = message
        self.where = where
        self.source = source
        super().__init__(message)

    def in_file(self, source: str) -> "ScenarioError":
        return ScenarioError(self.message, self.where, source)

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.where, self.message) if part)
