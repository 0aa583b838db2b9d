"""The class index as a Parquet table: one row per written sample, where it lies, grouped by class.

    class_id  class_name  url  key  offset  size  members: [{name, offset, size}, ...]

`[offset, offset + size)` of `url` is a self-contained tar fragment holding the whole sample (one range
read fetches it); `members` gives each file's data range inside the shard.  Rows are sorted by class,
then shard url, then position, and each class is one row group (its number is in `classes.json`), so
one class is one cheap read; unlabeled samples (class_id -1) come last.  The same lists as one JSON
document (`classes.json` before) could not be loaded whole at Places2 scale; this table is readable by
pyarrow, pandas and `ray.data.read_parquet`, and written one class at a time, so the driver never
holds it whole.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import Location

TABLE_FILE = "classes.parquet"
MEMBER = pa.struct([("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])
SCHEMA = pa.schema([("class_id", pa.int32()), ("class_name", pa.string()), ("url", pa.string()),
                    ("key", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                    ("members", pa.list_(MEMBER))])


def rows(class_id: int, class_name: str | None, shards: list[tuple[str, list[dict]]]) -> pa.Table:
    """One class's rows from its shards' (url, sample locations as the sidecars hold them), url order."""
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for url, samples in sorted(shards, key=lambda item: item[0]):
        for s in samples:
            columns["url"].append(url)
            columns["key"].append(s["key"])
            columns["offset"].append(s["offset"])
            columns["size"].append(s["size"])
            columns["members"].append([{"name": ext, "offset": span[0], "size": span[1]}
                                       for ext, span in sorted(s["members"].items())])
    n = len(columns["key"])
    columns["class_id"], columns["class_name"] = [class_id] * n, [class_name] * n
    return pa.table(columns, schema=SCHEMA)


def write(out: Location, classes: Iterator[pa.Table]) -> list[int | None]:
    """Write the classes' tables in order, one row group each; returns each one's row group (None when
    it has no rows).  Appears under its name only once complete."""
    groups, next_group = [], 0
    with out.open_atomic(TABLE_FILE) as f, pq.ParquetWriter(f, SCHEMA, compression="zstd") as writer:
        for table in classes:
            if table.num_rows:
                writer.write_table(table, row_group_size=table.num_rows)
                groups.append(next_group)
                next_group += 1
            else:
                groups.append(None)
    return groups


def read_class(loc: Location, row_group: int, columns: list[str] | None = None) -> pa.Table:
    """One class's rows (`row_group` from `classes.json`), reading nothing of the other classes."""
    with loc.fs.open(loc.path(TABLE_FILE), "rb") as f:
        return pq.ParquetFile(f).read_row_group(row_group, columns=columns)
