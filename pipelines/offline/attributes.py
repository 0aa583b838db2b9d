"""Scene attribute labels (multi-label, the SUN attribute database's layout) joined into the shards.

Two file forms, one row per image:

- CSV with a header naming the attributes: ``path,sailing,snow,...`` then ``a/x.jpg,0,0.66,...``;
- JSON lines: ``{"path": "a/x.jpg", "attributes": {"sailing": 0, "snow": 0.66, ...}}``, every row with
  the first row's attribute names.

A value is a 0/1 label or a vote fraction (SUN's three workers: 0, 0.33, 0.66, 1); it is positive when
it reaches the threshold (0.5: two votes of three).  The multi-hot vector goes into each sample as its
`attr` member, one ASCII '0'/'1' per attribute (the names, in order, are `attribute_names` in
index.json).  Rows are read in byte ranges by Ray tasks, like lists, and meet the list's entries in the
sharder's key buckets, so no process holds the whole table.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass

import numpy as np

from common.storage import Location
from pipelines.offline import list_file
from pipelines.offline.corpus import CorpusError, is_comment

MISSING = -1  # a sample kept without attributes: ignored by the loss and the metrics


@dataclass(frozen=True)
class AttributeFile:
    loc: Location
    form: str  # "csv" | "jsonl"
    names: tuple[str, ...]
    threshold: float
    rows: int  # data rows (not blank lines, not the CSV header)


def read_attribute_file(uri: str, threshold: float) -> AttributeFile:
    """The file's form, attribute names and row count, streamed once; a CorpusError naming the file (and
    line) when it is not a table of attributes at all.  A malformed data row is not an error here: it
    quarantines its image, with the reason, when the rows meet the list."""
    loc = Location.parse(uri)
    if not loc.is_file():
        raise CorpusError(f"--attributes: no file at {uri}")
    list_file.check_not_compressed(loc, "--attributes file")
    form, names, rows = None, (), 0
    for lineno, line in list_file.text_lines(loc):
        if form is None:
            form, names = _header(line, uri, lineno)
            if form == "csv":
                continue
        rows += 1
    if form is None:
        raise CorpusError(f"--attributes file is empty: {uri}")
    return AttributeFile(loc, form, names, threshold, rows)


def _header(line: str, uri: str, lineno: int) -> tuple[str, tuple[str, ...]]:
    if line.lstrip().startswith("{"):
        path, values, problem = _jsonl_row(line)
        if problem or not values:
            raise CorpusError(f"{uri}:{lineno}: the first JSON row must be {{\"path\": ..., \"attributes\": "
                              f"{{name: value, ...}}}}: {problem or 'no attributes'}")
        names = tuple(values)
    else:
        fields = next(csv.reader([line]))
        names = tuple(f.strip() for f in fields[1:])
        if not names or not all(names):
            raise CorpusError(f"{uri}:{lineno}: the CSV header must be path,attribute1,attribute2,... "
                              f"(got {line[:80]!r})")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise CorpusError(f"{uri}:{lineno}: attribute {duplicate!r} is named twice")
    return ("jsonl" if line.lstrip().startswith("{") else "csv"), names


def _jsonl_row(line: str) -> tuple[str, dict, str]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        return "", {}, f"not JSON ({exc})"
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("attributes"), dict):
        return "", {}, 'not {"path": ..., "attributes": {...}}'
    return row["path"], row["attributes"], ""


def parse_row(line: str, table: AttributeFile) -> tuple[str, str, str] | None:
    """(listed path, '0'/'1' per attribute or '', problem) of one data line; None for a blank or `#` line."""
    if not line.strip() or is_comment(line):
        return None
    if table.form == "csv":
        fields = next(csv.reader([line]))
        path, raw = fields[0].strip(), [f.strip() for f in fields[1:]]
        if len(raw) != len(table.names):
            return path, "", f"{len(raw)} values for {len(table.names)} attributes"
        named = dict(zip(table.names, raw))
    else:
        path, named, problem = _jsonl_row(line)
        if problem:
            return path, "", problem
        if set(named) != set(table.names):
            odd = sorted(set(named) ^ set(table.names))
            return path, "", f"attribute names differ from the first row's: {', '.join(map(str, odd[:3]))}"
    bits = []
    for name in table.names:
        value = _number(named[name])
        if value is None:
            return path, "", f"{name} = {named[name]!r} is not a number in [0, 1]"
        bits.append("1" if value >= table.threshold else "0")
    return path, "".join(bits), ""


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not isinstance(value, bool) and math.isfinite(number) and 0 <= number <= 1 else None


def join(entries: list[dict], rows: list[dict], file_name: str, keep_without: bool) -> tuple[list[dict], list[tuple]]:
    """Each entry with its `attr` bits; (entry, reason) for the entries that cannot have them: no row, a
    malformed row, or rows that disagree.  With `keep_without`, an entry without a row keeps '' instead."""
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        if r["path"]:
            by_path.setdefault(r["path"], []).append(r)
    kept, rejected = [], []
    for e in entries:
        found = by_path.get(e["path"], [])
        problems = sorted({r["problem"] for r in found if r["problem"]})
        values = sorted({r["attr"] for r in found if not r["problem"]})
        if problems:
            rejected.append((e, f"malformed_attributes: the {file_name} row for {e['path']}: {problems[0]}"))
        elif len(values) > 1:
            rejected.append((e, f"conflicting_attributes: {file_name} has {len(found)} different rows for {e['path']}"))
        elif values:
            kept.append({**e, "attr": values[0]})
        elif keep_without:
            kept.append({**e, "attr": ""})
        else:
            rejected.append((e, f"missing_attributes: no row for {e['path']} in {file_name}"))
    return kept, rejected


def decode(member: bytes | None, count: int) -> np.ndarray:
    """A sample's `attr` member as int8 0/1, or MISSING for every attribute when it has none."""
    if not member:
        return np.full(count, MISSING, dtype=np.int8)
    bits = np.frombuffer(member, dtype=np.uint8) - ord("0")
    if len(bits) != count or bits.max(initial=0) > 1:
        raise ValueError(f"attr member of {len(member)} bytes is not {count} '0'/'1' characters")
    return bits.astype(np.int8)
