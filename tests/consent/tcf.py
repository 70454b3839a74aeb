"""A minimal IAB TCF v2 core-string encoder, written from the public bit layout, for tests only: the
decoder Accord uses must read what a consent management platform writes."""

from __future__ import annotations

import base64
from collections.abc import Collection


def tc_string(purposes: Collection[int], vendors: Collection[int] = (), *, deciseconds: int = 17_000_000_000) -> str:
    bits: list[str] = []

    def put(value: int, width: int) -> None:
        bits.append(format(value, f"0{width}b"))

    def letters(code: str) -> None:
        for letter in code:
            put(ord(letter) - ord("A"), 6)

    put(2, 6)  # version
    put(deciseconds, 36)  # created
    put(deciseconds, 36)  # last updated
    put(7, 12)  # CMP id
    put(1, 12)  # CMP version
    put(1, 6)  # consent screen
    letters("EN")  # consent language
    put(150, 12)  # vendor list version
    put(2, 6)  # TCF policy version
    put(0, 1)  # is service specific
    put(0, 1)  # use non-standard stacks
    put(0, 12)  # special feature opt-ins
    bits.append("".join("1" if i in purposes else "0" for i in range(1, 25)))
    put(0, 24)  # purposes legitimate interest
    put(0, 1)  # purpose one treatment
    letters("DE")  # publisher country
    top = max(vendors, default=0)
    put(top, 16)
    put(0, 1)  # a bit field, not ranges
    bits.append("".join("1" if i in vendors else "0" for i in range(1, top + 1)))
    put(0, 16)  # vendors legitimate interest: none
    put(0, 1)
    put(0, 12)  # publisher restrictions: none
    joined = "".join(bits)
    joined += "0" * (-len(joined) % 8)
    raw = int(joined, 2).to_bytes(len(joined) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
