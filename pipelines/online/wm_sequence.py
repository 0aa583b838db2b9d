"""The WM class-aware procedure run once for the whole job, as a pure function of the draw number.

Shen et al.'s procedure (Places2 2015): classes are drawn from a shuffled class list, cycled and
reshuffled when exhausted; for each class, from a shuffled list of its samples, every sample once
before any repeats, then a new shuffle.  Here draw g of the job is computed, not simulated:

- cycle c = g // C and the cycle's class order (a seeded shuffle of the C classes) give the class k;
- every cycle draws each class once, so draw g is class k's c-th draw: pass p = c // n_k, position
  i = c % n_k of that pass;
- the pass's order is a pseudo-random permutation of the class's n_k samples (`permute`: a keyed
  Feistel network with cycle walking), so a pass costs no memory and two passes are unrelated.

Every (rank, loader worker) stream takes its own share of g = 0, 1, 2, ...: `job_draw`, a batch of
consecutive draws at a time, so the streams never draw the same g, and at each training step the W
ranks' batches are W consecutive blocks of the one sequence.  Resuming a stream needs one number.
"""

from __future__ import annotations

import hashlib
import random

from common.hashing import stable_hash

ROUNDS = 4


def permute(i: int, n: int, key: tuple) -> int:
    """Position i of a pseudo-random permutation of range(n) chosen by `key`: a bijection, computed in
    O(1) memory.  A 4-round Feistel network on the smallest even-bit domain >= n (at most 4n), with
    cycle walking back into range(n) (under 4 rounds of walking on average)."""
    if not 0 <= i < n:
        raise IndexError(f"{i} not in range({n})")
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half, mask = bits // 2, (1 << (bits // 2)) - 1
    salt = hashlib.blake2b(repr(key).encode(), digest_size=32).digest()
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(ROUNDS):
            digest = hashlib.blake2b(right.to_bytes(8, "big") + bytes([r]), digest_size=8, key=salt).digest()
            left, right = right, left ^ (int.from_bytes(digest, "big") & mask)
        x = (left << half) | right
        if x < n:
            return x


class WMSequence:
    """Draw g of the job -> (class id, index of the sample within its class, 0..n_k-1)."""

    def __init__(self, counts: dict[int, int], seed: int = 0):
        self.counts = {k: n for k, n in counts.items() if n > 0}
        if not self.counts:
            raise ValueError("class-aware sampling needs at least one class with samples")
        self.classes = sorted(self.counts)
        self.seed = seed
        self._orders: dict[int, list[int]] = {}  # a few recent cycles

    def class_order(self, cycle: int) -> list[int]:
        order = self._orders.get(cycle)
        if order is None:
            order = list(self.classes)
            random.Random(stable_hash(self.seed, "wm-classes", cycle)).shuffle(order)
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[cycle] = order
        return order

    def draw(self, g: int) -> tuple[int, int]:
        cycle, position = divmod(g, len(self.classes))
        k = self.class_order(cycle)[position]
        return k, self.class_draw(k, cycle)  # every cycle draws each class once: this is its cycle-th draw

    def class_draw(self, k: int, j: int) -> int:
        """The sample of class k's j-th draw of the job: position j % n of its pass j // n."""
        passes, i = divmod(j, self.counts[k])
        return permute(i, self.counts[k], (self.seed, "wm-pass", k, passes))


def job_draw(taken: int, stream: int, streams: int, batch: int, start: int = 0) -> int:
    """The job's draw number of a stream's draw number `taken`: stream s of S takes blocks of `batch`
    consecutive draws, block m of it being the job's block m * S + s, after the first `start` draws."""
    block, within = divmod(taken, batch)
    return start + (block * streams + stream) * batch + within


def stream_index(rank: int, world_size: int, worker: int) -> int:
    """Loader worker w of every rank runs at the same steps (DataLoader's round-robin): its streams are
    neighbours, so each step's batches are consecutive blocks of the job's sequence."""
    return worker * world_size + rank
