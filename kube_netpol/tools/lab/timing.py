"""One knob for slow machines: ``KUBE_NETPOL_LAB_TIME_SCALE`` multiplies the lab tools' timeouts.

The probe timeouts and the waits for the agent are sized for a machine that
runs Python at native speed. Under emulation (the real-kernel tier's guest
without KVM runs Python about 20 times slower) a first packet may need more
than half a second; the tier sets the scale instead of each caller guessing.
"""

from __future__ import annotations

import os

ENV = "KUBE_NETPOL_LAB_TIME_SCALE"


def time_scale() -> float:
    """The factor from the environment (1 when unset); at least 1."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a number >= 1, not {raw!r}") from None
    if not scale >= 1:  # also refuses nan
        raise ValueError(f"{ENV} must be a number >= 1, not {raw!r}")
    return scale


def scaled(seconds: float) -> float:
    return seconds * time_scale()
