"""The ``domainNames`` patterns of ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2).

As ``apis/v1alpha2`` documents ``DomainName``: ``kubernetes.io`` matches only
``kubernetes.io``; ``*.kubernetes.io`` matches one *or more* whole labels in
front of it (``www.kubernetes.io``, ``latest.blog.kubernetes.io``) but not
``kubernetes.io`` itself. Names compare case-insensitively, without the
final dot (the parser stores patterns that way; ``dns.message`` lowers names).
"""

from __future__ import annotations

from typing import Iterable


class DomainPatterns:
    """The patterns of one rule: exact names, and the suffixes (".kubernetes.io") of the wildcards."""

    __slots__ = ("exact", "suffixes", "text")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        texts: list[str] = []
        for pattern in patterns:
            pattern = pattern.rstrip(".").lower()
            texts.append(pattern)
            if pattern.startswith("*."):
                suffixes.append(pattern[1:])  # keep the dot: "*.a.b" -> ".a.b"
            else:
                exact.add(pattern)
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)
        self.text = ", ".join(texts)

    def matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        for suffix in self.suffixes:
            # len > len(suffix): at least one label before the suffix ("*.a.b" never matches "a.b").
            if name.endswith(suffix) and len(name) > len(suffix):
                return True
        return False

    def __repr__(self) -> str:
        return f"DomainPatterns({self.text})"
