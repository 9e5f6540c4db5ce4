"""Packet header parsing for the per-packet hot path (pure: bytes in, Packet out)."""

from kube_netpol.packet.parser import MalformedPacket, parse_packet

__all__ = ["MalformedPacket", "parse_packet"]
