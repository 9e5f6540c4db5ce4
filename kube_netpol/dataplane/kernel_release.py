"""What this node's kernel fixes, read from its release string (``uname -r``).

Netfilter bug 1766 (https://bugzilla.netfilter.org/show_bug.cgi?id=1766): two
packets of one UDP flow held in NFQUEUE at once race to create its conntrack
entry, and the loser is dropped at confirmation when DNAT picked different
backends for them (glibc's parallel A and AAAA queries to a DNS Service).
Mainline fixed it in 6.12; the reference implementation says the same of its
``--netfilter-bug-1766-fix`` flag. Older kernels may carry a backport, but a
release string cannot tell: below 6.12 the workaround stays on.
"""

from __future__ import annotations

import re
from typing import Final

#: The first mainline release whose conntrack resolves the clash of packets queued at once.
BUG_1766_FIXED_IN: Final = (6, 12)

_VERSION_RE: Final = re.compile(r"^(\d+)\.(\d+)")


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release such as ``6.1.0-28-amd64``; None when it does not start so."""
    found = _VERSION_RE.match(release.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def fixes_bug_1766(release: str) -> bool:
    """Whether a kernel of ``release`` is known to fix netfilter bug 1766 (unknown: no)."""
    version = kernel_version(release)
    return version is not None and version >= BUG_1766_FIXED_IN
