"""The one error type for objects the agent refuses."""

from __future__ import annotations


class InvalidObject(ValueError):
    """An object that cannot be enforced as written.

    The cluster state logs it with the object's kind and name and ignores the
    object; it is never treated as allow-all.
    """

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)

    def at(self, prefix: str) -> "InvalidObject":
        """The same error with the field path extended on the left."""
        return InvalidObject(self.reason, f"{prefix}.{self.path}" if self.path else prefix)
