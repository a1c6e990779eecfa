"""Hand-built protobuf wire bytes for tests that send what a generated client never would."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    """The key of a field: its number and wire type."""
    return varint(field << 3 | wire)
