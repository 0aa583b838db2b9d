"""Sample streams over per-class WebDataset shards: uniform epochs and WM class-aware sampling.

Both are deterministic functions of (seed, rank, worker[, epoch]) and resumable: `state_dict()` is
small JSON (RNG state, stream byte positions, the *ids* of buffered samples with their byte ranges)
and a stream built with it yields exactly what the uninterrupted one would have.

- `UniformStream`: one epoch visits every sample once across all ranks and workers.  The epoch's
  shard order is shuffled (same for everyone); the resulting sample sequence is cut into contiguous
  per-rank, then per-worker ranges, so each consumer's length is known in advance and bytes are read
  once.  A consumer interleaves `interleave` shards (per-class shards must be mixed) into a shuffle
  buffer.
- `ClassAwareStream` (Shen et al., Places2 2015): a shuffled list of classes, cycled and reshuffled
  when exhausted; per class, its shards in a shuffled order read through a small buffer, so every
  sample of a class is drawn once before any repeats, then a new shuffled pass starts.  Each
  (rank, worker) has its own seed.  Open files are bounded by `max_open`; memory by
  classes x `class_buffer` samples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipelines.catalog import Catalog, Cursor, ReaderPool
from pipelines.corpus import stable_hash
from pipelines.tar_stream import RawSample, fetch_sample


@dataclass
class Draw:
    key: str
    cls: int
    members: dict[str, bytes]
    url: str
    offset: int
    size: int

    def ref(self) -> list:
        """What a state needs to fetch this sample again: [url, offset, size, cls]."""
        return [self.url, self.offset, self.size, self.cls]


def _draw(sample: RawSample, url: str, cls: int) -> Draw:
    return Draw(sample.key, cls, sample.members, url, sample.offset, sample.size)


def _refetch(catalog: Catalog, ref: list) -> Draw:
    url, offset, size, cls = ref
    return _draw(fetch_sample(catalog.loc, url, offset, size), url, cls)


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when `total` items are cut into `parts` near-equal contiguous parts."""
    return total * index // parts, total * (index + 1) // parts


class UniformStream:
    def __init__(self, catalog: Catalog, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, buffer_size: int = 1000, interleave: int = 16,
                 state: dict | None = None):
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
        self.catalog, self.seed, self.epoch = catalog, seed, epoch
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.buffer_size, self.interleave = max(1, buffer_size), max(1, interleave)
        self.segments = self._segments()
        self.pool = ReaderPool(catalog.loc, self.interleave, catalog.by_url)
        self.rng = random.Random(stable_hash(seed, "uniform", epoch, rank, worker))
        self.active: list[Cursor] = []
        self.next_segment = 0
        self.turn = 0
        self.buffer: list[Draw] = []
        self.yielded = 0
        if state is not None:
            self._restore(state)

    @staticmethod
    def rank_length(catalog: Catalog, rank: int, world_size: int) -> int:
        """Samples rank `rank` sees per epoch: known before reading anything, so DDP ranks plan their steps."""
        start, stop = split_range(catalog.total, world_size, rank)
        return stop - start

    def __len__(self) -> int:
        return sum(end - start for _, start, end in self.segments)

    def _segments(self) -> list[tuple[str, int, int]]:
        """(url, first, stop) sample ranges of this consumer, in the epoch's shuffled shard order."""
        order = list(self.catalog.shards)
        random.Random(stable_hash(self.seed, "uniform-order", self.epoch)).shuffle(order)
        r0, r1 = split_range(self.catalog.total, self.world_size, self.rank)
        w0, w1 = split_range(r1 - r0, self.num_workers, self.worker)
        lo, hi = r0 + w0, r0 + w1
        segments, base = [], 0
        for shard in order:
            a, b = max(lo, base), min(hi, base + shard.nsamples)
            if a < b:
                segments.append((shard.url, a - base, b - base))
            base += shard.nsamples
        return segments

    def _pull(self) -> Draw | None:
        while True:
            while len(self.active) < self.interleave and self.next_segment < len(self.segments):
                url, first, stop = self.segments[self.next_segment]
                self.active.append(Cursor(url, first, stop, 0 if first == 0 else None))
                self.next_segment += 1
            if not self.active:
                return None
            self.turn %= len(self.active)
            cursor = self.active[self.turn]
            sample = self.pool.read(cursor)
            if cursor.done:
                self.pool.release(cursor)
                self.active.pop(self.turn)
            else:
                self.turn += 1
            if sample is not None:
                return _draw(sample, cursor.url, self.catalog.by_url[cursor.url].cls)

    def __iter__(self):
        while True:
            while len(self.buffer) < self.buffer_size:
                item = self._pull()
                if item is None:
                    break
                self.buffer.append(item)
            if not self.buffer:
                self.pool.close()
                return
            j = self.rng.randrange(len(self.buffer))
            item = self.buffer[j]
            self.buffer[j] = self.buffer[-1]
            self.buffer.pop()
            self.yielded += 1
            yield item

    @property
    def skipped(self) -> int:
        return self.pool.skipped

    def state_dict(self) -> dict:
        return {"mode": "uniform", "epoch": self.epoch, "rng": _rng_state(self.rng),
                "active": [c.to_json() for c in self.active], "next_segment": self.next_segment,
                "turn": self.turn, "buffer": [d.ref() for d in self.buffer], "yielded": self.yielded,
                "skipped": self.pool.skipped}

    def _restore(self, state: dict) -> None:
        if state.get("mode") != "uniform" or state["epoch"] != self.epoch:
            raise ValueError("state is not from a uniform stream of this epoch")
        _set_rng(self.rng, state["rng"])
        self.active = [Cursor(**c) for c in state["active"]]
        self.next_segment, self.turn, self.yielded = state["next_segment"], state["turn"], state["yielded"]
        self.pool.skipped = state["skipped"]
        self.buffer = [_refetch(self.catalog, ref) for ref in state["buffer"]]


class _ClassPass:
    """One class's current pass over its samples: shard order, position, small buffer."""

    def __init__(self, shards: list[str]):
        self.order, self.next_shard, self.cursor, self.buffer, self.passes = shards, 0, None, [], 0


class ClassAwareStream:
    def __init__(self, catalog: Catalog, seed: int = 0, rank: int = 0, worker: int = 0, class_buffer: int = 4,
                 max_open: int = 64, state: dict | None = None):
        self.catalog, self.class_buffer = catalog, max(1, class_buffer)
        self.rng = random.Random(stable_hash(seed, "class-aware", rank, worker))
        self.pool = ReaderPool(catalog.loc, max_open, catalog.by_url)
        self.classes = sorted(c for c in catalog.by_class if c >= 0)
        if not self.classes:
            raise ValueError(f"{catalog.loc.uri()} has no labeled shards for class-aware sampling")
        self.class_order: list[int] = []
        self.class_next = 0
        self.passes: dict[int, _ClassPass] = {}
        self.yielded = 0
        if state is not None:
            self._restore(state)

    def _next_class(self) -> int:
        if self.class_next >= len(self.class_order):
            self.class_order = list(self.classes)
            self.rng.shuffle(self.class_order)
            self.class_next = 0
        self.class_next += 1
        return self.class_order[self.class_next - 1]

    def _new_pass(self, cls: int) -> _ClassPass:
        urls = [s.url for s in self.catalog.by_class[cls]]
        self.rng.shuffle(urls)
        previous = self.passes.get(cls)
        p = _ClassPass(urls)
        p.passes = previous.passes + 1 if previous else 1
        self.passes[cls] = p
        return p

    def _pull(self, p: _ClassPass) -> Draw | None:
        while True:
            if p.cursor is None or p.cursor.done:
                if p.cursor is not None:
                    self.pool.release(p.cursor)
                if p.next_shard >= len(p.order):
                    return None
                url = p.order[p.next_shard]
                p.cursor = Cursor(url, 0, self.catalog.by_url[url].nsamples, 0)
                p.next_shard += 1
            sample = self.pool.read(p.cursor)
            if sample is not None:
                return _draw(sample, p.cursor.url, self.catalog.by_url[p.cursor.url].cls)

    def __iter__(self):
        while True:
            cls = self._next_class()
            p = self.passes.get(cls) or self._new_pass(cls)
            for attempt in range(2):
                # Refill only when empty, `class_buffer` samples at once: with more classes than open
                # files, one reopen + seek (one ranged request on object stores) per `class_buffer` draws.
                if not p.buffer:
                    for _ in range(self.class_buffer):
                        item = self._pull(p)
                        if item is None:
                            break
                        p.buffer.append(item)
                if p.buffer or attempt:
                    break
                p = self._new_pass(cls)  # every sample of the class has been drawn: a new shuffled pass
            if not p.buffer:  # every shard of the class is unreadable: drop the class
                self.classes.remove(cls)
                if not self.classes:
                    return
                continue
            item = p.buffer.pop(self.rng.randrange(len(p.buffer)))
            self.yielded += 1
            yield item

    @property
    def skipped(self) -> int:
        return self.pool.skipped

    @property
    def buffered(self) -> list[Draw]:
        """Samples held in memory right now: at most classes x `class_buffer`."""
        return [d for p in self.passes.values() for d in p.buffer]

    def state_dict(self) -> dict:
        return {"mode": "class-aware", "rng": _rng_state(self.rng), "classes": self.classes,
                "class_order": self.class_order, "class_next": self.class_next, "yielded": self.yielded,
                "skipped": self.pool.skipped,
                "passes": {str(c): {"order": p.order, "next_shard": p.next_shard, "passes": p.passes,
                                    "cursor": p.cursor.to_json() if p.cursor else None,
                                    "buffer": [d.ref() for d in p.buffer]} for c, p in self.passes.items()}}

    def _restore(self, state: dict) -> None:
        if state.get("mode") != "class-aware":
            raise ValueError("state is not from a class-aware stream")
        _set_rng(self.rng, state["rng"])
        self.classes, self.class_order = list(state["classes"]), list(state["class_order"])
        self.class_next, self.yielded = state["class_next"], state["yielded"]
        self.pool.skipped = state["skipped"]
        for c, ps in state["passes"].items():
            p = _ClassPass(list(ps["order"]))
            p.next_shard, p.passes = ps["next_shard"], ps["passes"]
            p.cursor = Cursor(**ps["cursor"]) if ps["cursor"] else None
            p.buffer = [_refetch(self.catalog, ref) for ref in ps["buffer"]]
            self.passes[int(c)] = p
