"""The files written beside the shards, assembled by the driver from the per-shard sidecars.

- ``index.json``: the wids-v1 shard index (plus each shard's class, an allowed extra field);
- ``classes.parquet`` (`class_table`): every sample's shard, key and byte ranges, a row group per
  class, so a reader can stream one class or fetch one sample without touching other classes' bytes;
- ``classes.json``: per class its name, count, shards and row group in that table;
- ``quarantine.jsonl``: one line per rejected entry (``source``, ``label``, ``reason``);
- ``manifest.json``: the accounting (read = written + quarantined), settings, versions, speed.

All but the manifest are byte-identical across reruns.  The driver reads one class's sidecars at a
time, so its memory does not grow with the corpus.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from importlib import metadata
from typing import Iterator

from common.storage import Location
from pipelines.offline import class_table
from pipelines.offline.corpus import UNLABELED, Categories
from pipelines.offline.shard_tasks import STATE_DIR

INDEX_FILE, CLASSES_FILE, MANIFEST_FILE, QUARANTINE_FILE = (
    "index.json", "classes.json", "manifest.json", "quarantine.jsonl")
CLASS_INDEX_KIND = "places-class-index-v2"  # v1 held every sample's byte ranges: now in the table


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def quarantine_records(out: Location, summaries: list[dict]) -> Iterator[dict]:
    """List-level rejects (per key bucket, and an image folder's unlistable names), then image-level
    rejects (per shard), in a fixed order."""
    for name in reject_files_in(out):
        for line in out.read_text(f"{STATE_DIR}/{name}").splitlines():
            yield json.loads(line)
    for summary in sorted(summaries, key=lambda s: s["group"]):
        if summary["quarantined"]:
            yield from _sidecar(out, summary["group"])["quarantine"]


def quarantine_reasons(out: Location, summaries: list[dict]) -> Counter:
    """How many entries each reason rejected: what the accounting checks before any index file is written."""
    return Counter(record["reason"].split(":", 1)[0] for record in quarantine_records(out, summaries))


def write_quarantine(out: Location, summaries: list[dict]) -> None:
    with out.open_atomic(QUARANTINE_FILE) as f:
        for record in quarantine_records(out, summaries):
            f.write((_dumps(record) + "\n").encode())


def write_classes(out: Location, categories: Categories, summaries: list[dict], name: str) -> None:
    """`classes.parquet` (every sample's location, a row group per class), then `classes.json`: per class
    its count, shards and row group in the table."""
    by_label: dict[int, list[dict]] = defaultdict(list)
    for s in summaries:
        if s["nsamples"]:
            by_label[s["label"]].append(s)
    labels = [*range(len(categories)), *([UNLABELED] if UNLABELED in by_label else [])]
    names = [*categories.names, None]
    groups = class_table.write(out, (class_table.rows(label, names[label], [
        (s["url"], _sidecar(out, s["group"])["samples"]) for s in by_label[label]]) for label in labels))
    records = [{**({"id": label, "name": names[label]} if label != UNLABELED else {}),
                "count": sum(s["nsamples"] for s in by_label[label]), "row_group": group,
                "shards": [{"url": s["url"], "nsamples": s["nsamples"]} for s in sorted(by_label[label],
                                                                                      key=lambda s: s["url"])]}
               for label, group in zip(labels, groups)]
    index = {"__kind__": CLASS_INDEX_KIND, "name": name, "num_classes": len(categories),
             "table": class_table.TABLE_FILE, "classes": records[:len(categories)]}
    if UNLABELED in by_label:
        index["unlabeled"] = records[-1]
    out.write_atomic(CLASSES_FILE, (json.dumps(index, sort_keys=True, indent=1) + "\n").encode())


def reject_files_in(out: Location) -> list[str]:
    """Names of the list-level reject files in OUT/.state: listed and matched by name, never globbed (a
    user's OUT may hold [ or ?, and a glob would then match a neighbouring folder's files)."""
    try:
        listed = out.list_dir(STATE_DIR)
    except FileNotFoundError:  # an object store has no empty folders
        return []
    return [name for name, kind in listed if kind == "file" and name.startswith("rejects-") and name.endswith(".jsonl")]


def write_index(out: Location, summaries: list[dict], name: str, class_names: tuple[str, ...],
                attribute_names: tuple[str, ...] | None = None, video: dict | None = None,
                multi_label: bool = False) -> None:
    """The wids-v1 shard index, plus our `layout`, `num_classes`, `class_names` (in label order: what
    training checks its validation shards and checkpoints against), `total_samples`, with attributes
    `attribute_names` (the order of each sample's `attr` bits), for video shards `video` (the
    stored frame rate and size: what clip sampling reads), and `multi_label` when samples may carry
    several classes (a `labels` member; the shard's class is the first)."""
    shardlist = [{"url": s["url"], "nsamples": s["nsamples"], "filesize": s["filesize"], "md5sum": s["md5sum"],
                  "class": s["label"]}
                 for s in sorted(summaries, key=lambda s: s["url"]) if s["nsamples"]]
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
             "layout": "per-class", "num_classes": len(class_names), "class_names": list(class_names),
             "total_samples": sum(s["nsamples"] for s in shardlist),
             "shardlist": shardlist}
    if attribute_names is not None:
        index["attribute_names"] = list(attribute_names)
    if video is not None:
        index["video"] = video
    if multi_label:
        index["multi_label"] = True
    out.write_atomic(INDEX_FILE, (json.dumps(index, sort_keys=True, indent=1) + "\n").encode())


def remove_unlisted_shards(out: Location, summaries: list[dict]) -> list[str]:
    """Drop the shards an earlier run into OUT wrote that this run's index no longer lists (another corpus
    resharded into the same OUT left them beside the new index); only tars this tool wrote (with their
    sidecar in .state) are touched.  Returns their names."""
    listed = {s["url"] for s in summaries}
    stale = [name for name, kind in out.list_dir() if kind == "file" and name.endswith(".tar")
             and name not in listed and out.exists(f"{STATE_DIR}/{name[:-len('.tar')]}.json")]
    for name in stale:
        out.remove(name)
        out.remove(f"{STATE_DIR}/{name[:-len('.tar')]}.json")
    return stale


def write_manifest(out: Location, manifest: dict) -> None:
    out.write_atomic(MANIFEST_FILE, (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode())


def package_versions() -> dict[str, str]:
    names = ("ray", "webdataset", "pillow", "av", "pyarrow", "numpy", "fsspec", "places-ray")
    versions = {}
    for n in names:
        try:
            versions[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            versions[n] = "not installed"
    return versions


def _sidecar(out: Location, group: str) -> dict:
    return json.loads(out.read_bytes(f"{STATE_DIR}/{group}.json"))
