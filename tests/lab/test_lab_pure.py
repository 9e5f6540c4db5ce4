"""The lab's pure parts: SCTP INIT packets, namespace names, the topology's commands. No root needed."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit

from kube_netpol.tools.lab.names import MAX_IFNAME, LabNames, Owner, parse_netns_name, process_start_time
from kube_netpol.tools.lab.sctp import build_init, crc32c, parse_init, strip_ipv4_header
from kube_netpol.tools.lab.timing import ENV as TIME_SCALE_ENV
from kube_netpol.tools.lab.timing import scaled, time_scale
from kube_netpol.tools.lab.topology import (
    GATEWAY_V4,
    GATEWAY_V6,
    batch_script,
    host_commands,
    node_link_commands,
    parse_addresses,
)

# --- SCTP -------------------------------------------------------------------------------------


def test_crc32c_matches_the_standard_check_value() -> None:
    # The CRC-32C ("Castagnoli") check value of "123456789".
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_built_init_is_what_scapy_reads_and_its_checksum_is_what_scapy_computes() -> None:
    packet = build_init(40001, 81, 0xDEADBEEF, 12345)
    parsed = SCTP(packet)
    assert (parsed.sport, parsed.dport, parsed.tag) == (40001, 81, 0)
    init = parsed[SCTPChunkInit]
    assert (init.init_tag, init.init_tsn) == (0xDEADBEEF, 12345)
    stated = parsed.chksum
    parsed.chksum = None  # let scapy compute it over the same bytes
    assert SCTP(bytes(parsed)).chksum == stated


def test_parse_init_round_trips_and_rejects_corruption() -> None:
    packet = build_init(50000, 8080, 7, 1)
    init = parse_init(packet)
    assert init is not None and (init.src_port, init.dst_port, init.initiate_tag) == (50000, 8080, 7)
    corrupted = bytearray(packet)
    corrupted[-1] ^= 1
    assert parse_init(bytes(corrupted)) is None
    assert parse_init(packet[:20]) is None
    # A DATA chunk (type 0) with a valid checksum is not an INIT.
    data_chunk = bytes(SCTP(sport=1, dport=2) / SCTPChunkData(data=b"abcdefgh"))
    assert parse_init(data_chunk) is None


def test_init_tag_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        build_init(1, 2, 0, 0)


def test_strip_ipv4_header_honours_ihl() -> None:
    assert strip_ipv4_header(bytes([0x45]) + b"\0" * 19 + b"payload") == b"payload"
    assert strip_ipv4_header(bytes([0x46]) + b"\0" * 23 + b"payload") == b"payload"


# --- names ------------------------------------------------------------------------------------


def test_names_encode_owner_and_parse_back() -> None:
    names = LabNames.new("knlt")
    for name, role in ((names.node_netns(), "node"), (names.host_netns(12), "h12")):
        parsed = parse_netns_name(name)
        assert parsed is not None
        assert (parsed.prefix, parsed.owner, parsed.lab_id, parsed.role) == ("knlt", names.owner, names.lab_id, role)
    assert names.owner.pid == os.getpid() and names.owner.alive()
    assert parse_netns_name("some-other-netns") is None
    assert parse_netns_name("cni-1234-5678") is None


def test_two_labs_get_different_names() -> None:
    assert LabNames.new().node_netns() != LabNames.new().node_netns()


def test_interface_names_fit_ifnamsiz() -> None:
    assert len(LabNames.node_ifname(99999999999)) <= MAX_IFNAME
    with pytest.raises(ValueError):
        LabNames.node_ifname(10**12)


@pytest.mark.parametrize("prefix", ["", "Knl", "k-n", "1abc", "a" * 17])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        LabNames.new(prefix)


def test_owner_is_dead_once_its_process_exits_or_the_pid_is_reused() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(child.pid)
    child.wait()
    assert start is not None
    assert not Owner(child.pid, start).alive()
    me = Owner.current()
    assert not Owner(me.pid, me.start_time + 1).alive()  # same pid, another process


# --- topology ---------------------------------------------------------------------------------


def test_addresses_are_validated() -> None:
    assert parse_addresses(["10.0.0.1", "fd00::1"]) == (
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    )
    for bad in ([], ["10.0.0.1", "10.0.0.1"], [GATEWAY_V4], ["fe80::5"], ["127.0.0.1"], ["10.0.0.0/24"]):
        with pytest.raises(ValueError):
            parse_addresses(bad)
    with pytest.raises(TypeError):
        parse_addresses("10.0.0.1")  # type: ignore[arg-type]


def test_host_commands_address_eth0_and_route_via_the_node() -> None:
    commands = host_commands(parse_addresses(["10.244.1.10", "fd00:10:244:1::10"]))
    assert ["addr", "add", "10.244.1.10/32", "dev", "eth0"] in commands
    assert ["addr", "add", "fd00:10:244:1::10/128", "dev", "eth0", "nodad"] in commands
    assert ["route", "add", "0.0.0.0/0", "via", GATEWAY_V4, "dev", "eth0", "onlink"] in commands
    assert ["route", "add", "::/0", "via", GATEWAY_V6, "dev", "eth0"] in commands
    v4_only = host_commands(parse_addresses(["192.168.200.10"]))
    assert not any("::/0" in command for command in v4_only)


def test_node_commands_create_the_veth_into_the_host_and_route_each_address() -> None:
    commands = node_link_commands("veth3", "knl-1.2-abcdef-h3", parse_addresses(["10.244.1.10", "fd00::a"]))
    assert commands[0] == ["link", "add", "veth3", "type", "veth", "peer", "name", "eth0", "netns", "knl-1.2-abcdef-h3"]
    assert ["route", "add", "10.244.1.10/32", "dev", "veth3"] in commands
    v6_route = ["route", "add", "fd00::a/128", "dev", "veth3"]
    assert v6_route in commands
    assert commands.index(["link", "set", "veth3", "up"]) < commands.index(v6_route)  # routes need the link up


def test_batch_script_refuses_tokens_that_could_change_the_command() -> None:
    assert batch_script([["link", "set", "lo", "up"]]) == "link set lo up\n"
    for token in ["a b", "x\nlink del eth0", "#", '"q"', ""]:
        with pytest.raises(ValueError):
            batch_script([["link", "set", token, "up"]])


def test_time_scale_multiplies_timeouts_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIME_SCALE_ENV, raising=False)
    assert time_scale() == 1.0 and scaled(0.5) == 0.5
    monkeypatch.setenv(TIME_SCALE_ENV, "3")
    assert scaled(0.5) == 1.5
    for bad in ("0.5", "fast", "nan", "-2"):
        monkeypatch.setenv(TIME_SCALE_ENV, bad)
        with pytest.raises(ValueError, match=TIME_SCALE_ENV):
            time_scale()
