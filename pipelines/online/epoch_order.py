"""The order of a uniform epoch: a global shuffle of every sample of the job, as a pure function.

Shards are written one class at a time, so reading them in turn gives batches of a few classes: at 365
Places-like classes in shards of 1,000, WebDataset's shard shuffle + 1,000-sample buffer puts about 5
classes in a batch of 256, where a random permutation of the same samples puts 167
(`benchmarks/sampling_quality.py`).  Here position q of epoch e is a row of the class index
(`class_offsets`: every sample's byte range):

- the rows are cut into blocks of `block` consecutive rows (samples next to each other in a shard, so
  a block is one range read), on a grid shifted by a seeded amount each epoch, so which samples travel
  together changes from epoch to epoch;
- the blocks are visited in a pseudo-random permutation (`wm_sequence.permute`, O(1) memory), and a
  consumer's share is a contiguous range of positions, so every sample is read once per epoch across
  all ranks and loader workers;
- a `ShuffleBuffer` mixes what a consumer reads: with `block` 1 the order is already a random
  permutation; larger blocks (fewer requests on object stores) need a larger buffer to stay as mixed
  (`benchmarks/sampling_quality.py` prints the table).
"""

from __future__ import annotations

import random

from common.hashing import stable_hash
from pipelines.online.wm_sequence import permute


class EpochOrder:
    """Position q (0 <= q < rows) of an epoch -> the row of the class index it reads."""

    def __init__(self, rows: int, block: int = 1, seed: int = 0, epoch: int = 0):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.rows, self.block = rows, block
        self.blocks = rows // block  # whole blocks; the last rows % block rows end the epoch
        self.key = (seed, "uniform", epoch)
        self.shift = stable_hash(seed, "uniform-grid", epoch) % max(1, rows)

    def row(self, q: int) -> int:
        if not 0 <= q < self.rows:
            raise IndexError(f"{q} not in range({self.rows})")
        if q < self.blocks * self.block:
            b, within = divmod(q, self.block)
            q = permute(b, self.blocks, self.key) * self.block + within
        return (q + self.shift) % self.rows

    def block_end(self, q: int) -> int:
        """The first position after q's block (positions of one block are read together)."""
        if q >= self.blocks * self.block:
            return self.rows
        return (q // self.block + 1) * self.block


class ShuffleBuffer:
    """Items handed out in a random order from a pool refilled to `size`: `rng` makes it reproducible,
    and its items (in order) plus the rng's state are all a resumed stream needs."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = max(1, size), rng
        self.items: list = []

    @property
    def wants(self) -> bool:
        return len(self.items) < self.size

    def add(self, items: list) -> None:
        self.items.extend(items)

    def pop(self):
        j = self.rng.randrange(len(self.items))
        item = self.items[j]
        self.items[j] = self.items[-1]
        self.items.pop()
        return item

    def __len__(self) -> int:
        return len(self.items)
