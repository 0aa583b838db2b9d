"""Sample streams over per-class WebDataset shards: uniform epochs and WM class-aware sampling.

Both are deterministic functions of the seed and the consumer's place in the job (rank and loader
worker[, epoch]) and resumable: `state_dict()` is small JSON (uniform: RNG state, stream byte
positions, the *ids* of buffered samples with their byte ranges; class-aware: a few numbers) and a
stream built with it yields exactly what the uninterrupted one would have.

- `UniformStream`: one epoch visits every sample once across all ranks and workers.  The epoch's
  shard order is shuffled (same for everyone); the resulting sample sequence is cut into contiguous
  per-rank, then per-worker ranges, so each consumer's length is known in advance and bytes are read
  once.  A consumer interleaves `interleave` shards (per-class shards must be mixed) into a shuffle
  buffer.
- `ClassAwareStream` (Shen et al., Places2 2015): this consumer's share of one WM sequence for the
  whole job (`wm_sequence`): a shuffled list of classes, cycled and reshuffled when exhausted; per
  class, a shuffled order of all its samples, every sample drawn once before any repeats, then a new
  shuffle.  Each draw is one range read (`class_offsets`); its state is a few numbers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from pipelines.catalog import READ_ERRORS, Catalog, Cursor, ReaderPool
from pipelines.class_offsets import ClassOffsets
from pipelines.corpus import stable_hash
from pipelines.tar_stream import RawSample, fetch_sample, parse_sample
from pipelines.wm_sequence import WMSequence, job_draw, stream_index

log = logging.getLogger(__name__)


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


class ClassAwareStream:
    """This (rank, loader worker)'s share of the job's one WM sequence (`wm_sequence`): together, the
    W x K streams of a job draw what the WM procedure run once for the cluster draws, none twice.
    Each draw is one range read of its sample (`class_offsets`: one request on object stores; locally
    through at most `max_open` open files; nothing buffered); an unreadable sample is skipped, counted,
    and the next draw taken."""

    def __init__(self, catalog: Catalog, seed: int = 0, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, batch_size: int = 1, start: int = 0, max_open: int = 64,
                 state: dict | None = None):
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
        self.catalog = catalog
        self.offsets = ClassOffsets(catalog)
        if not self.offsets.counts:
            raise ValueError(f"{catalog.loc.uri()} has no labeled shards for class-aware sampling")
        self.sequence = WMSequence(self.offsets.counts, seed)
        self.stream, self.streams = stream_index(rank, world_size, worker), world_size * num_workers
        self.batch = max(1, batch_size)
        self.start, self.taken, self.yielded, self.skipped = start, 0, 0, 0
        self.max_open = max(1, max_open)
        self._files: dict = {}  # url -> open local file, least recently used first
        self._reported: set[str] = set()
        if state is not None:
            self._restore(state)

    def next_job_draw(self) -> int:
        return job_draw(self.taken, self.stream, self.streams, self.batch, self.start)

    def __iter__(self):
        failing = 0
        while failing <= self.offsets.rows:  # every draw failing for a whole corpus' worth: all unreadable
            k, i = self.sequence.draw(self.next_job_draw())
            self.taken += 1
            url, offset, size = self.offsets.locate(k, i)
            try:
                if not size:
                    raise EOFError(f"{url}: sample {i} of class {k} could not be indexed")
                sample = parse_sample(self._read(url, offset, size), url, offset)
            except READ_ERRORS as exc:
                self.skipped += 1
                failing += 1
                if url not in self._reported:  # once per shard, not once per sample
                    self._reported.add(url)
                    log.warning("skipping unreadable samples of shard %s: %s: %s", self.catalog.loc.uri(url),
                                type(exc).__name__, exc)
                continue
            failing = 0
            self.yielded += 1
            yield _draw(sample, url, k)

    def _read(self, url: str, offset: int, size: int) -> bytes:
        """One range read.  Local shards: through up to `max_open` open files (an open and a close per
        draw would cost as much as the rest of the draw); object stores: one ranged GET, as exact as asked
        (a file object there would read ahead megabytes)."""
        if not self.catalog.loc.is_local:
            return self.catalog.loc.read_range(url, offset, size)
        f = self._files.pop(url, None)
        if f is None:
            if len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files))).close()
            f = open(self.catalog.loc.path(url), "rb")
        self._files[url] = f  # most recently used last
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise EOFError(f"{url} ends before byte {offset + size}")
        return data

    def state_dict(self) -> dict:
        return {"mode": "class-aware", "stream": self.stream, "streams": self.streams, "batch": self.batch,
                "start": self.start, "taken": self.taken, "yielded": self.yielded, "skipped": self.skipped}

    def _restore(self, state: dict) -> None:
        if state.get("mode") != "class-aware" or "taken" not in state:
            raise ValueError("state is not from a class-aware stream of this version")
        if (state["stream"], state["streams"], state["batch"]) != (self.stream, self.streams, self.batch):
            raise ValueError(f"state of stream {state['stream']} of {state['streams']} (batch {state['batch']}); "
                             f"this is stream {self.stream} of {self.streams} (batch {self.batch})")
        self.start, self.taken = state["start"], state["taken"]
        self.yielded, self.skipped = state["yielded"], state["skipped"]

