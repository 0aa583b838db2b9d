"""Print what a training stream would draw, without decoding images: a tool to inspect the samplers.

    python pipelines/sample.py --shards OUT --mode uniform|class-aware --num N [--seed S] \
        [--rank R --world-size W] [--epoch E] --out draws.jsonl

Writes one line per draw, ``{"key": ..., "cls": ...}``, in the order the stream of rank R (one data
worker) yields them.  Uniform: epoch E's draws, continuing into E+1... if N is larger.  Class-aware:
an endless stream; epoch E starts after E x (samples per rank per epoch) draws.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.catalog import Catalog
from pipelines.console import report_failure
from pipelines.storage import Location
from pipelines.streams import ClassAwareStream, UniformStream


def draws(catalog: Catalog, mode: str, seed: int, rank: int, world_size: int, epoch: int):
    if mode == "uniform":
        for e in itertools.count(epoch):
            drawn = 0
            for draw in UniformStream(catalog, seed=seed, epoch=e, rank=rank, world_size=world_size):
                drawn += 1
                yield draw
            if not drawn:  # every shard of this rank unreadable: the next epoch would be as empty
                raise ValueError(f"epoch {e} of rank {rank} drew nothing: its shards in {catalog.loc.uri()} "
                                 f"are unreadable")
    else:
        per_epoch = UniformStream.rank_length(catalog, rank, world_size)
        stream = ClassAwareStream(catalog, seed=seed, rank=rank)
        yield from itertools.islice(stream, epoch * per_epoch, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="folder or URI written by pipelines/shard.py")
    p.add_argument("--mode", choices=["uniform", "class-aware"], required=True)
    p.add_argument("--num", type=int, required=True, help="draws to write (>= 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--out", required=True, help="draws.jsonl (local path or URI)")
    a = p.parse_args(argv)
    if not 0 <= a.rank < a.world_size:
        p.error(f"--rank must be in [0, --world-size), got {a.rank} of {a.world_size}")
    if a.num < 1 or a.epoch < 0 or a.seed < 0:
        p.error("--num must be >= 1, --epoch and --seed >= 0")
    try:
        if Location.parse(a.out).is_dir():
            raise ValueError(f"--out {a.out} is a folder; give the draws file's path")
        catalog = Catalog.load(a.shards)
        catalog.check_shards()
        lines = [json.dumps({"key": d.key, "cls": d.cls})
                 for d in itertools.islice(draws(catalog, a.mode, a.seed, a.rank, a.world_size, a.epoch), a.num)]
    except (OSError, ValueError) as exc:
        print(f"sample.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("sample.py", exc)
    Location.write_file(a.out, ("\n".join(lines) + "\n").encode())
    print(f"{len(lines)} draws ({a.mode}, rank {a.rank}/{a.world_size}, seed {a.seed}, epoch {a.epoch}) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
