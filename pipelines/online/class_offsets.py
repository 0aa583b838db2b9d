"""Every sample's byte range, class by class: what lets a sampler fetch any sample with one range read
(sample i of class k for class-aware draws; row r of a shuffled epoch for uniform ones) instead of
reading shards in order.

Rows follow `classes.parquet`: classes in label order, then the unlabeled shards; each class's shards
by url, samples in tar order.  The (offset, size) pairs live in one node-local file, memory-mapped,
built once per node and dataset from `classes.parquet` (or, for shard sets written before it existed,
or whose index no longer matches it, by reading the shards' tar headers): every loader worker of the
node shares the same pages, 16 bytes per sample (128 MB for 8M images, once per node), so a worker's
own memory does not grow with the corpus.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import tempfile
from typing import NamedTuple

import numpy as np

from pipelines.offline import class_table
from pipelines.online.catalog import READ_ERRORS, Catalog
from pipelines.online.tar_stream import ShardReader

log = logging.getLogger(__name__)
CACHE_ENV = "PLACES_CACHE"  # where the node-local files go (default: the system temp folder)
FORMAT = 2  # of the cached files: part of their name, so a changed layout is never read as the old one


class Row(NamedTuple):
    url: str
    cls: int
    offset: int
    size: int  # 0: the sample could not be indexed (its shard is damaged there)
    last: bool  # the last sample index.json lists for its shard


class ClassOffsets:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        classes = sorted(k for k in catalog.by_class if k >= 0) + ([-1] if -1 in catalog.by_class else [])
        self.shards = {k: sorted(catalog.by_class[k], key=lambda s: s.url) for k in classes}
        self.counts = {k: sum(s.nsamples for s in self.shards[k]) for k in classes if k >= 0}  # labeled only
        self.first_row: dict[int, int] = {}
        self.row_shards, self.shard_rows = [], []  # every shard in row order, and its first row
        row = 0
        for k in classes:
            self.first_row[k] = row
            for shard in self.shards[k]:
                self.row_shards.append(shard)
                self.shard_rows.append(row)
                row += shard.nsamples
        self.rows = row  # every listed sample, labeled or not
        self.table, self.unlisted = _load_or_build(catalog, self)

    def row(self, r: int) -> Row:
        j = bisect.bisect_right(self.shard_rows, r) - 1  # (a shard of 0 samples shares its start with the next)
        shard = self.row_shards[j]
        offset, size = self.table[r]
        return Row(shard.url, shard.cls, int(offset), int(size), r - self.shard_rows[j] == shard.nsamples - 1)

    def locate(self, k: int, i: int) -> Row:
        """Sample i of class k."""
        return self.row(self.first_row[k] + i)


def _cache_path(catalog: Catalog) -> str:
    digest = hashlib.sha256(catalog.loc.uri().encode() + catalog.loc.read_bytes("index.json")).hexdigest()[:24]
    folder = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "places-ray-cache")
    return os.path.join(folder, f"offsets-v{FORMAT}-{digest}.npy")


def _load_or_build(catalog: Catalog, offsets: ClassOffsets) -> tuple[np.ndarray, dict[str, int]]:
    """(the offsets table, memory-mapped; url -> samples a shard holds past its listed count)."""
    path = _cache_path(catalog)
    unlisted_path = path.replace(".npy", ".unlisted.json")
    if not os.path.exists(path):
        table = _from_class_table(catalog, offsets) if catalog.loc.exists(class_table.TABLE_FILE) else None
        unlisted: dict[str, int] = {}
        if table is None:
            table = _from_shards(catalog, offsets, unlisted)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # workers building them at once write the same bytes; the last rename wins, and the table's
        # name, renamed last, says that both are complete
        for target, write in ((unlisted_path, lambda f: f.write(json.dumps(unlisted).encode())),
                              (path, lambda f: np.save(f, table))):
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, target)
    with open(unlisted_path) as f:
        return np.load(path, mmap_mode="r"), json.load(f)


def _from_class_table(catalog: Catalog, offsets: ClassOffsets) -> np.ndarray | None:
    import pyarrow.parquet as pq

    with catalog.loc.fs.open(catalog.loc.path(class_table.TABLE_FILE), "rb") as f:
        table = pq.read_table(f, columns=["class_id", "offset", "size"])
    if table.num_rows != offsets.rows:  # an index rewritten since: the shards are the truth
        log.warning("%s has %d rows but index.json lists %d samples; indexing the shards instead",
                    catalog.loc.uri(class_table.TABLE_FILE), table.num_rows, offsets.rows)
        return None
    return np.stack([table["offset"].to_numpy(), table["size"].to_numpy()], axis=1).astype(np.int64)


def _from_shards(catalog: Catalog, offsets: ClassOffsets, unlisted: dict[str, int]) -> np.ndarray:
    """Read every shard's tar headers, counting into `unlisted` the samples past a shard's listed count."""
    table = np.zeros((offsets.rows, 2), dtype=np.int64)
    for shard, row in zip(offsets.row_shards, offsets.shard_rows):
        reader = None
        try:
            reader = ShardReader(catalog.loc, shard.url)
            for i in range(shard.nsamples):
                sample = reader.next()
                if sample is None:
                    break
                table[row + i] = (sample.offset, sample.size)
            extra = 0
            try:
                while reader.more and reader.next() is not None:
                    extra += 1
            except READ_ERRORS:  # damage past the listed samples: what came before is counted
                pass
            if extra:
                unlisted[shard.url] = extra
        except READ_ERRORS as exc:  # its rows keep size 0: drawing them counts a skipped sample
            log.warning("cannot index shard %s: %s: %s", catalog.loc.uri(shard.url), type(exc).__name__, exc)
        finally:
            if reader is not None:
                reader.close()
    return table
