"""Print what training streams would draw, without decoding images: a tool to inspect the samplers.

    python pipelines/sample.py --shards OUT --mode uniform|class-aware --num N [--seed S] \
        [--rank R --world-size W] [--loader-workers K] [--batch-size B] [--all-streams] [--epoch E] \
        [--block N --buffer M] --out draws.jsonl
    places-sample ...                     (the same, installed with the package)

Writes one line per draw, ``{"key", "cls", "rank", "worker"}``, in the order training consumes them:
rank R's K loader workers deliver batches of B in turn (DataLoader's round-robin); with
`--all-streams`, every rank's batch of each step, ranks in order (the whole job's draws).  Uniform:
epoch E's draws (its global shuffle, read `--block` samples at a time through a `--buffer` shuffle
buffer, as `data.read_block` / `data.shuffle_buffer` in training), continuing into E+1... if N is
larger.  Class-aware: endless; epoch E starts after
E x (samples per rank per epoch) draws of each rank.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Iterator

from common.console import report_failure
from common.storage import Location, check_out_outside
from common.tool_settings import add_old_spelling, new_parser, parse
from pipelines.online.catalog import Catalog
from pipelines.online.streams import ClassAwareStream, Draw, UniformStream


def rank_batches(catalog: Catalog, mode: str, seed: int, rank: int, world_size: int, workers: int, batch: int,
                 epoch: int, block: int = 1, buffer: int = 1000) -> Iterator[list[tuple[int, Draw]]]:
    """Rank `rank`'s batches as its loader delivers them: (worker, draw) lists, workers in turn."""
    if mode == "class-aware":
        streams = [iter(ClassAwareStream(catalog, seed, rank, world_size, w, workers, batch)) for w in range(workers)]
        shortest = min(UniformStream.rank_length(catalog, r, world_size) for r in range(world_size))
        steps = max(1, shortest // batch)  # a class-aware epoch, as ShardLoader.steps_per_epoch counts it
        yield from itertools.islice(_round_robin(streams, batch), epoch * steps, None)
        return
    for e in itertools.count(epoch):
        drawn = 0
        streams = [iter(UniformStream(catalog, seed, e, rank, world_size, w, workers, buffer, block))
                   for w in range(workers)]
        for items in _round_robin(streams, batch):
            drawn += len(items)
            yield items
        if not drawn:  # every shard of this rank unreadable: the next epoch would be as empty
            raise ValueError(f"epoch {e} of rank {rank} drew nothing: its shards in {catalog.loc.uri()} "
                             f"are unreadable")


def _round_robin(streams: list[Iterator[Draw]], batch: int) -> Iterator[list[tuple[int, Draw]]]:
    live = list(range(len(streams)))
    while live:
        for w in list(live):
            items = [(w, d) for d in itertools.islice(streams[w], batch)]
            if items:
                yield items
            if len(items) < batch:
                live.remove(w)


def job_draws(catalog: Catalog, mode: str, seed: int, ranks: list[int], world_size: int, workers: int, batch: int,
              epoch: int, block: int = 1, buffer: int = 1000) -> Iterator[dict]:
    """The draws of `ranks`, step by step: each rank's batch of a step, ranks in order."""
    per_rank = {r: rank_batches(catalog, mode, seed, r, world_size, workers, batch, epoch, block, buffer)
                for r in ranks}
    while per_rank:
        for r in list(per_rank):
            items = next(per_rank[r], None)
            if items is None:
                del per_rank[r]
                continue
            for worker, d in items:
                yield {"key": d.key, "cls": d.cls, "rank": r, "worker": worker}


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("--shards", required=True, help="folder or URI written by pipelines/shard.py")
    p.add_argument("--mode", choices=["uniform", "class-aware"], required=True, help="the stream to draw from: "
                   "an epoch's global shuffle, or WM's class-aware sampling (data.sampling)")
    p.add_argument("--num", type=int, required=True, help="draws to write (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (run.seed)")
    p.add_argument("--rank", type=int, default=0, help="the DDP rank whose draws are written")
    p.add_argument("--world-size", type=int, default=1, help="DDP ranks (run.workers)")
    p.add_argument("--loader-workers", type=int, default=1, help="loader workers per rank, K (data.loader_workers)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per batch, B (data.batch_size)")
    p.add_argument("--all-streams", action="store_true", help="every rank's draws, step by step")
    p.add_argument("--epoch", type=int, default=0, help="the epoch the draws start at")
    p.add_argument("--block", type=int, default=1, help="uniform: samples per range read")
    p.add_argument("--buffer", type=int, default=1000, help="uniform: shuffle buffer, in samples")
    p.add_argument("--out", required=True, help="draws.jsonl (local path or URI)")
    add_old_spelling(p, "--workers", "--loader-workers")
    add_old_spelling(p, "--batch", "--batch-size")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = parse(p, argv)
    if not 0 <= a.rank < a.world_size:
        p.error(f"--rank must be in [0, --world-size), got {a.rank} of {a.world_size}")
    if min(a.num, a.loader_workers, a.batch_size, a.block, a.buffer) < 1 or a.epoch < 0 or a.seed < 0:
        p.error("--num, --loader-workers, --batch-size, --block and --buffer must be >= 1, --epoch and --seed >= 0")
    try:
        if Location.parse(a.out).is_dir():
            raise ValueError(f"--out {a.out} is a folder; give the draws file's path")
        check_out_outside(a.out, a.shards, "--shards", "the shard folder belongs to pipelines/shard.py; write the "
                                                        "draws elsewhere")
        catalog = Catalog.load(a.shards)
        catalog.check_shards()
        ranks = list(range(a.world_size)) if a.all_streams else [a.rank]
        lines = [json.dumps(d) for d in itertools.islice(
            job_draws(catalog, a.mode, a.seed, ranks, a.world_size, a.loader_workers, a.batch_size, a.epoch, a.block,
                      a.buffer),
            a.num)]
    except (OSError, ValueError) as exc:
        print(f"sample.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("sample.py", exc, a.verbose)
    Location.write_atomic_uri(a.out, ("\n".join(lines) + "\n").encode())
    who = "every rank" if a.all_streams else f"rank {a.rank}"
    print(f"{len(lines)} draws ({a.mode}, {who} of {a.world_size} x {a.loader_workers} loader workers, batch "
          f"{a.batch_size}, seed {a.seed}, epoch {a.epoch}) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
