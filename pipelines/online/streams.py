"""Sample streams over per-class WebDataset shards: shuffled uniform epochs, WM class-aware sampling,
and a split's samples in stored order for evaluation.

The training streams are deterministic functions of the seed and the consumer's place in the job
(rank and loader worker[, epoch]) and resumable: `state_dict()` is small JSON (uniform: a position,
the RNG state and the byte ranges of the buffered samples; class-aware: a few numbers) and a stream
built with it yields exactly what the uninterrupted one would have.  Both fetch samples by their byte
ranges (`class_offsets`): at most `max_open` open files locally, one request per read on object stores.

- `UniformStream`: this consumer's contiguous share of the epoch's global shuffle (`epoch_order`): every
  sample once per epoch across all ranks and workers, batches as mixed as a random permutation's.
- `ClassAwareStream` (Shen et al., Places2 2015): this consumer's share of one WM sequence for the
  whole job (`wm_sequence`): a shuffled list of classes, cycled and reshuffled when exhausted; per
  class, a shuffled order of all its samples, every sample drawn once before any repeats, then a new
  shuffle.
- `SequentialStream`: this consumer's exact share of a split in index order, read sequentially (no
  shuffle, no class index): what evaluation needs.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from common.hashing import stable_hash
from pipelines.online.catalog import READ_ERRORS, Catalog, Cursor, RangeReader, ReaderPool
from pipelines.online.class_offsets import ClassOffsets, Row
from pipelines.online.epoch_order import EpochOrder, ShuffleBuffer
from pipelines.online.tar_stream import RawSample, fetch_sample, parse_sample
from pipelines.online.wm_sequence import WMSequence, job_draw, stream_index

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


def consumer_range(total: int, rank: int, world_size: int, worker: int, num_workers: int) -> tuple[int, int]:
    """[start, stop) of an epoch's positions that (rank, worker) takes: per rank, then per worker."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    r0, r1 = split_range(total, world_size, rank)
    w0, w1 = split_range(r1 - r0, num_workers, worker)
    return r0 + w0, r0 + w1


class _Skips:
    """Counts what could not be read, and says so once per shard, not once per sample."""

    def __init__(self):
        self.count, self._reported = 0, set()

    def add(self, url: str, n: int, message: str) -> None:
        self.count += n
        if url not in self._reported:
            self._reported.add(url)
            log.warning(message)


class UniformStream:
    """This (rank, loader worker)'s share of one epoch's global shuffle (`epoch_order`).  Reads a block
    of `block` samples at a time (one range read, or two where the block spans two shards) and mixes
    them through a `buffer_size`-sample shuffle buffer.  An unreadable sample is skipped and counted."""

    def __init__(self, catalog: Catalog, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, buffer_size: int = 1000, block: int = 1, max_open: int = 64,
                 state: dict | None = None):
        self.catalog, self.seed, self.epoch = catalog, seed, epoch
        self.lo, self.hi = consumer_range(catalog.total, rank, world_size, worker, num_workers)
        self.offsets = ClassOffsets(catalog)
        self.order = EpochOrder(self.offsets.rows, block, seed, epoch)
        self.reader = RangeReader(catalog.loc, max_open)
        self.buffer = ShuffleBuffer(buffer_size, random.Random(stable_hash(seed, "uniform", epoch, rank, worker)))
        self.position = self.lo  # the next position of the epoch to read
        self.yielded = 0
        self.skips = _Skips()
        if state is not None:
            self._restore(state)

    @staticmethod
    def rank_length(catalog: Catalog, rank: int, world_size: int) -> int:
        """Samples rank `rank` sees per epoch: known before reading anything, so DDP ranks plan their steps."""
        start, stop = split_range(catalog.total, world_size, rank)
        return stop - start

    def __len__(self) -> int:
        return self.hi - self.lo

    def __iter__(self):
        while True:
            while self.buffer.wants and self.position < self.hi:
                self.buffer.add(self._read_block())
            if not len(self.buffer):
                self.reader.close()
                return
            self.yielded += 1
            yield self.buffer.pop()

    def _read_block(self) -> list[Draw]:
        """The samples of the block at `position` (as far as this consumer's share goes), in row order."""
        stop = min(self.order.block_end(self.position), self.hi)
        rows = [self.offsets.row(self.order.row(q)) for q in range(self.position, stop)]
        self.position = stop
        draws, run = [], []
        for row in rows + [None]:
            # a run: rows whose bytes follow each other in one shard, fetched with one read
            if run and (row is None or row.url != run[-1].url or row.offset != run[-1].offset + run[-1].size):
                draws += self._read_run(run)
                run = []
            if row is not None:
                run.append(row)
        return draws

    def _read_run(self, run: list[Row]) -> list[Draw]:
        url, start = run[0].url, run[0].offset
        draws = []
        try:
            if not run[-1].size:
                raise EOFError(f"{url}: a sample that could not be indexed")
            data = self.reader.read(url, start, run[-1].offset + run[-1].size - start)
        except READ_ERRORS as exc:
            self.skips.add(url, len(run), f"skipping unreadable samples of shard {self.catalog.loc.uri(url)}: "
                                          f"{type(exc).__name__}: {exc}")
            return draws
        for row in run:
            try:
                if not row.size:
                    raise EOFError(f"{url}: a sample that could not be indexed")
                draws.append(_draw(parse_sample(data[row.offset - start:row.offset - start + row.size], url,
                                                row.offset), url, row.cls))
            except READ_ERRORS as exc:
                self.skips.add(url, 1, f"skipping unreadable samples of shard {self.catalog.loc.uri(url)}: "
                                       f"{type(exc).__name__}: {exc}")
            extra = self.offsets.unlisted.get(url, 0) if row.last else 0
            if extra:  # a stale index: counted once per epoch, by whoever reads the shard's last listed sample
                self.skips.add(url, extra, f"shard {self.catalog.loc.uri(url)} holds {extra} more samples than the "
                                           f"{self.catalog.by_url[url].nsamples} index.json lists; they are "
                                           f"skipped: rebuild the index (pipelines/shard.py)")
        return draws

    @property
    def skipped(self) -> int:
        return self.skips.count

    def state_dict(self) -> dict:
        return {"mode": "uniform", "epoch": self.epoch, "block": self.order.block, "position": self.position,
                "rng": _rng_state(self.buffer.rng), "buffer": [d.ref() for d in self.buffer.items],
                "yielded": self.yielded, "skipped": self.skips.count}

    def _restore(self, state: dict) -> None:
        if state.get("mode") != "uniform" or state["epoch"] != self.epoch or "position" not in state:
            raise ValueError("state is not from a uniform stream of this epoch and version")
        if state["block"] != self.order.block:
            raise ValueError(f"state of a stream reading blocks of {state['block']}; this one reads {self.order.block}")
        if not self.lo <= state["position"] <= self.hi:
            raise ValueError(f"state at position {state['position']}, outside this stream's [{self.lo}, {self.hi})")
        self.position, self.yielded, self.skips.count = state["position"], state["yielded"], state["skipped"]
        _set_rng(self.buffer.rng, state["rng"])
        self.buffer.items = [_refetch(self.catalog, ref) for ref in state["buffer"]]


class SequentialStream:
    """This (rank, worker)'s exact share of a split, in index order, each shard read sequentially: the
    ranks and workers together yield every sample once.  A shard that cannot be read is skipped
    (counted, logged once)."""

    def __init__(self, catalog: Catalog, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1):
        self.catalog = catalog
        lo, hi = consumer_range(catalog.total, rank, world_size, worker, num_workers)
        self.segments, base = [], 0  # (url, first, stop) sample ranges
        for shard in catalog.shards:
            a, b = max(lo, base), min(hi, base + shard.nsamples)
            if a < b:
                self.segments.append((shard.url, a - base, b - base))
            base += shard.nsamples
        self.pool = ReaderPool(catalog.loc, 1, catalog.by_url)

    def __len__(self) -> int:
        return sum(b - a for _, a, b in self.segments)

    def __iter__(self):
        for url, first, stop in self.segments:
            cursor = Cursor(url, first, stop, 0 if first == 0 else None)
            while not cursor.done:
                sample = self.pool.read(cursor)
                if sample is not None:
                    yield _draw(sample, url, self.catalog.by_url[url].cls)
            self.pool.release(cursor)

    @property
    def skipped(self) -> int:
        return self.pool.skipped


class ClassAwareStream:
    """This (rank, loader worker)'s share of the job's one WM sequence (`wm_sequence`): together, the
    W x K streams of a job draw what the WM procedure run once for the cluster draws, none twice.
    Each draw is one range read of its sample (nothing buffered); an unreadable sample is skipped,
    counted, and the next draw taken."""

    def __init__(self, catalog: Catalog, seed: int = 0, rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, batch_size: int = 1, start: int = 0, max_open: int = 64,
                 state: dict | None = None):
        consumer_range(0, rank, world_size, worker, num_workers)  # (checks the place in the job)
        self.catalog = catalog
        self.offsets = ClassOffsets(catalog)
        if not self.offsets.counts:
            raise ValueError(f"{catalog.loc.uri()} has no labeled shards for class-aware sampling")
        self.sequence = WMSequence(self.offsets.counts, seed)
        self.stream, self.streams = stream_index(rank, world_size, worker), world_size * num_workers
        self.batch = max(1, batch_size)
        self.start, self.taken, self.yielded = start, 0, 0
        self.reader = RangeReader(catalog.loc, max_open)
        self.skips = _Skips()
        if state is not None:
            self._restore(state)

    def next_job_draw(self) -> int:
        return job_draw(self.taken, self.stream, self.streams, self.batch, self.start)

    def __iter__(self):
        failing = 0
        while failing <= self.offsets.rows:  # every draw failing for a whole corpus' worth: all unreadable
            k, i = self.sequence.draw(self.next_job_draw())
            self.taken += 1
            row = self.offsets.locate(k, i)
            try:
                if not row.size:
                    raise EOFError(f"{row.url}: sample {i} of class {k} could not be indexed")
                sample = parse_sample(self.reader.read(row.url, row.offset, row.size), row.url, row.offset)
            except READ_ERRORS as exc:
                failing += 1
                self.skips.add(row.url, 1, f"skipping unreadable samples of shard {self.catalog.loc.uri(row.url)}: "
                                           f"{type(exc).__name__}: {exc}")
                continue
            failing = 0
            self.yielded += 1
            yield _draw(sample, row.url, k)
        self.reader.close()

    @property
    def skipped(self) -> int:
        return self.skips.count

    def state_dict(self) -> dict:
        return {"mode": "class-aware", "stream": self.stream, "streams": self.streams, "batch": self.batch,
                "start": self.start, "taken": self.taken, "yielded": self.yielded, "skipped": self.skips.count}

    def _restore(self, state: dict) -> None:
        if state.get("mode") != "class-aware" or "taken" not in state:
            raise ValueError("state is not from a class-aware stream of this version")
        if (state["stream"], state["streams"], state["batch"]) != (self.stream, self.streams, self.batch):
            raise ValueError(f"state of stream {state['stream']} of {state['streams']} (batch {state['batch']}); "
                             f"this is stream {self.stream} of {self.streams} (batch {self.batch})")
        self.start, self.taken = state["start"], state["taken"]
        self.yielded, self.skips.count = state["yielded"], state["skipped"]


def class_aware_epoch_steps(catalog: Catalog, world_size: int, batch_size: int) -> int:
    """Batches per class-aware epoch, the same on every rank (DDP steps in lockstep): as many as the
    shortest rank's uniform share fills."""
    shortest = min(UniformStream.rank_length(catalog, r, world_size) for r in range(world_size))
    return max(1, shortest // batch_size)
