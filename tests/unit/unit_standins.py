"""Stand-ins the verdict-loop tests share: a queued packet and a cluster without pods."""

from __future__ import annotations


class Queued:
    """What NetfilterQueue hands the verdict callback; records the verdicts it is given."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


class NoPods:
    """A PodInfo provider that knows no pod."""

    def pod_info_by_ip(self, ip: bytes) -> None:
        return None
