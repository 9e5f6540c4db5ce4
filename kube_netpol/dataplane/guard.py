"""Keep the kernel holding what a Dataplane wants: repair right after any nftables change, and periodically.

One daemon thread waits on an ``NftablesMonitor`` (a change anywhere in the
namespace's nf_tables, iptables-nft included) and, failing that, on a timer
(changes the monitor cannot see: iptables-legacy, a monitor that could not be
opened); then it calls ``Dataplane.repair`` (thread-safe with ``sync``). A
burst of changes costs one repair: after one, the next waits ``min_gap``.

So drift is repaired within about ``min_gap + settle`` of an nf_tables change
and within ``interval`` of anything else (defaults: 1.05 s and 5 s). One
check costs 1-60 ms (docs/performance.md), the thread sleeps otherwise.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from kube_netpol.dataplane import Dataplane, DataplaneError, Drift
from kube_netpol.dataplane.monitor import MonitorError, NftablesMonitor

log = logging.getLogger(__name__)

#: Seconds between two checks when no nftables change was seen.
DEFAULT_INTERVAL: Final = 5.0
#: Seconds after a repair before the next change-triggered one (bounds the cost of a change storm).
DEFAULT_MIN_GAP: Final = 1.0
#: Seconds to let a burst of changes (a sync, an iptables-restore) finish before looking.
DEFAULT_SETTLE: Final = 0.05


class DataplaneGuard:
    """Runs ``repair`` on nftables changes and every ``interval`` seconds, from ``start`` to ``stop``.

    ``on_repair(drift)`` runs on the guard's thread after every repair that
    found drift (e.g. to ask for a strict-mode pass); ``repair_counts()``
    gives, per drift kind, how many repairs found it (for the repairs
    metric). A failed repair is logged and retried at the next round;
    ``dataplane.in_sync`` stays False meanwhile.
    """

    def __init__(
        self,
        dataplane: Dataplane,
        *,
        interval: float = DEFAULT_INTERVAL,
        min_gap: float = DEFAULT_MIN_GAP,
        settle: float = DEFAULT_SETTLE,
        on_repair: Callable[[Drift], None] | None = None,
        monitor: Callable[[], NftablesMonitor] | None = NftablesMonitor,
    ) -> None:
        if interval <= 0 or min_gap < 0 or settle < 0:
            raise ValueError("interval must be positive, min_gap and settle not negative")
        self._dataplane = dataplane
        self._interval = interval
        self._min_gap = min_gap
        self._settle = settle
        self._on_repair = on_repair
        self._monitor_factory = monitor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: NftablesMonitor | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self.failures = 0  # repairs that raised

    def start(self) -> None:
        """Start the thread; the monitor is opened here, in the caller's network namespace."""
        monitor = None
        if self._monitor_factory is not None:
            try:
                monitor = self._monitor_factory()
            except MonitorError as e:
                log.warning("dataplane guard: %s; checking every %.0f s only", e, self._interval)
        self._monitor = monitor
        self._thread = threading.Thread(target=self._run, args=(monitor,), name="dataplane-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.interrupt()  # it may be waiting for up to ``interval`` seconds
        if self._thread is not None:
            self._thread.join(timeout)
        if monitor is not None:
            monitor.close()  # here, not on the thread: interrupt() must never write to a closed pipe

    def repair_counts(self) -> dict[str, int]:
        """Drift kind (``drift.KINDS``) -> repairs that found it, since start."""
        with self._counts_lock:
            return dict(self._counts)

    def run_once(self) -> Drift | None:
        """One check and repair now; the drift found (false: none), None if the repair failed or not started."""
        if not self._dataplane.started:
            return None
        try:
            drift = self._dataplane.repair()
        except DataplaneError:
            return None  # stopped meanwhile: nothing of ours to keep
        except Exception as e:  # noqa: BLE001 - the guard must outlive a kernel that refuses once
            self.failures += 1
            log.error("dataplane drift: repairing failed (%s); the kernel may not hold the agent's ruleset", e)
            return None
        if drift:
            with self._counts_lock:
                self._counts.update(drift.kinds())
            log.warning("dataplane drift repaired: %s", drift.describe())
            if self._on_repair is not None:
                try:
                    self._on_repair(drift)
                except Exception:  # noqa: BLE001 - a listener's failure must not stop the guard
                    log.exception("dataplane guard: the repair listener failed")
        return drift

    def _run(self, monitor: NftablesMonitor | None) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            due = last + self._interval
            changed = False
            if monitor is not None:
                try:
                    changed = monitor.wait(due - time.monotonic())
                except OSError as e:
                    if self._stop.is_set():
                        break
                    log.error("dataplane guard: watching nftables failed (%s); checking every %.0f s only",
                              e, self._interval)
                    monitor = None
                    continue
            else:
                self._stop.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                break
            if changed and monitor is not None:
                # Coalesce: let the burst end, and keep change storms to one repair per min_gap.
                self._stop.wait(max(self._settle, last + self._min_gap - time.monotonic()))
                monitor.drain()
            elif time.monotonic() < due:
                continue
            self.run_once()
            last = time.monotonic()
