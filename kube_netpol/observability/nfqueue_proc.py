"""The kernel's per-queue counters from /proc/net/netfilter/nfnetlink_queue."""

from __future__ import annotations

from dataclasses import dataclass

PROC_PATH = "/proc/net/netfilter/nfnetlink_queue"


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue_num: int
    port_id: int
    queue_total: int  # packets waiting for a verdict now
    copy_mode: int
    copy_range: int
    queue_dropped: int  # dropped by the kernel: queue full
    user_dropped: int  # dropped by netlink: socket buffer full
    packet_id: int  # id of the last packet queued


def parse_nfqueue_stats(text: str) -> list[QueueStats]:
    """One QueueStats per line; lines that do not have the nine numeric columns are skipped."""
    stats = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            numbers = [int(f) for f in fields[:8]]
        except ValueError:
            continue
        stats.append(QueueStats(*numbers))
    return stats


def read_nfqueue_stats(path: str = PROC_PATH) -> list[QueueStats]:
    try:
        with open(path) as handle:
            return parse_nfqueue_stats(handle.read())
    except OSError:
        return []  # no queue bound yet in this network namespace
