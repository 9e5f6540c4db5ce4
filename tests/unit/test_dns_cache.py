"""The per-pod DNS cache (bounds, TTL cap and floor, expiry), the domainNames patterns, and observe()."""

from __future__ import annotations

import ipaddress

import pytest

from kube_netpol.api.cluster import PodRecord
from kube_netpol.dns.cache import DnsCache
from kube_netpol.dns.message import DnsError
from kube_netpol.dns.names import DomainPatterns
from kube_netpol.dns.observe import observe
from kube_netpol.tools.lab.dnswire import TYPE_A, TYPE_AAAA, query, response, udp_packet

A = bytes([192, 168, 200, 20])
B = bytes([192, 168, 200, 21])
POD = ("x", "a")
OTHER = ("y", "a")


def test_learn_and_lookup_per_pod():
    cache = DnsCache()
    assert cache.learn(POD, "api.example.com", [(A, 300), (B, 300)], now=100.0) == 2
    assert cache.names(POD, A) == {"api.example.com": 400.0}
    assert cache.names(OTHER, A) == {}  # never shared between pods
    assert len(cache) == 2


def test_ttl_is_capped_and_floored():
    cache = DnsCache(max_ttl=600, min_ttl=5)
    cache.learn(POD, "long.example.com", [(A, 86400)], now=0.0)
    cache.learn(POD, "zero.example.com", [(A, 0)], now=0.0)
    assert cache.names(POD, A) == {"long.example.com": 600.0, "zero.example.com": 5.0}


def test_relearning_refreshes_without_growing():
    cache = DnsCache()
    cache.learn(POD, "api.example.com", [(A, 10)], now=0.0)
    cache.learn(POD, "api.example.com", [(A, 10)], now=5.0)
    assert len(cache) == 1 and cache.names(POD, A)["api.example.com"] == 15.0


def test_per_pod_bound_pushes_out_the_oldest_expired_first():
    cache = DnsCache(max_per_pod=3)
    cache.learn(POD, "old.example.com", [(A, 5)], now=0.0)  # expires at 5
    cache.learn(POD, "b.example.com", [(A, 100)], now=0.0)
    cache.learn(POD, "c.example.com", [(A, 100)], now=0.0)
    cache.learn(POD, "d.example.com", [(A, 100)], now=10.0)  # old has expired: it goes
    assert set(cache.names(POD, A)) == {"b.example.com", "c.example.com", "d.example.com"}
    cache.learn(POD, "e.example.com", [(A, 100)], now=11.0)  # none expired: the oldest (b) goes
    assert set(cache.names(POD, A)) == {"c.example.com", "d.example.com", "e.example.com"}
    assert cache.evicted == 1 and len(cache) == 3


def test_global_bound_refuses_until_entries_expire():
    cache = DnsCache(max_entries=2)
    cache.learn(POD, "a.example.com", [(A, 10)], now=0.0)
    cache.learn(OTHER, "b.example.com", [(A, 10)], now=0.0)
    assert cache.learn(OTHER, "c.example.com", [(B, 10)], now=1.0) == 0
    assert cache.refused == 1 and len(cache) == 2 and cache.names(OTHER, B) == {}
    assert cache.learn(OTHER, "c.example.com", [(B, 10)], now=20.0) == 1  # the others expired and were swept
    assert len(cache) == 1 and cache.names(POD, A) == {}


def test_sweep_drops_expired_and_empty_pods():
    cache = DnsCache()
    cache.learn(POD, "a.example.com", [(A, 10), (B, 100)], now=0.0)
    cache.sweep(now=50.0)
    assert cache.names(POD, A) == {} and set(cache.names(POD, B)) == {"a.example.com"} and len(cache) == 1
    cache.sweep(now=500.0)
    assert len(cache) == 0 and cache.names(POD, B) == {}


@pytest.mark.parametrize("pattern, name, expected", [
    ("kubernetes.io", "kubernetes.io", True),
    ("kubernetes.io", "www.kubernetes.io", False),
    ("kubernetes.io", "my-kubernetes.io", False),
    ("blog.kubernetes.io", "www.kubernetes.io", False),
    ("*.kubernetes.io", "www.kubernetes.io", True),
    ("*.kubernetes.io", "latest.blog.kubernetes.io", True),  # '*' covers one or more labels
    ("*.kubernetes.io", "kubernetes.io", False),
    ("*.kubernetes.io", "wikipedia.org", False),
    ("*.kubernetes.io", "xkubernetes.io", False),
    ("API.Example.COM.", "api.example.com", True),
])
def test_domain_patterns_follow_the_api(pattern, name, expected):
    assert DomainPatterns([pattern]).matches(name) is expected


def _pod(namespace: str, name: str, ip: str) -> PodRecord:
    return PodRecord(namespace, name, {}, {}, "node", {}, (ipaddress.ip_address(ip).packed,), False, False, (), {})


def test_observe_learns_for_the_pod_the_answer_goes_to():
    pods = {ipaddress.ip_address("10.244.1.10").packed: _pod("x", "a", "10.244.1.10")}
    answer = response(query("api.example.com", TYPE_A, 9), ["192.168.200.20"], 300)
    cache = DnsCache()
    packet = udp_packet("10.96.0.10", "10.244.1.10", 53, 40000, answer)
    assert observe(cache, packet, pods.get, now=0.0) == 1
    assert cache.names(POD, A) == {"api.example.com": 300.0}
    six = response(query("api.example.com", TYPE_AAAA, 9), ["fd00::20"], 300)
    pods[ipaddress.ip_address("fd00:10:244:1::10").packed] = _pod("x", "a", "fd00:10:244:1::10")
    assert observe(cache, udp_packet("fd00:10:96::10", "fd00:10:244:1::10", 53, 40000, six), pods.get, now=0.0) == 1
    with pytest.raises(DnsError, match="no pod"):
        observe(cache, udp_packet("10.96.0.10", "10.244.9.9", 53, 40000, answer), pods.get)
    with pytest.raises(DnsError, match="not 53"):
        observe(cache, udp_packet("10.96.0.10", "10.244.1.10", 5353, 40000, answer), pods.get)
    for cut in range(len(packet)):
        with pytest.raises(DnsError):
            observe(cache, packet[:cut], pods.get)
