"""Every labeled sample's byte range, class by class: what lets a sampler fetch sample i of class k with
one range read, for any i, instead of reading a class's shards in order.

Rows follow `classes.parquet`: classes in label order, each class's shards by url, samples in tar
order.  The (offset, size) pairs live in one node-local file, memory-mapped, built once per node and
dataset from `classes.parquet` (or, for shard sets written before it existed, by reading the shards'
tar headers): every loader worker of the node shares the same pages, 16 bytes per sample (128 MB for
8M images, once per node), so a worker's own memory does not grow with the corpus.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import tempfile

import numpy as np

from pipelines import class_table
from pipelines.catalog import READ_ERRORS, Catalog
from pipelines.tar_stream import ShardReader

log = logging.getLogger(__name__)
CACHE_ENV = "PLACES_CACHE"  # where the node-local files go (default: the system temp folder)


class ClassOffsets:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.shards = {k: sorted(catalog.by_class[k], key=lambda s: s.url) for k in sorted(catalog.by_class) if k >= 0}
        self.counts = {k: sum(s.nsamples for s in shards) for k, shards in self.shards.items()}
        self.first_row, row = {}, 0
        self.bounds: dict[int, list[int]] = {}  # per class: where each of its shards starts, within the class
        for k, shards in self.shards.items():
            self.first_row[k] = row
            self.bounds[k] = list(np.cumsum([0] + [s.nsamples for s in shards[:-1]]))
            row += self.counts[k]
        self.rows = row
        self.table = _load_or_build(catalog, self)

    def locate(self, k: int, i: int) -> tuple[str, int, int]:
        """(shard url, byte offset, size) of sample i of class k; size 0 if it could not be indexed."""
        j = bisect.bisect_right(self.bounds[k], i) - 1
        offset, size = self.table[self.first_row[k] + i]
        return self.shards[k][j].url, int(offset), int(size)


def _cache_path(catalog: Catalog) -> str:
    digest = hashlib.sha256(catalog.loc.uri().encode() + catalog.loc.read_bytes("index.json")).hexdigest()[:24]
    folder = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "places-ray-cache")
    return os.path.join(folder, f"offsets-{digest}.npy")


def _load_or_build(catalog: Catalog, offsets: ClassOffsets) -> np.ndarray:
    path = _cache_path(catalog)
    if not os.path.exists(path):
        table = _from_class_table(catalog, offsets) if catalog.loc.exists(class_table.TABLE_FILE) else None
        if table is None:
            table = _from_shards(catalog, offsets)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, table)
        os.replace(tmp, path)  # workers building it at once write the same bytes; the last rename wins
    return np.load(path, mmap_mode="r")


def _from_class_table(catalog: Catalog, offsets: ClassOffsets) -> np.ndarray | None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with catalog.loc.fs.open(catalog.loc.path(class_table.TABLE_FILE), "rb") as f:
        table = pq.read_table(f, columns=["class_id", "offset", "size"])
    table = table.filter(pc.greater_equal(table["class_id"], 0))
    if table.num_rows != offsets.rows:  # an index rewritten since: the shards are the truth
        log.warning("%s has %d labeled rows but index.json lists %d samples; indexing the shards instead",
                    catalog.loc.uri(class_table.TABLE_FILE), table.num_rows, offsets.rows)
        return None
    return np.stack([table["offset"].to_numpy(), table["size"].to_numpy()], axis=1).astype(np.int64)


def _from_shards(catalog: Catalog, offsets: ClassOffsets) -> np.ndarray:
    """Read every shard's tar headers (a shard set written before classes.parquet existed)."""
    table = np.zeros((offsets.rows, 2), dtype=np.int64)
    for k, shards in offsets.shards.items():
        row = offsets.first_row[k]
        for shard in shards:
            reader = None
            try:
                reader = ShardReader(catalog.loc, shard.url)
                for i in range(shard.nsamples):
                    sample = reader.next()
                    if sample is None:
                        break
                    table[row + i] = (sample.offset, sample.size)
            except READ_ERRORS as exc:  # its rows keep size 0: drawing them counts a skipped sample
                log.warning("cannot index shard %s: %s: %s", catalog.loc.uri(shard.url), type(exc).__name__, exc)
            finally:
                if reader is not None:
                    reader.close()
            row += shard.nsamples
    return table
