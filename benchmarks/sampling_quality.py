"""Sampling quality at the mission's size, as JSON: class-aware (our job-wide WM sequence against the
in-memory reference, the WM procedure with `random.shuffle` over full per-class lists) and uniform
(how mixed a batch's classes are: our epoch order against a random permutation of every sample, and
WebDataset's usual recipe, shard shuffle + a 1,000-sample buffer, one shard at a time per worker).

    python benchmarks/sampling_quality.py [--world 8 --loader-workers 8 --batch-size 32] [--classes 365]

The corpus is Places-like: 365 classes of 4,000 to 40,000 images (geometric spacing, ~5.7M images),
written one class at a time in shards of 1,000.  Ours is computed exactly as the W x K streams
compute it (`wm_sequence.job_draw` over `WMSequence`; `epoch_order.EpochOrder` through a
`ShuffleBuffer`; tests/test_streams.py checks that real streams over real shards draw these); no
image is read.

- coverage: distinct samples in a class's first n draws of the job, over n (the class's size);
- pass_correlation: Spearman's rho between a sample's positions in a class's first and second pass;
- class_chi2_p: the chi-square p-value of the class counts in the job's first 200 cycles;
- batch_classes: mean distinct classes per global batch of 256 consecutive draws (the first 100);
- us_per_draw: what one of the streams spends computing a draw (ours), without reading it.

Uniform, per (samples per range read, shuffle buffer): mean distinct classes per batch of 256
consecutive draws of one loader worker (what one DDP rank's batch is), over 40 batches from each of
4 of the W x K streams, and its ratio to a random permutation's.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
from scipy.stats import chisquare, spearmanr

from common.hashing import stable_hash
from common.tool_settings import add_old_spelling
from pipelines.online.epoch_order import EpochOrder, ShuffleBuffer
from pipelines.online.streams import consumer_range
from pipelines.online.wm_sequence import WMSequence, job_draw

UNIFORM_BATCH, UNIFORM_BATCHES = 256, 40


def places_like(classes: int) -> dict[int, int]:
    return {k: int(n) for k, n in enumerate(np.geomspace(4000, 40000, classes).round())}


def measured_classes(counts: dict[int, int]) -> list[int]:
    ordered = sorted(counts, key=counts.get)
    return [ordered[int(q * (len(ordered) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]


def quality(class_passes, class_cycles, counts: dict[int, int]) -> dict:
    """class_passes(k) -> (first pass, second pass) of class k; class_cycles(c) -> cycle c's class order."""
    coverage, rho = [], []
    for k in measured_classes(counts):
        first, second = class_passes(k)
        coverage.append(len(set(first)) / counts[k])
        rho.append(abs(spearmanr(np.argsort(first), np.argsort(second)).statistic))
    draws = [k for c in range(200) for k in class_cycles(c)]
    tally = np.bincount(draws, minlength=len(counts))
    batches = [len(set(draws[i:i + 256])) for i in range(0, 256 * 100, 256)]
    return {"coverage_min": round(min(coverage), 4), "pass_correlation_max_abs": round(max(rho), 4),
            "class_chi2_p": round(float(chisquare(tally).pvalue), 4), "batch_classes": round(float(np.mean(batches)), 1)}


def ours(counts: dict[int, int], seed: int, streams: int, batch: int) -> dict:
    sequence = WMSequence(counts, seed)
    result = quality(lambda k: ([sequence.class_draw(k, j) for j in range(counts[k])],
                                [sequence.class_draw(k, j) for j in range(counts[k], 2 * counts[k])]),
                     sequence.class_order, counts)
    one_stream = WMSequence(counts, seed)  # what one of the job's streams computes, draw after draw
    started = time.perf_counter()
    n = 20_000
    for t in range(n):
        one_stream.draw(job_draw(t, streams // 2, streams, batch))
    result["us_per_draw"] = round((time.perf_counter() - started) / n * 1e6, 1)
    return result


def reference(counts: dict[int, int], seed: int) -> dict:
    rng = random.Random(seed)

    def passes(k):
        first, second = list(range(counts[k])), list(range(counts[k]))
        rng.shuffle(first)
        rng.shuffle(second)
        return first, second

    def cycle(_):
        order = list(counts)
        rng.shuffle(order)
        return order

    return quality(passes, cycle, counts)


def streams_partition(world: int, workers: int, batch: int, steps: int = 50) -> bool:
    """Whether the W x K streams' draws over `steps` loader rounds are exactly the job's first draws."""
    streams = world * workers
    drawn = sorted(job_draw(t, s, streams, batch) for s in range(streams) for t in range(steps * batch))
    return drawn == list(range(streams * steps * batch))


def batch_classes(labels) -> float:
    labels = list(labels)
    return float(np.mean([len(set(labels[i:i + UNIFORM_BATCH]))
                          for i in range(0, len(labels) - UNIFORM_BATCH + 1, UNIFORM_BATCH)]))


def uniform_stream(row_class: np.ndarray, streams: int, stream: int, block: int, buffer: int, seed: int):
    """The classes one uniform stream yields, computed as `streams.UniformStream` does (one rank of
    `streams` ranks, one loader worker), for UNIFORM_BATCHES batches."""
    order = EpochOrder(len(row_class), block, seed, epoch=0)
    lo, hi = consumer_range(len(row_class), stream, streams, 0, 1)
    pool = ShuffleBuffer(buffer, random.Random(stable_hash(seed, "uniform", 0, stream, 0)))
    q, out = lo, []
    while len(out) < UNIFORM_BATCH * UNIFORM_BATCHES:
        while pool.wants and q < hi:
            stop = min(order.block_end(q), hi)
            pool.add([row_class[order.row(p)] for p in range(q, stop)])
            q = stop
        out.append(pool.pop())
    return out


def webdataset_stream(shard_class: list[int], shard_samples: int, streams: int, stream: int, seed: int):
    """`WebDataset(urls, shardshuffle=True).shuffle(1000)`: shards shuffled, split between the streams,
    each read in turn through a 1,000-sample buffer."""
    order = list(range(len(shard_class)))
    random.Random(seed).shuffle(order)
    mine = order[stream::streams]
    rng, pool, out = random.Random(seed + stream), [], []
    source = (shard_class[j] for j in mine for _ in range(shard_samples))
    while len(out) < UNIFORM_BATCH * UNIFORM_BATCHES:
        for label in source:
            pool.append(label)
            if len(pool) >= 1000:
                break
        j = rng.randrange(len(pool))
        pool[j], pool[-1] = pool[-1], pool[j]
        out.append(pool.pop())
    return out


def uniform_mixing(counts: dict[int, int], streams: int, seed: int, shard_samples: int = 1000) -> dict:
    row_class = np.repeat(np.array(list(counts)), list(counts.values()))  # class-major, as the class index
    reference = batch_classes(np.random.default_rng(seed).permutation(row_class)[:UNIFORM_BATCH * 400])
    probe = [0, streams // 3, 2 * streams // 3, streams - 1]
    shard_class = [k for k, n in counts.items() for _ in range(-(-n // shard_samples))]
    peer = np.mean([batch_classes(webdataset_stream(shard_class, shard_samples, streams, s, seed)) for s in probe])
    result = {"random_permutation": round(reference, 1),
              "webdataset_shardshuffle_buffer_1000": {"classes": round(float(peer), 1),
                                                      "of_random": round(float(peer) / reference, 3)}}
    for block, buffer in [(1, 1000), (2, 1000), (4, 1000), (4, 4000), (8, 4000), (16, 8000)]:
        started = time.perf_counter()
        drawn = [uniform_stream(row_class, streams, s, block, buffer, seed) for s in probe]
        us = (time.perf_counter() - started) / sum(map(len, drawn)) * 1e6
        mixed = float(np.mean([batch_classes(d) for d in drawn]))
        result[f"ours_block_{block}_buffer_{buffer}"] = {"classes": round(mixed, 1), "of_random": round(mixed / reference, 3),
                                                         "us_per_draw": round(us, 1)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=8)
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=365)
    p.add_argument("--seed", type=int, default=0)
    add_old_spelling(p, "--batch", "--batch-size")
    add_old_spelling(p, "--workers", "--loader-workers")
    a = p.parse_args()
    counts = places_like(a.classes)
    print(json.dumps({"classes": a.classes, "images": sum(counts.values()), "streams": a.world * a.loader_workers,
                      "world": a.world, "workers": a.loader_workers, "batch": a.batch_size,
                      "streams_draw_the_job_sequence_exactly":
                          streams_partition(a.world, a.loader_workers, a.batch_size),
                      "ours": ours(counts, a.seed, a.world * a.loader_workers, a.batch_size),
                      "reference_in_memory": reference(counts, a.seed),
                      "uniform_batch_classes": uniform_mixing(counts, a.world * a.loader_workers, a.seed)}, indent=1))


if __name__ == "__main__":
    main()
