"""The functions Ray Data runs on workers while sharding, one per pipeline stage.

    list lines --parse--> entries --by key bucket: resolve_duplicates--> valid entries
               --by shard: collect_group--> member list file, one row per shard --write_group--> tar + sidecar

Only metadata crosses the shuffles; image bytes are read, converted and written inside `write_group`,
one shard at a time, so a worker's memory is bounded by one shard.  A shard's member list goes from
`collect_group` to `write_group` as a file in OUT/.state/members, not as a Ray object: Ray keeps a task
result under 100 KB (a shard's list is about that) in the memory of the process that submitted the
task, so carried as rows, the lists of the whole corpus gathered in the sharding driver.  Every function
is deterministic given its input rows, whatever order Ray delivers them in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from common.hashing import stable_hash
from common.storage import Location
from pipelines.media.images import ImageRejected, ImageSettings, prepare_image
from pipelines.media.video import VideoRejected, VideoSettings, prepare_video
from pipelines.offline.attributes import AttributeFile, join, parse_row
from pipelines.offline.corpus import (ANY_DOWNLOAD, DOWNLOAD_EXTENSIONS, UNLABELED, Categories, encode_labels,
                                      is_comment, parse_line, relative_image_path, sample_key)
from pipelines.offline.list_file import lines_in_range
from pipelines.offline.tar_shard import build_shard

STATE_DIR = ".state"  # per-shard sidecars and per-bucket reject lists: what makes a rerun resumable
MEMBERS_DIR = f"{STATE_DIR}/members"  # each shard's member list, from collect_group to write_group; removed after


@dataclass(frozen=True)
class ShardPlan:
    """Everything a worker needs to place an entry, decided by the driver's pre-flight."""

    categories: Categories
    labels: str  # where each line's labels are: corpus.LISTED, FOLDER or NONE
    shards_per_label: dict[int, int]
    num_buckets: int
    seed: int
    images_root: Location
    out: Location
    media: ImageSettings | VideoSettings  # what each input is prepared as
    attributes: AttributeFile | None = None  # joined into the samples as their `attr` member
    keep_without_attributes: bool = False  # an image without an attribute row: kept (no `attr`), not quarantined

    def group_of(self, label: int, key: str) -> str:
        index = stable_hash(self.seed, "shard", key) % self.shards_per_label[label]
        return shard_name(label, index)


def shard_name(label: int, index: int) -> str:
    prefix = "unlabeled" if label == UNLABELED else f"c{label:04d}"
    return f"{prefix}-{index:05d}"


def order_of(seed: int, key: str) -> int:
    """Position key of a sample inside its shard: a seeded shuffle that needs no global view."""
    return stable_hash(seed, "order", key)


# -- stage 1: parse ---------------------------------------------------------------------------
def parse_ranges(batch: dict[str, np.ndarray], plan: ShardPlan, list_loc: Location,
                 rows_per_batch: int = 50_000) -> Iterator[dict[str, np.ndarray]]:
    """The entries of the list lines in each byte range (`list_file.lines_in_range`: the pre-flight's
    own splitter), in batches of metadata."""
    for start, end in zip(batch["start"], batch["end"]):
        lines = lines_in_range(list_loc, int(start), int(end))
        while chunk := list(itertools.islice(lines, rows_per_batch)):
            yield parse_lines(chunk, plan)


ENTRY_COLUMNS = ("source", "label", "label_token", "key", "path", "problem", "bucket", "group", "kind", "attr",
                 "labels")


def parse_lines(lines: list[str], plan: ShardPlan) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in ENTRY_COLUMNS}
    for line in lines:
        entry = parse_line(line, plan.categories, plan.labels)
        if entry is None:
            continue
        key = sample_key(entry.source)
        path = relative_image_path(entry.source)
        problem = entry.problem or ("" if path else "path_escapes_root: the listed path leaves the image root")
        cols["source"].append(entry.source)
        cols["label"].append(entry.label)
        cols["label_token"].append(entry.label_token or "")
        cols["key"].append(key)
        cols["path"].append(path or "")
        cols["problem"].append(problem)
        cols["bucket"].append(stable_hash("bucket", key) % plan.num_buckets)
        cols["group"].append("" if problem else plan.group_of(entry.label, key))
        cols["kind"].append("entry")
        cols["attr"].append("")
        cols["labels"].append(encode_labels(entry.labels).decode())  # "" for one label (the shard's)
    return _columns(cols)


def _columns(cols: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.int64 if k in ("label", "bucket") else object) for k, v in cols.items()}


def parse_attribute_ranges(batch: dict[str, np.ndarray], plan: ShardPlan) -> Iterator[dict[str, np.ndarray]]:
    """The attribute rows in each byte range of `plan.attributes`, as rows of the entries' key buckets
    (`kind` "attributes"), so each row meets the entry of its image in `resolve_duplicates`."""
    table = plan.attributes
    for start, end in zip(batch["start"], batch["end"]):
        cols: dict[str, list] = {k: [] for k in ENTRY_COLUMNS}
        lines = lines_in_range(table.loc, int(start), int(end))
        if table.form == "csv" and int(start) == 0:
            next((line for line in lines if line.strip() and not is_comment(line)), None)  # the header
        for line in lines:
            parsed = parse_row(line, table)
            if parsed is None:
                continue
            source, bits, problem = parsed
            path, key = relative_image_path(source) or "", sample_key(source)
            row = {"source": source, "label": -1, "label_token": "", "key": key, "path": path,
                   "problem": problem or ("" if path else "no usable path"), "group": "", "kind": "attributes",
                   "bucket": stable_hash("bucket", key) % plan.num_buckets, "attr": bits, "labels": ""}
            for name in ENTRY_COLUMNS:
                cols[name].append(row[name])
        yield _columns(cols)


# -- stage 2: one bucket of keys; every duplicate of a key lands in the same bucket -----------------
def resolve_duplicates(batch: dict[str, np.ndarray], plan: ShardPlan) -> dict[str, np.ndarray]:
    everything = sorted(_rows(batch), key=lambda r: (r["key"], r["source"], r["label"], r["labels"], r["problem"],
                                                     r["attr"]))
    rows = [r for r in everything if r["kind"] == "entry"]
    rejects, keep = [], []
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        if row["problem"]:
            rejects.append(_reject(row, row["problem"]))
        else:
            by_key.setdefault(row["key"], []).append(row)
    for key, same in by_key.items():
        # Compare normalised paths: "a/x.jpg" and "/a/x.jpg" are the same file listed twice.
        labels_of: dict[str, set[str]] = {}
        for r in same:
            labels_of.setdefault(r["path"], set()).add(r["labels"] or str(r["label"]))
        usable = []
        for r in same:
            if len(labels_of[r["path"]]) > 1:  # one image in two classes: which is right is unknowable
                listed = sorted(labels_of[r["path"]], key=lambda t: [int(x) for x in t.split(",")])
                listed = [int(t) if t.lstrip("-").isdigit() else t for t in listed]
                rejects.append(_reject(r, f"conflicting_labels: listed with labels {listed}"))
            else:
                usable.append(r)
        if not usable:
            continue
        first = usable[0]
        keep.append(first)
        for r in usable[1:]:
            if r["path"] == first["path"]:
                rejects.append(_reject(r, f"duplicate_entry: {first['source']} is listed more than once"))
            else:
                rejects.append(_reject(r, f"key_collision: key {key!r} already used by {first['source']}"))
    if plan.attributes is not None:
        attribute_rows = [r for r in everything if r["kind"] == "attributes"]
        keep, missing = join(keep, attribute_rows, os.path.basename(plan.attributes.loc.uri()),
                              plan.keep_without_attributes)
        rejects += [_reject(r, reason) for r, reason in missing]
    if rejects:
        rejects.sort(key=lambda r: (r["source"], str(r["label"]), r["reason"]))
        write_rejects(plan.out, f"rejects-{int(batch['bucket'][0]):05d}.jsonl", rejects)
    return {
        "group": np.array([r["group"] for r in keep], dtype=object),
        "label": np.array([r["label"] for r in keep], dtype=np.int64),
        "key": np.array([r["key"] for r in keep], dtype=object),
        "source": np.array([r["source"] for r in keep], dtype=object),
        "path": np.array([r["path"] for r in keep], dtype=object),
        "attr": np.array([r["attr"] for r in keep], dtype=object),
        "labels": np.array([r["labels"] for r in keep], dtype=object),
    }


def write_rejects(out: Location, name: str, rejects: list[dict]) -> None:
    """A list-level reject file in OUT/.state (`name` starting with `rejects-`): one JSON record a line."""
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
    out.write_atomic(f"{STATE_DIR}/{name}", body.encode())


# -- stage 3: one row per shard ---------------------------------------------------------------------
def collect_group(batch: dict[str, np.ndarray], plan: ShardPlan) -> dict[str, np.ndarray]:
    rows = sorted(_rows(batch), key=lambda r: (order_of(plan.seed, r["key"]), r["key"]))
    members = [[r["key"], r["source"], r["path"], r["attr"], r["labels"]] for r in rows]
    group = rows[0]["group"]
    plan.out.write_atomic(members_file(group), json.dumps(members).encode())
    return {
        "group": np.array([group], dtype=object),
        "label": np.array([rows[0]["label"]], dtype=np.int64),
    }


def members_file(group: str) -> str:
    return f"{MEMBERS_DIR}/{group}.json"


# -- stage 4: read, convert, write one shard --------------------------------------------------------
def write_group(batch: dict[str, np.ndarray], plan: ShardPlan) -> dict[str, np.ndarray]:
    summaries = [_write_one(str(g), int(lab), json.loads(plan.out.read_bytes(members_file(str(g)))), plan)
                 for g, lab in zip(batch["group"], batch["label"])]
    return {k: np.array([s[k] for s in summaries]) for k in summaries[0]}


def _write_one(group: str, label: int, members: list[list[str]], plan: ShardPlan) -> dict:
    started = time.perf_counter()
    url, sidecar_rel = f"{group}.tar", f"{STATE_DIR}/{group}.json"
    fingerprint = hashlib.sha256(json.dumps([asdict(plan.media), label, members]).encode()).hexdigest()
    previous = _completed_sidecar(plan.out, sidecar_rel, url, fingerprint)
    if previous is not None:
        return _summary(previous, reused=True, seconds=time.perf_counter() - started)

    samples, quarantine, passthrough = [], [], 0
    cls_bytes = str(label).encode()
    video = isinstance(plan.media, VideoSettings)
    for key, source, path, attr, labels in members:
        try:
            media, meta, kept = _prepare(_read_source(plan.images_root, path), plan.media)
        except (ImageRejected, VideoRejected) as exc:
            quarantine.append({"source": source, "label": label, "reason": exc.reason})
            continue
        except Exception as exc:  # a decoder bug on one odd file must not take the shard down
            quarantine.append({"source": source, "label": label,
                               "reason": f"corrupt_{'video' if video else 'image'}: {type(exc).__name__}: {exc}"})
            continue
        passthrough += kept
        meta = json.dumps({"source": source, **meta}, sort_keys=True)
        sample = {"__key__": key, "cls": cls_bytes, **media, "json": meta.encode()}
        if attr:
            sample["attr"] = attr.encode()
        if labels:  # several classes, the shard's first (corpus.encode_labels)
            sample["labels"] = labels.encode()
        samples.append(sample)

    sidecar = {"group": group, "url": url, "label": label, "fingerprint": fingerprint,
               "nsamples": len(samples), "with_attributes": sum("attr" in s for s in samples), "filesize": 0,
               "md5sum": "", "passthrough": passthrough, "samples": [], "quarantine": quarantine}
    if samples:
        built = build_shard(samples)
        plan.out.write_atomic(url, built.data)
        sidecar.update(filesize=len(built.data), md5sum=built.md5,
                       samples=[s.to_json() for s in built.samples])
    else:
        plan.out.remove(url)  # an all-rejected shard must not leave an old tar behind
    plan.out.write_atomic(sidecar_rel, json.dumps(sidecar, sort_keys=True).encode())
    return _summary(sidecar, reused=False, seconds=time.perf_counter() - started)


def _prepare(data: bytes, media: ImageSettings | VideoSettings) -> tuple[dict[str, bytes], dict, int]:
    """An input's members as the shard stores them, its json metadata, and 1 if its bytes passed through."""
    if isinstance(media, VideoSettings):
        video = prepare_video(data, media)
        return {"mp4": video.mp4}, video.meta, 0
    image = prepare_image(data, media)
    return {"jpg": image.jpeg}, {"orig_size": list(image.orig_size)}, int(image.passthrough)


def _read_source(root: Location, path: str) -> bytes:
    if path.endswith(ANY_DOWNLOAD):  # a YouTube URL's download, in whichever container it came
        stem = path[:-len(ANY_DOWNLOAD)]
        for ext in DOWNLOAD_EXTENSIONS:
            try:
                return _read_file(root, f"{stem}.{ext}")
            except ImageRejected as exc:
                if exc.code != "missing_file":
                    raise
        raise ImageRejected("missing_file", f"{root.uri(stem)}.{{{','.join(DOWNLOAD_EXTENSIONS)}}}: none exists "
                                            f"(a listed URL's video is read from its id's download)")
    return _read_file(root, path)


def _read_file(root: Location, path: str) -> bytes:
    if root.is_local:  # a symlink inside the root may point anywhere: what it resolves to must stay inside
        real_root, real = os.path.realpath(root.path()), os.path.realpath(root.path(path))
        if os.path.commonpath([real_root, real]) != real_root:
            raise ImageRejected("path_escapes_root", f"{root.uri(path)} is a link to {real}, outside the image root")
        if os.path.exists(real) and not os.path.isdir(real) and not os.path.isfile(real):
            # a FIFO or device named .jpg: opening it would wait forever
            raise ImageRejected("not_a_file", f"{root.uri(path)} is not a regular file")
    try:
        return root.read_bytes(path)
    except FileNotFoundError as exc:
        raise ImageRejected("missing_file", f"{root.uri(path)} does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageRejected("missing_file", f"{root.uri(path)} is a directory") from exc
    except OSError as exc:
        raise ImageRejected("unreadable_file", f"{type(exc).__name__}: {exc}") from exc


def _completed_sidecar(out: Location, sidecar_rel: str, url: str, fingerprint: str) -> dict | None:
    """The sidecar of an identical shard finished earlier, if its tar still checks out."""
    if not out.exists(sidecar_rel):
        return None
    try:
        sidecar = json.loads(out.read_bytes(sidecar_rel))
    except (ValueError, OSError):
        return None
    if sidecar.get("fingerprint") != fingerprint:
        return None
    if sidecar["nsamples"] == 0:
        return sidecar
    if not out.exists(url) or out.size(url) != sidecar["filesize"]:
        return None
    return sidecar if hashlib.md5(out.read_bytes(url)).hexdigest() == sidecar["md5sum"] else None


def _summary(sidecar: dict, reused: bool, seconds: float) -> dict:
    return {"group": sidecar["group"], "url": sidecar["url"], "label": sidecar["label"],
            "nsamples": sidecar["nsamples"], "filesize": sidecar["filesize"], "md5sum": sidecar["md5sum"],
            "quarantined": len(sidecar["quarantine"]), "passthrough": sidecar["passthrough"],
            "with_attributes": sidecar.get("with_attributes", 0),
            "reused": reused, "seconds": seconds}


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    names = list(batch)
    return [dict(zip(names, (v.item() if hasattr(v, "item") else v for v in values)))
            for values in zip(*(batch[n] for n in names))]


def _reject(row: dict, reason: str) -> dict:
    label: int | str | None = row["label"] if row["label"] >= 0 else (row.get("label_token") or None)
    if isinstance(label, str) and label.lstrip("+-").isdigit():
        label = int(label)
    return {"source": row["source"], "label": label, "reason": reason}
