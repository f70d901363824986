"""CRC32 twins: a different, still valid JSON body with the CRC32 of a given one.

PayPal signs only the CRC32 of a body. CRC32 is affine over GF(2): flipping chosen bits
changes it by the XOR of what each flip does alone, whatever the rest of the body is.
So 32 or more free bits (here, letters of a padding string that may each be `a` or `c`)
can be set, by Gaussian elimination, to give any CRC32 at all, and the body stays
printable ASCII JSON: exactly what an attacker who captured one transmission would send.
"""

from __future__ import annotations

import zlib

_FREE = 64  # letters in the padding; each contributes one free bit
_BIT = ord("a") ^ ord("c")


def crc32_twin(template: str, target: int) -> bytes:
    """`template` with its `{pad}` replaced so that the body's CRC32 equals `target`."""
    base = template.replace("{pad}", "a" * _FREE).encode()
    start = base.index(b"a" * _FREE)
    zero = zlib.crc32(bytes(len(base)))

    def effect(position: int) -> int:  # the linear part of flipping one letter
        flipped = bytearray(len(base))
        flipped[position] = _BIT
        return zlib.crc32(bytes(flipped)) ^ zero

    # Gaussian elimination: rows are (effect, set of positions producing it).
    pivots: dict[int, tuple[int, int]] = {}
    for offset in range(_FREE):
        value, chosen = effect(start + offset), 1 << offset
        for bit in sorted(pivots, reverse=True):
            if value >> bit & 1:
                value ^= pivots[bit][0]
                chosen ^= pivots[bit][1]
        if value:
            pivots[value.bit_length() - 1] = (value, chosen)
    need, chosen = (zlib.crc32(base) ^ target) & 0xFFFFFFFF, 0
    for bit in sorted(pivots, reverse=True):
        if need >> bit & 1:
            need ^= pivots[bit][0]
            chosen ^= pivots[bit][1]
    if need:
        raise ValueError("not enough free bits for this CRC32")
    body = bytearray(base)
    for offset in range(_FREE):
        if chosen >> offset & 1:
            body[start + offset] ^= _BIT
    assert zlib.crc32(bytes(body)) & 0xFFFFFFFF == target
    return bytes(body)
