"""Egress by domain name: what pods learnt from DNS answers on their way to them.

- ``message``: parse a DNS answer (pure, bounded, never raises anything but DnsError);
- ``names``: the ``domainNames`` patterns of ClusterNetworkPolicy and how they match;
- ``cache``: per pod, name -> addresses with expiry, bounded;
- ``observe``: one queued IP packet carrying a DNS answer -> the cache (the verdict
  loop and the offline conformance harness call the same function).
"""

from kube_netpol.dns.cache import DnsCache
from kube_netpol.dns.message import DnsError, parse_answer

__all__ = ["DnsCache", "DnsError", "parse_answer"]
