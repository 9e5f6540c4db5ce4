"""After a lab is gone: did anything of it end up in the root network namespace?

Each lab's agent uses a table name of its own, and the lab's namespaces carry
the lab's id, so the check looks for exactly that lab's traces and is not
confused by anything else on the machine.
"""

from __future__ import annotations

from kube_netpol.dataplane.nft import NftClient
from kube_netpol.dataplane.ruleset import FAMILY, XT_CHAINS
from kube_netpol.dataplane.xtables import Xtables, XtablesError
from kube_netpol.tools.lab.netns import list_netns


def root_leaks(lab_id: str, table: str) -> list[str]:
    """What the lab and its agent left in this process's (the root) namespace; empty when clean.

    Call from a thread in the root namespace (the main thread always is).
    """
    leaks = [f"network namespace {name}" for name in list_netns() if f"-{lab_id}-" in name]
    if NftClient().list_table(table) is not None:
        leaks.append(f"nftables table {FAMILY} {table}")
    xtables = Xtables()
    for family in (4, 6):
        for chain in XT_CHAINS:
            try:
                rules = xtables.list_ours(family, table, chain=chain)
            except (XtablesError, FileNotFoundError) as err:
                leaks.append(f"cannot list IPv{family} xtables rules in {chain}: {err}")
                continue
            leaks += [f"IPv{family} xtables rule in mangle {chain}: {' '.join(rule)}" for rule in rules]
    return leaks
