"""Uniform and class-aware streams over per-class shards: coverage, balance, exact resume, corruption."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter

import pytest
from scipy.stats import chisquare

from conftest import write_shards
from pipelines.online.catalog import Catalog
from pipelines.online.streams import ClassAwareStream, UniformStream

COUNTS = [100, 60, 35, 20, 10]  # imbalanced 10:1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    keys = write_shards(out, COUNTS, shard_samples=16)
    return out, keys


def copied(shards, tmp_path):
    """A copy of the shard folder, to damage without touching the module's shards."""
    shutil.copytree(shards, tmp_path / "copy")
    return tmp_path / "copy"


def take(stream, n=None):
    return [(d.key, d.cls) for d in itertools.islice(stream, n)]


@pytest.mark.parametrize("world,workers,block", [(1, 1, 1), (2, 2, 4), (8, 4, 1), (8, 8, 3)])
def test_uniform_epoch_covers_every_sample_once_across_ranks_and_workers(shards, world, workers, block):
    out, keys = shards
    catalog = Catalog.load(str(out))
    seen = []
    for rank in range(world):
        lengths = []
        for worker in range(workers):
            stream = UniformStream(catalog, seed=3, epoch=1, rank=rank, world_size=world, worker=worker,
                                   num_workers=workers, buffer_size=20, block=block)
            draws = take(stream)
            assert len(draws) == len(stream)  # known before reading
            lengths.append(len(draws))
            seen += draws
        assert sum(lengths) == UniformStream.rank_length(catalog, rank, world)
    assert len(seen) == sum(COUNTS) == len(set(seen))
    assert {k for k, _ in seen} == {k for ks in keys.values() for k in ks}
    assert all(k.startswith(f"c{c}_") for k, c in seen)


def test_uniform_order_is_seeded_and_changes_per_epoch(shards):
    catalog = Catalog.load(str(shards[0]))
    a = take(UniformStream(catalog, seed=0, epoch=0))
    assert a == take(UniformStream(catalog, seed=0, epoch=0))
    assert a != take(UniformStream(catalog, seed=0, epoch=1)) and sorted(a) == sorted(
        take(UniformStream(catalog, seed=0, epoch=1)))
    first_batch = Counter(c for _, c in a[:32])
    assert len(first_batch) >= 3  # a global shuffle mixes the per-class shards within a batch


@pytest.mark.parametrize("rows", [1, 7, 100, 1001])
@pytest.mark.parametrize("block", [1, 3, 8, 100, 2000])
def test_epoch_order_is_a_permutation_read_in_blocks_of_neighbouring_rows(rows, block):
    from pipelines.online.epoch_order import EpochOrder

    order = EpochOrder(rows, block, seed=2, epoch=5)
    drawn = [order.row(q) for q in range(rows)]
    assert sorted(drawn) == list(range(rows))
    q = 0
    while q < rows:  # a block's rows follow each other (modulo the wrap at the end of the rows)
        end = order.block_end(q)
        assert [(r - drawn[q]) % rows for r in drawn[q:end]] == list(range(end - q))
        q = end
    if rows // block >= 4:  # (two epochs of 2 blocks may well coincide)
        assert drawn != [EpochOrder(rows, block, seed=2, epoch=6).row(q) for q in range(rows)]


def model_draws(catalog, keys, seed, epoch, rank, world, worker, workers, buffer_size, block):
    """What a uniform stream must yield, computed from `epoch_order` alone (no shard read)."""
    import random

    from common.hashing import stable_hash
    from pipelines.online.class_offsets import ClassOffsets
    from pipelines.online.epoch_order import EpochOrder, ShuffleBuffer
    from pipelines.online.streams import consumer_range

    offsets = ClassOffsets(catalog)
    by_row = [(key, k) for k in sorted(keys) for key in sorted(keys[k])]  # class-major, tar order
    assert len(by_row) == offsets.rows
    order = EpochOrder(offsets.rows, block, seed, epoch)
    lo, hi = consumer_range(catalog.total, rank, world, worker, workers)
    buffer = ShuffleBuffer(buffer_size, random.Random(stable_hash(seed, "uniform", epoch, rank, worker)))
    q, out = lo, []
    while True:
        while buffer.wants and q < hi:
            stop = min(order.block_end(q), hi)
            buffer.add([by_row[order.row(p)] for p in range(q, stop)])
            q = stop
        if not len(buffer):
            return out
        out.append(buffer.pop())


@pytest.mark.parametrize("block,buffer_size", [(1, 1), (1, 30), (4, 10), (16, 50)])
def test_uniform_stream_yields_the_epoch_order_through_its_buffer(shards, block, buffer_size):
    out, keys = shards
    catalog = Catalog.load(str(out))
    for rank, worker in [(0, 0), (1, 2)]:
        stream = UniformStream(catalog, seed=7, epoch=3, rank=rank, world_size=2, worker=worker, num_workers=3,
                               buffer_size=buffer_size, block=block)
        assert take(stream) == model_draws(catalog, keys, 7, 3, rank, 2, worker, 3, buffer_size, block)


def test_uniform_reads_a_block_with_one_request(shards, monkeypatch):
    from pipelines.online.catalog import RangeReader

    reads = []
    real = RangeReader.read
    monkeypatch.setattr(RangeReader, "read", lambda self, url, offset, size: reads.append(url) or real(
        self, url, offset, size))
    catalog = Catalog.load(str(shards[0]))
    assert len(take(UniformStream(catalog, seed=1, block=8))) == sum(COUNTS)
    shards_of = len(catalog.shards)
    # one read per block, plus one where a block runs into the next shard
    assert sum(COUNTS) // 8 <= len(reads) <= sum(COUNTS) // 8 + 1 + shards_of


@pytest.mark.parametrize("classes,per_class,shard_samples", [(40, 48, 48), (365, 10, 10)])
def test_uniform_batches_are_as_mixed_as_a_random_permutation(tmp_path, classes, per_class, shard_samples):
    """Distinct classes per batch of 64, every worker of 2 x 2: within 10% of a random permutation's."""
    import random

    keys = write_shards(tmp_path, [per_class] * classes, shard_samples=shard_samples, size=8)
    catalog = Catalog.load(str(tmp_path))
    batch = 64
    mixed, labels = [], [k for k in keys for _ in keys[k]]
    for rank, worker in itertools.product(range(2), range(2)):
        drawn = [c for _, c in take(UniformStream(catalog, seed=0, rank=rank, world_size=2, worker=worker,
                                                  num_workers=2, buffer_size=100))]
        mixed += [len(set(drawn[i:i + batch])) for i in range(0, len(drawn) - batch + 1, batch)]
    random.Random(0).shuffle(labels)
    reference = [len(set(labels[i:i + batch])) for i in range(0, len(labels) - batch + 1, batch)]
    assert sum(mixed) / len(mixed) >= 0.9 * sum(reference) / len(reference)


def test_class_aware_is_uniform_over_classes_and_covers_each_class_before_repeating(shards):
    out, keys = shards
    draws = take(ClassAwareStream(Catalog.load(str(out)), seed=1), 20_000)
    counts = Counter(c for _, c in draws)
    assert chisquare([counts[c] for c in range(len(COUNTS))]).pvalue > 0.05
    for cls, n in enumerate(COUNTS):
        seq = [k for k, c in draws if c == cls]
        for start in range(0, len(seq) - n + 1, n):  # every pass: each sample exactly once
            assert sorted(seq[start:start + n]) == sorted(keys[cls])
        assert seq[:n] != seq[n:2 * n]  # and a new shuffled order each pass


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 1), (1, 4, 2), (2, 1, 3), (2, 4, 2), (8, 1, 4), (8, 4, 2)])
def test_the_streams_of_a_job_draw_one_wm_sequence_together(shards, world, workers, batch):
    """Every rank's batches of every step, in step order, are the job's WM sequence itself: no draw
    twice, and every class's first n draws (n = its size) are all its samples."""
    from pipelines.online.class_offsets import ClassOffsets
    from pipelines.online.wm_sequence import WMSequence
    from pipelines.sample import job_draws

    out, keys = shards
    catalog = Catalog.load(str(out))
    n = len(COUNTS) * max(COUNTS) + 7  # every class's first pass, whatever the class order
    drawn = list(itertools.islice(job_draws(catalog, "class-aware", 3, list(range(world)), world, workers, batch, 0), n))
    offsets = ClassOffsets(catalog)
    sequence = WMSequence(offsets.counts, seed=3)
    key_of = {(k, i): key for k, names in keys.items() for i, key in enumerate(sorted(names))}
    assert [(d["key"], d["cls"]) for d in drawn] == [(key_of[sequence.draw(g)], sequence.draw(g)[0]) for g in range(n)]
    for cls, size in enumerate(COUNTS):
        first = [d["key"] for d in drawn if d["cls"] == cls][:size]
        assert sorted(first) == sorted(keys[cls])
    streams = {(d["rank"], d["worker"]) for d in drawn}
    assert len(streams) == min(world * workers, n)


@pytest.mark.parametrize("mode", ["uniform", "class-aware"])
@pytest.mark.parametrize("cut", [0, 1, 57, 150])
def test_restored_stream_continues_exactly(shards, mode, cut):
    catalog = Catalog.load(str(shards[0]))

    def make(state=None):
        if mode == "uniform":
            return UniformStream(catalog, seed=5, epoch=2, rank=1, world_size=2, buffer_size=25, block=3,
                                 state=state)
        return ClassAwareStream(catalog, seed=5, rank=1, world_size=2, worker=1, num_workers=3, batch_size=4,
                                state=state)

    reference = take(make(), 180)
    it_stream = make()
    head = take(it_stream, cut)  # islice stops right after the cut-th draw: state is read between draws
    state = json.loads(json.dumps(it_stream.state_dict()))  # it must survive a JSON checkpoint
    tail = take(make(state), 180 - cut)
    assert head + tail == reference[: len(head) + len(tail)]


def test_unreadable_shard_is_skipped_counted_and_logged_once(shards, tmp_path, caplog):
    out, keys = shards
    copy = copied(out, tmp_path)
    victim = copy / "c0000-00002.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[:3000] + b"\xff" * 600 + data[3600:])  # garbage in the middle of the shard
    catalog = Catalog.load(str(copy))
    stream = UniformStream(catalog, seed=0)
    with caplog.at_level("WARNING"):
        draws = take(stream)
    assert 0 < stream.skipped < 16 and len(draws) == sum(COUNTS) - stream.skipped
    # once where the offsets file is built (once per node), once by the stream that met it
    assert sorted(r.name for r in caplog.records if "c0000-00002.tar" in r.message) == [
        "pipelines.online.class_offsets", "pipelines.online.streams"]


def test_samples_past_a_stale_index_count_are_skipped_and_named(shards, tmp_path, caplog):
    """An index.json whose nsamples is too small: the extra samples were silently never read."""
    out, keys = shards
    copy = copied(out, tmp_path)
    index = json.loads((copy / "index.json").read_text())
    stale = next(s for s in index["shardlist"] if s["url"] == "c0001-00000.tar")
    stale["nsamples"] -= 3
    (copy / "index.json").write_text(json.dumps(index))
    catalog = Catalog.load(str(copy))
    stream = UniformStream(catalog, seed=0)
    with caplog.at_level("WARNING"):
        draws = take(stream)
    assert len(draws) == sum(COUNTS) - 3 and stream.skipped == 3
    assert [r.message for r in caplog.records if "c0001-00000.tar" in r.message] == [
        f"shard {copy / 'c0001-00000.tar'} holds 3 more samples than the 13 index.json lists; they are skipped: "
        f"rebuild the index (pipelines/shard.py)"]
    # class-aware draws sample i of a class by its byte range: its population is what index.json lists
    aware = take(ClassAwareStream(catalog, seed=0), 2000)
    assert {k for k, c in aware if c == 1} == set(keys[1]) - set(keys[1][13:16])


@pytest.mark.parametrize("mode", ["uniform", "class-aware"])
def test_sample_cli_writes_the_stream_in_order(shards, tmp_path, mode):
    import subprocess
    import sys

    from conftest import ROOT

    out, _ = shards
    target = tmp_path / "draws.jsonl"
    cmd = [sys.executable, f"{ROOT}/pipelines/sample.py", "--shards", str(out), "--mode", mode, "--num", "300",
           "--seed", "4", "--rank", "1", "--world-size", "2", "--epoch", "1", "--out", str(target)]
    subprocess.run(cmd + (["--block", "3", "--buffer", "20"] if mode == "uniform" else []), check=True,
                   capture_output=True)
    lines = [json.loads(ln) for ln in target.read_text().splitlines()]
    catalog = Catalog.load(str(out))
    if mode == "uniform":
        expected = [d for e in (1, 2, 3) for d in take(UniformStream(catalog, seed=4, epoch=e, rank=1, world_size=2,
                                                                      buffer_size=20, block=3))]
    else:
        skip = min(UniformStream.rank_length(catalog, r, 2) for r in range(2))  # one class-aware epoch of steps
        expected = take(ClassAwareStream(catalog, seed=4, rank=1, world_size=2), skip + 300)[skip:]
    assert [(d["key"], d["cls"]) for d in lines] == expected[:300] and len(lines) == 300


@pytest.mark.parametrize("steps", [0, 1, 5, 6])
def test_after_the_world_or_workers_change_the_sequence_continues_with_nothing_skipped(steps):
    """Elastic restart: 2 ranks x 2 workers (batch 4) consumed `steps` steps, then 3 ranks x 1 worker go
    on from `next_job_draws`' minimum: every earlier draw was taken, and at most a batch per old stream
    beyond it is drawn twice."""
    from pipelines.online.loader import next_job_draws
    from pipelines.online.wm_sequence import job_draw, stream_index

    world, workers, batch = 2, 2, 4
    states, taken = [], set()
    for rank in range(world):
        per_worker = {}
        for worker in range(workers):
            batches = len(range(worker, steps, workers))  # DataLoader's round-robin
            if batches:
                stream = stream_index(rank, world, worker)
                per_worker[str(worker)] = {"mode": "class-aware", "stream": stream, "streams": world * workers,
                                           "batch": batch, "start": 0, "taken": batches * batch, "yielded": 0,
                                           "skipped": 0}
                taken |= {job_draw(t, stream, world * workers, batch) for t in range(batches * batch)}
        states.append({"mode": "class-aware", "workers": workers, "batch": batch, "start": 0, "states": per_worker})
    start = min(next_job_draws(states))
    assert set(range(start)) <= taken and len(taken - set(range(start))) <= world * workers * batch
    after = {job_draw(t, s, 3, batch, start) for s in range(3) for t in range(3 * batch)}
    assert min(after) == start and set(range(start, start + 9 * batch)) <= after
