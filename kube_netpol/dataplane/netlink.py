"""The netlink numbers and layouts shared by the modules that speak nfnetlink themselves
(conntrack.py: ctnetlink; nfnetlink.py: nf_tables dumps; monitor.py: nf_tables events).

From linux/netlink.h and linux/netfilter/nfnetlink.h.
"""

from __future__ import annotations

import struct
from typing import Final

NETLINK_NETFILTER: Final = 12
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
NFGEN: Final = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id (big-endian)
ATTR: Final = struct.Struct("=HH")  # nlattr: length, type
