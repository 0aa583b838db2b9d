"""A hash that is the same in every process and every run: what makes sample keys, shard order, epoch
shuffles, WM sequences and augmentation draws reproducible across Ray workers and restarts
(Python's `hash()` is salted per process)."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object) -> int:
    """64 bits of BLAKE2b over the parts' str() forms."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
