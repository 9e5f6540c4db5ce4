"""The kernel side of kube-netpol: the nftables table that diverts packets to NFQUEUE.

``Dataplane`` owns the table's lifecycle (start/reconcile, sync, stop) and, for
the xtables queue backend, the iptables/ip6tables rules that queue marked
packets (mangle POSTROUTING, plus mangle PREROUTING with the netfilter bug
1766 workaround). ``check``/``repair`` read the kernel back and bring back
whatever someone changed (see ``drift``). ``cleanup`` removes everything the
agent ever creates. The ruleset itself is data in ``ruleset``; this module
only sequences transactions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kube_netpol.dataplane.drift import Drift, table_drift
from kube_netpol.dataplane.nft import NftablesError, NftClient
from kube_netpol.dataplane.queue_backend import (
    BackendChoice,
    QueueBackendUnavailable,
    detect_queue_backend,
    resolve_queue_backend,
)
from kube_netpol.dataplane.ruleset import (
    DEFAULT_MARK,
    DEFAULT_MEMORY_TIMEOUT,
    DEFAULT_NEW_FLOW_LIMIT,
    DEFAULT_QUEUE_NUM,
    DEFAULT_TABLE,
    LIMITED_COUNTER,
    MANAGED_SET_BY_VERSION,
    MEMORY_EPOCHS,
    REMEMBERED_ACCEPTED_COUNTER,
    REMEMBERED_DROPPED_COUNTER,
    Address,
    XT_CHAINS,
    Backend,
    RulesetSpec,
    TableState,
    delete_table_commands,
    forget_memory_commands,
    installed_divert_all,
    normalize_addresses,
    parse_table,
    reconcile_commands,
    sync_commands,
    xt_chains,
)
from kube_netpol.dataplane.xtables import Xtables, XtablesError, queue_rule_args

__all__ = [
    "Dataplane",
    "DataplaneConfig",
    "DataplaneError",
    "Drift",
    "NftablesError",
    "QueueBackendUnavailable",
    "XtablesError",
    "cleanup",
    "detect_queue_backend",
    "resolve_queue_backend",
]

log = logging.getLogger(__name__)

_FAMILIES = (4, 6)
_V4 = MANAGED_SET_BY_VERSION[4].name
_V6 = MANAGED_SET_BY_VERSION[6].name


class DataplaneError(RuntimeError):
    """The dataplane is used out of order (e.g. sync before start)."""


@dataclass(frozen=True)
class DataplaneConfig:
    table: str = DEFAULT_TABLE
    queue_num: int = DEFAULT_QUEUE_NUM
    fail_open: bool = True  # bypass: traffic flows while no queue reader runs
    accept_root: bool = True  # never judge packets of uid-0 sockets (kubelet probes, node daemons)
    queue_backend: BackendChoice = "auto"
    mark: int = DEFAULT_MARK  # our bit: asks iptables to queue (xt); "judged on prerouting" (bug-1766 fix)
    iptables: str = "iptables"
    ip6tables: str = "ip6tables"
    # Judge new DNS requests on prerouting (https://bugzilla.netfilter.org/show_bug.cgi?id=1766,
    # fixed in kernel 6.12): see kube_netpol.dataplane.ruleset.
    netfilter_bug_1766_fix: bool = True
    # New flows per second one source address may send to the queue; beyond, they are dropped
    # (counted) before the queue. 0: no limit. See kube_netpol.dataplane.ruleset.
    new_flow_limit: int = DEFAULT_NEW_FLOW_LIMIT
    # The kernel remembers the verdicts the agent hands back with the memory's mark bits, for
    # ``memory_timeout`` seconds at most, until the next snapshot (kube_netpol.dataplane.ruleset).
    verdict_memory: bool = False
    memory_timeout: int = DEFAULT_MEMORY_TIMEOUT
    # Queue every DNS answer to a managed pod for the DNS observation (ClusterNetworkPolicy domainNames).
    observe_dns: bool = False

    def spec(self, backend: Backend, divert_all: bool = False, memory_epoch: int = 0) -> RulesetSpec:
        return RulesetSpec(
            table=self.table,
            backend=backend,
            queue_num=self.queue_num,
            fail_open=self.fail_open,
            accept_root=self.accept_root,
            mark=self.mark,
            divert_all=divert_all,
            netfilter_bug_1766_fix=self.netfilter_bug_1766_fix,
            new_flow_limit=self.new_flow_limit,
            verdict_memory=self.verdict_memory,
            memory_timeout=self.memory_timeout,
            memory_epoch=memory_epoch,
            observe_dns=self.observe_dns,
        )


def memory_epoch(generation: int) -> int:
    """The verdict memory's epoch of a snapshot generation (the verdict loop marks with the same)."""
    return generation % MEMORY_EPOCHS


class Dataplane:
    """The nftables table (and xt queue rules) of one agent.

    Not for the per-packet path: every method is one or a few transactions.
    Methods are serialised by a lock, so watch threads may call ``sync``.
    """

    def __init__(
        self,
        config: DataplaneConfig = DataplaneConfig(),
        *,
        nft: NftClient | None = None,
        xtables: Xtables | None = None,
    ) -> None:
        config.spec("nft")  # validate early: table name, queue number, mark
        self.config = config
        self._nft = nft
        self._xt = xtables or Xtables({4: config.iptables, 6: config.ip6tables})
        self._lock = threading.Lock()
        self._spec: RulesetSpec | None = None
        self._elements: dict[str, frozenset[str]] = {}
        self._in_sync = False
        # Named counters restart at 0 when their table is re-created: readings add up across that.
        self._counted_before: dict[str, int] = {}
        self._counted_last: dict[str, int] = {}

    # --- state ---------------------------------------------------------------

    @property
    def nft(self) -> NftClient:
        if self._nft is None:
            self._nft = NftClient()
        return self._nft

    @property
    def started(self) -> bool:
        return self._spec is not None

    @property
    def spec(self) -> RulesetSpec:
        if self._spec is None:
            raise DataplaneError("the dataplane is not started")
        return self._spec

    @property
    def backend(self) -> Backend:
        return self.spec.backend

    @property
    def verdict_memory(self) -> bool:
        """Whether the table has the verdict memory (the verdict loop may hand verdicts back to it)."""
        return self.config.verdict_memory

    @property
    def divert_all(self) -> bool:
        return self.spec.divert_all

    @property
    def in_sync(self) -> bool:
        """Whether the kernel held what this dataplane wants at the last start, sync, check or repair.

        False before start, after a check that found drift, and after a failed
        sync or repair: what readiness reports.
        """
        return self._in_sync

    @property
    def managed(self) -> tuple[frozenset[str], frozenset[str]]:
        """The addresses our sets hold (as far as this process knows): (IPv4, IPv6)."""
        return self._elements.get(_V4, frozenset()), self._elements.get(_V6, frozenset())

    # --- lifecycle -------------------------------------------------------------

    def start(
        self,
        managed_v4: Iterable[Address] | None = None,
        managed_v6: Iterable[Address] | None = None,
        divert_all: bool | None = None,
        generation: int = 0,
    ) -> Backend:
        """Pick the queue backend and bring the kernel to our ruleset, whatever an earlier run left.

        The table, sets and chain are created or repaired in one transaction.
        Set elements: with ``managed_v4``/``managed_v6`` given, the sets end up
        holding exactly those; with None, the elements an earlier run left are
        kept (traffic stays diverted while the agent restarts) until the first
        sync. ``divert_all`` None keeps the mode the kernel's rules are in.
        ``generation``: the snapshot whose verdicts the verdict memory takes;
        whatever it holds from an earlier run is forgotten.
        Stale xt rules of ours are removed (also those of a chain the
        configuration no longer uses). Returns the backend in use.
        """
        with self._lock:
            backend = resolve_queue_backend(self.config.queue_backend, self.nft)
            listing = self.nft.list_table(self.config.table)
            state = parse_table(listing) if listing is not None else None
            base = self.config.spec(backend, memory_epoch=memory_epoch(generation))
            if divert_all is None:
                divert_all = bool(installed_divert_all(base, state))
            spec = replace(base, divert_all=divert_all)
            desired = None
            if managed_v4 is not None or managed_v6 is not None:
                desired = _desired(managed_v4 or (), managed_v6 or ())

            if backend == "xt":
                self._ensure_xt(spec, remove_stale=False)  # queue the new mark before the table sets it
            commands, elements = reconcile_commands(spec, state, desired)
            if commands:
                self.nft.run(commands)
            if backend == "xt":
                # After the table: a PREROUTING rule removed while the old table still marks there would
                # let marked DNS pass unjudged (postrouting skips marked packets).
                self._ensure_xt(spec, remove_stale=True)
            else:
                self._remove_xt(spec.table, tolerate_errors=True)  # left by an earlier xt-backend run
            self._spec, self._elements = spec, elements
            self._in_sync = True
            log.info(
                "dataplane started: table inet %s, backend %s, queue %d%s, %d managed addresses%s",
                spec.table, backend, spec.queue_num, " (bypass)" if spec.fail_open else "",
                sum(len(e) for e in elements.values()),
                ", DNS judged on prerouting (netfilter bug 1766)" if spec.netfilter_bug_1766_fix else "",
            )  # fmt: skip
            if backend == "xt" and spec.netfilter_bug_1766_fix:
                log.info(
                    "xt queue backend: DNS requests are judged before DNAT (iptables mangle PREROUTING); "
                    "requests to a Service address are judged with that address"
                )
            return backend

    def sync(
        self, managed_v4: Iterable[Address], managed_v6: Iterable[Address], divert_all: bool,
        generation: int | None = None,
    ) -> bool:
        """Make the sets hold exactly these addresses and set the divert-all mode, for a new snapshot.

        One transaction: the elements that differ are added and removed
        (switching divert-all also flushes and refills the chain's rules);
        with the verdict memory, everything it remembers is forgotten and it
        takes the verdicts of snapshot ``generation`` from then on (None: the
        next epoch). Returns whether the managed sets or rules changed.
        """
        desired = _desired(managed_v4, managed_v6)
        with self._lock:
            epoch = memory_epoch(generation) if generation is not None else (self.spec.memory_epoch + 1) % MEMORY_EPOCHS
            return self._sync(desired, divert_all, epoch)

    def follow(self, generation: int) -> None:
        """A new snapshot that diverts the same addresses: with the verdict memory, forget what it
        holds and take snapshot ``generation``'s verdicts from then on; nothing without it.

        ``sync`` without reading the addresses again: the agent's common case (a policy change that
        selects the same pods), where normalising 1,000 managed addresses took 6.5 of a 9.6 ms sync.
        """
        with self._lock:
            if self.spec.verdict_memory:
                self._sync(self._elements, self.spec.divert_all, memory_epoch(generation))

    def check(self) -> Drift:
        """Read the kernel back and say how it differs from what this dataplane wants; changes nothing.

        A terse ``list table`` plus the two managed sets (the cost grows with
        the managed addresses: 1-60 ms, docs/performance.md) and, for the xt
        backend, one ``iptables -S``/``ip6tables -S`` of the mangle table.
        """
        with self._lock:
            drift, _ = self._drift(self.spec)
            self._in_sync = not drift
            return drift

    def repair(self) -> Drift:
        """``check``, then bring back whatever differs; returns what differed (false: nothing did).

        The table is repaired in one transaction (``reconcile_commands`` with
        the elements this dataplane put in its sets), the xt queue rules put
        back before it so that a re-created table never marks packets nobody
        queues. Raises NftablesError or XtablesError when the kernel refuses;
        ``in_sync`` is then False.
        """
        with self._lock:
            spec = self.spec
            self._in_sync = False
            drift, state = self._drift(spec)
            if drift.xt_rules:
                self._ensure_xt(spec, remove_stale=False)
            if drift.in_table:
                commands, _ = reconcile_commands(spec, state, self._elements)
                self.nft.run(commands)
            if drift.xt_rules:
                self._ensure_xt(spec, remove_stale=True)
            self._in_sync = True
            return drift

    def new_flows_limited(self) -> int:
        """New flows the per-source limit dropped before the queue since start (a counter for a metric).

        0 when the limit is off. Survives the table being re-created by a repair.
        """
        with self._lock:
            return self._read_counters(LIMITED_COUNTER)[0] if self.spec.new_flow_limit else 0

    def remembered_verdicts(self) -> tuple[int, int]:
        """(accepted, dropped): packets the verdict memory answered in the kernel since start.

        Read from the lookup rules' named counters at scrape time; (0, 0) when
        the memory is off. These packets never reached the queue.
        """
        with self._lock:
            if not self.spec.verdict_memory:
                return 0, 0
            accepted, dropped = self._read_counters(REMEMBERED_ACCEPTED_COUNTER, REMEMBERED_DROPPED_COUNTER)
            return accepted, dropped

    def forget_remembered(self) -> None:
        """Forget what the verdict memory holds (nothing when the memory is off): one transaction that
        makes its sets again with the chains that use them (ruleset.forget_memory_commands).

        For the agent when its flow table fills (controller.py): the kernel then
        holds no more keys than the table did, so its sets never fill. Raises
        NftablesError when the kernel refuses (the table is gone: the guard's
        repair re-creates it, its sets empty).
        """
        with self._lock:
            commands = forget_memory_commands(self.spec)
            if commands:
                self.nft.run(commands)

    def _read_counters(self, *names: str) -> tuple[int, ...]:
        """The named counters' packets since start, from one read of the table's counters."""
        try:
            read = self.nft.counter_packets(self.spec.table)
        except NftablesError as e:  # a NetlinkError is one
            log.debug("cannot read the counters %s: %s", ", ".join(names), e)
            read = {}
        out = []
        for name in names:
            packets = read.get(name, 0)  # 0: gone with the table, the repair brings it back from 0
            if name not in read:
                log.debug("no counter %s in the table", name)
            last = self._counted_last.get(name, 0)
            if packets < last:
                self._counted_before[name] = self._counted_before.get(name, 0) + last
            self._counted_last[name] = packets
            out.append(self._counted_before.get(name, 0) + packets)
        return tuple(out)

    def stop(self) -> None:
        """Fail-open: leave everything (bypass lets traffic flow until the next start).
        Fail-closed: remove the table and our xt rules."""
        with self._lock:
            if self._spec is None:
                return
            if not self.config.fail_open:
                _cleanup(self.config.table, self.nft, self._xt)
            self._spec = None
            self._elements = {}
            self._in_sync = False

    # --- internals -------------------------------------------------------------

    def _sync(self, desired: dict[str, frozenset[str]], divert_all: bool, epoch: int) -> bool:
        old = self.spec
        new = replace(old, divert_all=divert_all, memory_epoch=epoch)
        commands = sync_commands(old, new, self._elements, desired)
        if not commands:
            return False
        changed = old.divert_all != new.divert_all or desired != self._elements
        self._in_sync = False
        try:
            self.nft.run(commands)
        except NftablesError as e:
            # Our picture of the kernel was wrong (someone flushed a set or deleted the table):
            # read it back and repair in one transaction.
            log.warning("dataplane sync failed (%s); reconciling with the kernel", e.message)
            listing = self.nft.list_table(new.table)
            state = parse_table(listing) if listing is not None else None
            commands, _ = reconcile_commands(new, state, desired)
            self.nft.run(commands)
        self._spec, self._elements = new, desired
        self._in_sync = True
        return changed

    def _drift(self, spec: RulesetSpec) -> tuple[Drift, TableState | None]:
        state = self._read_table(spec.table)
        drift = table_drift(spec, state, self._elements)
        if spec.backend == "xt":
            drift = drift.with_xt(self._xt_drift(spec))
        return drift, state

    def _read_table(self, table: str) -> TableState | None:
        """Our table as the kernel has it: everything but the elements in one terse listing, then the
        managed sets' elements. The limiter's sets hold one element per recent source, up to 65,535
        in a flood, which a check need not read."""
        listing = self.nft.list_table(table, terse=True)
        if listing is None:
            return None
        for i, obj in enumerate(listing):
            name = obj.get("set", {}).get("name")
            if name in (_V4, _V6):
                full = self.nft.list_set(table, name)
                if full is not None:
                    listing[i] = {"set": full}
        return parse_table(listing)

    def _xt_drift(self, spec: RulesetSpec) -> tuple[str, ...]:
        """The mangle chains where our queue rule is not exactly the one wanted (missing, changed, doubled)."""
        comment = spec.table  # the table name tags our xt rules: cleanup(table) finds exactly that agent's
        rule = queue_rule_args(mark=spec.mark, queue_num=spec.queue_num, bypass=spec.fail_open, comment=comment)
        drifted = []
        for family in _FAMILIES:
            ours = self._xt.list_ours_by_chain(family, comment)  # one iptables -S for the whole mangle table
            drifted += [f"IPv{family} mangle {chain}" for chain in xt_chains(spec) if ours.get(chain, []) != [rule]]
        return tuple(drifted)

    def _ensure_xt(self, spec: RulesetSpec, *, remove_stale: bool) -> None:
        """Our queue rule in each mangle chain the spec uses; with ``remove_stale``, in no other."""
        comment = spec.table  # the table name tags our xt rules: cleanup(table) finds exactly that agent's
        rule = queue_rule_args(mark=spec.mark, queue_num=spec.queue_num, bypass=spec.fail_open, comment=comment)
        wanted = xt_chains(spec)
        for family in _FAMILIES:
            for chain in wanted:
                self._xt.ensure(family, rule, comment, remove_stale=remove_stale, chain=chain)
            if remove_stale:
                for chain in XT_CHAINS:
                    if chain not in wanted:
                        self._xt.remove_ours(family, comment, chain)

    def _remove_xt(self, table: str, *, tolerate_errors: bool) -> None:
        _remove_xt_rules(self._xt, table, tolerate_errors=tolerate_errors)


def _desired(v4: Iterable[Address], v6: Iterable[Address]) -> dict[str, frozenset[str]]:
    return {_V4: normalize_addresses(v4, 4), _V6: normalize_addresses(v6, 6)}


@dataclass(frozen=True)
class Removed:
    """What a cleanup removed: whether the table existed, and our xt rules by (IP version, chain)."""

    table: bool
    xt_rules: dict[tuple[int, str], int]

    @property
    def nothing(self) -> bool:
        return not self.table and not any(self.xt_rules.values())


def _remove_xt_rules(xt: Xtables, table: str, *, tolerate_errors: bool) -> dict[tuple[int, str], int]:
    errors = []
    removed: dict[tuple[int, str], int] = {}
    for family in _FAMILIES:
        for chain in XT_CHAINS:
            try:
                removed[(family, chain)] = xt.remove_ours(family, table, chain)
            except FileNotFoundError:
                break  # no iptables/ip6tables binary: none of our rules can exist
            except XtablesError as e:
                if not tolerate_errors:
                    errors.append(str(e))
                log.warning("could not remove xt rules: %s", e)
    if errors:
        raise XtablesError("; ".join(errors))
    return removed


def _cleanup(table: str, nft: NftClient, xt: Xtables) -> Removed:
    existed = nft.list_table(table) is not None
    nft.run(delete_table_commands(table))  # deletes it whether or not it appeared meanwhile
    return Removed(existed, _remove_xt_rules(xt, table, tolerate_errors=False))


def cleanup(
    table: str = DEFAULT_TABLE,
    *,
    iptables: str = "iptables",
    ip6tables: str = "ip6tables",
    nft: NftClient | None = None,
    xtables: Xtables | None = None,
) -> Removed:
    """Remove everything an agent with this table name creates: the table and our xt rules.

    Safe when nothing exists; says what it removed. Does not need a running or started Dataplane.
    """
    RulesetSpec(table=table)  # validate the name before touching anything
    return _cleanup(table, nft or NftClient(), xtables or Xtables({4: iptables, 6: ip6tables}))
