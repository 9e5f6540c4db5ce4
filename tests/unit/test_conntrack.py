"""Parsing ``conntrack -L`` output and the ``conntrack -D`` arguments, without a kernel."""

from __future__ import annotations

import subprocess

import pytest

from kube_netpol.dataplane.conntrack import ConntrackError, Flow, delete_args, flush_flows, list_flows, parse_line

# Lines as conntrack v1.4.7 prints them (taken from a test namespace).
EXTENDED = """\
ipv6     10 udp      17 29 src=::1 dst=fd00::2 sport=60000 dport=5353 [UNREPLIED] src=fd00::2 dst=::1 sport=5353 dport=60000 mark=0 use=1
ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=60110 dport=8080 src=10.0.0.2 dst=10.0.0.1 sport=8080 dport=60110 [ASSURED] mark=0 use=1
ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=1 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=1 mark=0 use=1
ipv4     2 sctp     132 3 COOKIE_WAIT src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=80 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=5000 mark=0 zone=3 use=1
ipv4     2 unknown  47 599 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0 use=1
"""


def test_parse_extended_lines_take_original_direction() -> None:
    flows = [parse_line(line) for line in EXTENDED.splitlines()]
    assert flows == [
        Flow(6, 17, "::1", "fd00::2", 60000, 5353),
        Flow(4, 6, "10.0.0.1", "10.0.0.2", 60110, 8080),
        Flow(4, 1, "10.0.0.1", "10.0.0.2", 0, 0),
        Flow(4, 132, "10.0.0.1", "10.0.0.2", 5000, 80),
        Flow(4, 47, "10.0.0.1", "10.0.0.2", 0, 0),
    ]


def test_parse_plain_lines_and_noise() -> None:
    plain = "tcp      6 431999 ESTABLISHED src=fd00::1 dst=fd00::2 sport=1 dport=2 src=fd00::2 dst=fd00::1 sport=2 dport=1"
    assert parse_line(plain) == Flow(6, 6, "fd00::1", "fd00::2", 1, 2)
    assert parse_line("conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.") is None
    assert parse_line("") is None


def test_delete_args() -> None:
    assert delete_args(Flow(4, 6, "10.0.0.1", "10.0.0.2", 1234, 80)) == [
        "conntrack", "-D", "-f", "ipv4", "-p", "tcp", "-s", "10.0.0.1", "-d", "10.0.0.2",
        "--sport", "1234", "--dport", "80",
    ]  # fmt: skip
    assert delete_args(Flow(6, 58, "fd00::1", "fd00::2")) == [
        "conntrack", "-D", "-f", "ipv6", "-p", "icmpv6", "-s", "fd00::1", "-d", "fd00::2",
    ]  # fmt: skip
    assert delete_args(Flow(4, 132, "10.0.0.1", "10.0.0.2", 1, 2))[5] == "sctp"


def _done(rc: int, stdout: str = "", stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], rc, stdout, stderr)


def test_flush_counts_and_tolerates_gone_flows() -> None:
    answers = iter(
        [
            _done(0, stderr="conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n"),
            _done(1, stderr="conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"),
        ]
    )
    calls: list[list[str]] = []

    def runner(args: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return next(answers)

    flows = [Flow(4, 6, "10.0.0.1", "10.0.0.2", 1, 2), Flow(4, 17, "10.0.0.1", "10.0.0.3", 3, 4)]
    assert flush_flows(flows, runner) == 1
    assert calls == [delete_args(f) for f in flows]


def test_flush_and_list_raise_real_failures() -> None:
    with pytest.raises(ConntrackError, match="Operation failed"):
        flush_flows([Flow(4, 6, "10.0.0.1", "10.0.0.2", 1, 2)], lambda a: _done(1, stderr="Operation failed: invalid"))
    with pytest.raises(ConntrackError):
        list_flows(lambda a: _done(1, stderr="conntrack: permission denied"))
    assert list_flows(lambda a: _done(0, EXTENDED))[1] == Flow(4, 6, "10.0.0.1", "10.0.0.2", 60110, 8080)
