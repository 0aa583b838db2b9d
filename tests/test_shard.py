"""pipelines/shard.py end to end on real files and a real local Ray cluster."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from conftest import encode, odd_files, scene
from common.storage import Location
from pipelines import shard
from pipelines.media.images import ImageSettings
from pipelines.offline.corpus import LISTED, Categories, sample_key
from pipelines.offline.shard_tasks import ShardPlan, collect_group, order_of, write_group

CLASSES = ["/a/alpha", "/b/beta", "/c/gamma"]
COUNTS = [12, 6, 3]
ARGS = ["--image-size", "64", "--shard-samples", "4", "--max-pixels", "100000"]

# source as listed -> expected reason code (everything else listed is written)
EXPECTED_REJECTS = {
    "/odd/bad_empty.jpg": "empty_file",
    "/odd/bad_truncated.jpg": "truncated_image",
    "/odd/bad_cut_closed.jpg": "truncated_image",
    "/odd/bad_claims_9000.jpg": "too_many_pixels",  # over --max-pixels before it is decoded
    "/odd/bad_html.jpg": "not_an_image",
    "/odd/bad_huge.png": "too_many_pixels",
    "/a/alpha/missing.jpg": "missing_file",
    "/a/alpha/000.jpg": "label_out_of_range",  # listed again with label 7
    "../outside.jpg": "path_escapes_root",
    "a/alpha/001.jpg": "duplicate_entry",  # also listed as /a/alpha/001.jpg: one copy is kept
    "/b/beta/000.jpg": "conflicting_labels",  # listed with labels 1 and 2: both rejected
    "/a/alpha_x/1.jpg": "key_collision",  # flattens to the same key as /a/alpha/x_1.jpg
    "/c/gamma/nolabel.jpg": "missing_label",
    "a//alpha/002.jpg": "duplicate_entry",  # the same file as /a/alpha/002.jpg once the path is normalised
    "/a/alpha/link.jpg": "path_escapes_root",  # a symlink inside the root to a file outside it
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    lines, written = [], Counter()
    for cid, (name, n) in enumerate(zip(CLASSES, COUNTS)):
        folder = images / name.strip("/")
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:03d}.jpg").write_bytes(encode(scene(cid * 100 + i, 64, 64)))
            prefix = name if i % 2 == 0 else name.lstrip("/")  # with and without the leading "/"
            lines.append(f"{prefix}/{i:03d}.jpg {cid}")
            written[cid] += 1
    (images / "odd").mkdir()
    for fname, data in odd_files(64).items():
        (images / "odd" / fname).write_bytes(data)
        lines.append(f"/odd/{fname} 0")
        written[0] += fname.startswith("ok_")
    (images / "a/alpha/x_1.jpg").write_bytes(encode(scene(900, 64, 64)))
    (images / "a/alpha_x").mkdir()
    (images / "a/alpha_x/1.jpg").write_bytes(encode(scene(901, 64, 64)))
    lines += ["/a/alpha/x_1.jpg 0", "/a/alpha_x/1.jpg 0"]
    written[0] += 1
    for i, name in enumerate(("line\u2028sep.jpg", "tab\x0bstop.jpg", "next\x85line.jpg")):
        # str.splitlines (Ray's read_text) broke these names in two: the accounting broke after the index
        (images / "b/beta" / name).write_bytes(encode(scene(910 + i, 64, 64)))
        lines.append(f"/b/beta/{name} 1")
        written[1] += 1
    (root / "secret.jpg").write_bytes(encode(scene(902, 64, 64)))
    (images / "a/alpha/link.jpg").symlink_to(root / "secret.jpg")
    lines += ["/a/alpha/missing.jpg 0", "/a/alpha/000.jpg 7", "../outside.jpg 0", "", "/a/alpha/001.jpg 0",
              "/b/beta/000.jpg 2", "/c/gamma/nolabel.jpg", "a//alpha/002.jpg 0", "/a/alpha/link.jpg 0"]
    written[1] -= 1  # /b/beta/000.jpg is listed under two labels
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "categories.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(CLASSES)))
    entries = sum(1 for ln in lines if ln.strip())
    return {"root": root, "images": images, "entries": entries, "written": written}


def run_shard(corpus, out, *extra):
    argv = ["--list", str(corpus["root"] / "train.txt"), "--images-root", str(corpus["images"]),
            "--categories", str(corpus["root"] / "categories.txt"), "--out", str(out), *ARGS, *extra]
    assert shard.main(argv) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sharded(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, run_shard(corpus, out)


def read_json(path):
    return json.loads(path.read_text())


def test_every_entry_is_written_or_quarantined_with_its_reason(sharded, corpus):
    out, manifest = sharded
    assert manifest["entries_read"] == corpus["entries"]
    assert manifest["written"] == sum(corpus["written"].values())
    assert manifest["entries_read"] == manifest["written"] + manifest["quarantined"]
    quarantine = [json.loads(ln) for ln in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {tuple(sorted(q)) for q in quarantine} == {("label", "reason", "source")}
    codes = Counter((q["source"], q["reason"].split(":")[0]) for q in quarantine)
    expected = Counter(EXPECTED_REJECTS.items())
    expected[("/b/beta/000.jpg", "conflicting_labels")] = 2
    assert codes == expected
    assert manifest["per_class_written"] == {c: corpus["written"][i] for i, c in enumerate(CLASSES)}
    assert sum(manifest["quarantine_reasons"].values()) == manifest["quarantined"] == len(quarantine)


def test_shards_read_back_with_webdataset(sharded, corpus):
    out, manifest = sharded
    index = read_json(out / "index.json")
    urls = [str(out / s["url"]) for s in index["shardlist"]]
    seen = Counter()
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert "." not in sample["__key__"]
        assert set(sample) >= {"__key__", "jpg", "cls", "json"}
        label = int(sample["cls"].decode("ascii"))
        meta = json.loads(sample["json"])
        assert set(meta) == {"source", "orig_size"} and len(meta["orig_size"]) == 2
        img = Image.open(io.BytesIO(sample["jpg"]))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
        assert not img.info.get("progressive")
        seen[label] += 1
    assert seen == corpus["written"]


def test_shards_read_back_with_ray_data(sharded, corpus, ray_cluster):
    out, _ = sharded
    index = read_json(out / "index.json")
    ds = ray_cluster.data.read_webdataset([str(out / s["url"]) for s in index["shardlist"]], decoder=None)
    rows = ds.take_all()
    keys = sorted(r["__key__"] for r in rows)
    assert len(keys) == len(set(keys)) == sum(corpus["written"].values())
    assert Counter(int(bytes(r["cls"]).decode()) for r in rows) == corpus["written"]
    table = ray_cluster.data.read_parquet(str(out / "classes.parquet"))  # the class index, as Ray Data reads it
    assert sorted(table.to_pandas()["key"]) == keys


def test_passthrough_keeps_source_bytes(sharded, corpus):
    out, manifest = sharded
    source = (corpus["images"] / "a/alpha/003.jpg").read_bytes()
    found = [s["jpg"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("c0000-*.tar")),
                                              shardshuffle=False, empty_check=False)
             if s["__key__"] == "a_alpha_003"]
    assert found == [source]
    assert manifest["passthrough"] >= sum(COUNTS) - 2  # every plain 64x64 baseline JPEG


def test_index_is_wids_v1_and_checksums_match(sharded):
    out, manifest = sharded
    index = read_json(out / "index.json")
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1 and index["name"]
    assert len(index["shardlist"]) == manifest["shards"]
    for s in index["shardlist"]:
        data = (out / s["url"]).read_bytes()
        assert s["filesize"] == len(data) and s["md5sum"] == hashlib.md5(data).hexdigest()
        with tarfile.open(out / s["url"]) as tar:
            infos = tar.getmembers()
        assert len(infos) == 3 * s["nsamples"]
        assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(0, 0, 0, "places")}
    # Per-class shards: every sample of a shard carries the shard's class, and --shard-samples 4
    # splits beta's 9 listed entries over 3 shards and gamma's 4 into 1.
    for s in index["shardlist"]:
        labels = {int(x["cls"]) for x in wds.WebDataset(str(out / s["url"]), shardshuffle=False, empty_check=False)}
        assert labels == {s["class"]}
    per_class = Counter(s["class"] for s in index["shardlist"])
    assert per_class[1] == 3 and per_class[2] == 1 and per_class[0] >= 6


def test_class_index_offsets_fetch_exactly_the_members(sharded, corpus):
    """classes.parquet: a row group per class (classes.json names it), each row a sample's byte ranges."""
    import pyarrow.parquet as pq

    from common.storage import Location
    from pipelines.offline.class_table import read_class

    out, manifest = sharded
    classes = read_json(out / "classes.json")
    assert [c["id"] for c in classes["classes"]] == [0, 1, 2] and classes["table"] == "classes.parquet"
    assert [c["name"] for c in classes["classes"]] == CLASSES
    table = pq.read_table(out / "classes.parquet")
    assert table.num_rows == manifest["written"]
    assert pq.ParquetFile(out / "classes.parquet").metadata.num_row_groups == 3
    by_key = {}
    for url in {s["url"] for c in classes["classes"] for s in c["shards"]}:
        for sample in wds.WebDataset(str(out / url), shardshuffle=False, empty_check=False):
            by_key[sample["__key__"]] = sample
    total = 0
    for c in classes["classes"]:
        assert c["count"] == corpus["written"][c["id"]] == sum(s["nsamples"] for s in c["shards"])
        rows = read_class(Location.parse(str(out)), c["row_group"]).to_pylist()
        assert len(rows) == c["count"] and {(r["class_id"], r["class_name"]) for r in rows} == {(c["id"], c["name"])}
        assert [r["url"] for r in rows] == sorted(r["url"] for r in rows)
        for rec in rows:
            total += 1
            blob = (out / rec["url"]).read_bytes()
            chunk = blob[rec["offset"]: rec["offset"] + rec["size"]]
            with tarfile.open(fileobj=io.BytesIO(chunk), mode="r:") as tar:  # a self-contained fragment
                names = sorted(m.name for m in tar.getmembers())
            assert names == [f"{rec['key']}.{ext}" for ext in ("cls", "jpg", "json")]
            for member in rec["members"]:
                assert blob[member["offset"]: member["offset"] + member["size"]] == by_key[rec["key"]][member["name"]]
    assert total == manifest["written"]
    # the same table through pandas and Ray Data
    assert list(table.to_pandas().groupby("class_id").size()) == [corpus["written"][i] for i in range(3)]


def offsets_from_table_and_from_shards(out, tmp_path, monkeypatch):
    """The node-local offsets file as built from classes.parquet, and as built from the tar headers."""
    import shutil

    from pipelines.online.catalog import Catalog
    from pipelines.online.class_offsets import ClassOffsets

    copy = tmp_path / "no_table"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("classes.parquet"))
    monkeypatch.setenv("PLACES_CACHE", str(tmp_path / "cache"))
    return ClassOffsets(Catalog.load(str(out))), ClassOffsets(Catalog.load(str(copy)))


def test_sample_offsets_from_the_class_table_equal_the_shards_own(sharded, tmp_path, monkeypatch):
    """What the samplers read by byte range: classes.parquet's rows are the tar headers' samples, in the
    order the samplers number them (classes in label order, shards by url, tar order)."""
    from_table, from_shards = offsets_from_table_and_from_shards(sharded[0], tmp_path, monkeypatch)
    assert from_table.rows == sharded[1]["written"] == len(from_table.table)
    assert (from_table.table == from_shards.table).all() and from_table.table[:, 1].min() > 0
    assert from_table.unlisted == from_shards.unlisted == {}


def test_rerun_elsewhere_is_byte_identical(sharded, corpus, tmp_path):
    out, _ = sharded
    run_shard(corpus, tmp_path)
    first = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "manifest.json")
    assert first == sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.name != "manifest.json")
    for name in first:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_a_shards_member_list_goes_by_file_not_through_the_driver(sharded, corpus, tmp_path):
    """Ray keeps a task result under 100 KB in the submitting process, here the driver: carried as the
    rows of a shard, every shard's member list gathered there (2.0 GB at 8M by shard_scale.py's fit).
    The row holds the shard's name and class; the list is a file in .state/members that write_group reads,
    and a finished run leaves none."""
    out, _ = sharded
    assert not (out / ".state" / "members").exists()
    plan = ShardPlan(categories=Categories.from_names(["a"]), labels=LISTED, shards_per_label={0: 1}, num_buckets=1,
                     seed=0, images_root=Location.parse(str(corpus["images"])), out=Location.parse(str(tmp_path)),
                     media=ImageSettings(64, "square", 90, 100_000))
    sources = ["/a/alpha/003.jpg", "/a/alpha/004.jpg", "/a/alpha/005.jpg"]
    keys = [sample_key(s) for s in sources]
    batch = {"group": np.array(["c0000-00000"] * 3, dtype=object), "label": np.zeros(3, dtype=np.int64),
             "key": np.array(keys, dtype=object), "source": np.array(sources, dtype=object),
             "path": np.array([s[1:] for s in sources], dtype=object), "attr": np.array([""] * 3, dtype=object),
             "labels": np.array([""] * 3, dtype=object)}
    row = collect_group(batch, plan)
    assert {k: v.tolist() for k, v in row.items()} == {"group": ["c0000-00000"], "label": [0]}
    listed = json.loads((tmp_path / ".state" / "members" / "c0000-00000.json").read_text())
    assert sorted(listed) == sorted([k, s, s[1:], "", ""] for k, s in zip(keys, sources))
    assert [m[0] for m in listed] == sorted(keys, key=lambda k: (order_of(0, k), k))
    summary = write_group(row, plan)
    assert summary["nsamples"].tolist() == [3]
    with tarfile.open(tmp_path / "c0000-00000.tar") as tar:
        assert [m.name for m in tar.getmembers() if m.name.endswith(".jpg")] == [f"{m[0]}.jpg" for m in listed]


def test_rerun_in_place_reuses_verified_shards_and_rebuilds_tampered_ones(sharded, corpus):
    out, manifest = sharded
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    victim = sorted(before)[0]
    (out / victim).write_bytes(before[victim][:-1024])  # e.g. a copy cut short
    again = run_shard(corpus, out)
    assert again["shards_reused"] == manifest["shards"] - 1
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_seed_changes_order_but_not_content(sharded, corpus, tmp_path):
    out, manifest = sharded
    other = run_shard(corpus, tmp_path, "--seed", "1")
    assert other["written"] == manifest["written"]
    keys = lambda d: [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in d.glob("c0000-*.tar")),
                                                             shardshuffle=False, empty_check=False)]
    assert sorted(keys(out)) == sorted(keys(tmp_path)) and keys(out) != keys(tmp_path)


def test_image_folder_tree(ray_cluster, corpus, tmp_path):
    tree = tmp_path / "tree"
    for name, n in (("cat", 5), ("dog", 3)):
        (tree / name / "sub").mkdir(parents=True)
        for i in range(n):
            (tree / name / "sub" / f"{i}.jpg").write_bytes(encode(scene(i, 48, 40)))
    (tree / "dog" / "notes.txt").write_text("not an image")  # an input too: it must be accounted for
    (tree / "dog" / ".DS_Store").write_bytes(b"\0")
    os.mkfifo(tree / "dog" / "pipe.jpg")  # not a regular file: opening it waited forever
    # names no list line can carry: quarantined with their reason (a latin-1 name aborted the whole run)
    (tree / "cat" / "caf\udce9.jpg").write_bytes(encode(scene(7, 48, 40)))
    (tree / "cat" / "two\nlines.jpg").write_bytes(encode(scene(8, 48, 40)))
    out = tmp_path / "out"
    assert shard.main(["--image-folder", str(tree), "--out", str(out), "--image-size", "32",
                       "--resize", "shorter"]) == 0
    manifest = read_json(out / "manifest.json")
    assert (manifest["entries_read"], manifest["written"], manifest["quarantined"]) == (12, 8, 4)
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert quarantine[:2] == [
        {"label": 0, "reason": "undecodable_name: the file name is not UTF-8", "source": "cat/caf\\xe9.jpg"},
        {"label": 0, "reason": "unlistable_name: the file name holds a line break", "source": "cat/two\nlines.jpg"}]
    [fifo] = [q for q in quarantine if q["source"] == "dog/pipe.jpg"]
    assert fifo["reason"] == f"not_a_file: {tree / 'dog' / 'pipe.jpg'} is not a regular file"
    assert manifest["per_class_written"] == {"cat": 5, "dog": 3}
    sizes = {Image.open(io.BytesIO(s["jpg"])).size
             for s in wds.WebDataset(str(out / "c0000-00000.tar"), shardshuffle=False, empty_check=False)}
    assert sizes == {(38, 32)}
    # another corpus into the same OUT: the old shards it does not list are gone with their sidecars
    other = tmp_path / "other"
    (other / "owl").mkdir(parents=True)
    (other / "owl" / "0.jpg").write_bytes(encode(scene(9, 48, 40)))
    assert shard.main(["--image-folder", str(other), "--out", str(out), "--image-size", "32"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["c0000-00000.tar"]
    assert not (out / ".state" / "c0001-00000.json").exists()
    assert [s["url"] for s in read_json(out / "index.json")["shardlist"]] == ["c0000-00000.tar"]


def test_val_list_with_bare_names_and_unlabeled_test_list(ray_cluster, corpus, tmp_path, monkeypatch):
    flat = tmp_path / "val_256"
    flat.mkdir()
    for i in range(4):
        (flat / f"Places365_val_{i:08d}.jpg").write_bytes(encode(scene(i, 64, 64)))
    # `#` lines are comments in the list and the categories (a "# name id" first line shifted every label)
    (tmp_path / "val.txt").write_text("# Places365 validation\n" + "".join(
        f"Places365_val_{i:08d}.jpg {i % 3}\n" + ("# second half\n" if i == 1 else "") for i in range(4)))
    (tmp_path / "test.txt").write_text("".join(f"Places365_val_{i:08d}.jpg\n" for i in range(4)))
    cats = str(tmp_path / "categories.txt")
    Path(cats).write_text("# name id\n" + (corpus["root"] / "categories.txt").read_text())
    assert shard.main(["--list", str(tmp_path / "val.txt"), "--images-root", str(flat), "--categories", cats,
                       "--out", str(tmp_path / "val"), *ARGS]) == 0
    manifest = read_json(tmp_path / "val" / "manifest.json")
    assert manifest["per_class_written"] == dict(zip(CLASSES, [2, 1, 1])) and manifest["entries_read"] == 4
    assert shard.main(["--list", str(tmp_path / "test.txt"), "--images-root", str(flat),
                       "--out", str(tmp_path / "test"), *ARGS]) == 0
    classes = read_json(tmp_path / "test" / "classes.json")
    assert classes["unlabeled"]["count"] == 4 and classes["num_classes"] == 0
    from common.storage import Location
    from pipelines.offline.class_table import read_class
    unlabeled = read_class(Location.parse(str(tmp_path / "test")), classes["unlabeled"]["row_group"])
    assert unlabeled.column("class_id").to_pylist() == [-1] * 4
    labels = {s["cls"] for s in wds.WebDataset(str(tmp_path / "test" / "unlabeled-00000.tar"),
                                               shardshuffle=False, empty_check=False)}
    assert labels == {b"-1"}
    # unlabeled samples are rows of the class index too (a uniform epoch reads them by byte range)
    from_table, from_shards = offsets_from_table_and_from_shards(tmp_path / "test", tmp_path, monkeypatch)
    assert from_table.rows == 4 and (from_table.table == from_shards.table).all() and from_table.counts == {}


@pytest.mark.parametrize("case", ["missing_list", "unknown_class", "unwritable_out", "missing_root",
                                  "bad_quality"])
def test_bad_arguments_fail_before_any_work(ray_cluster, corpus, tmp_path, capsys, case):
    lst, root, cats = corpus["root"] / "train.txt", corpus["images"], corpus["root"] / "categories.txt"
    out = tmp_path / "out"
    extra = []
    if case == "missing_list":
        lst = tmp_path / "nope.txt"
    elif case == "unknown_class":
        lst = tmp_path / "named.txt"
        lst.write_text("/a/alpha/000.jpg alpha\n/a/alpha/001.jpg volcano\n")
    elif case == "unwritable_out":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
    elif case == "missing_root":
        root = tmp_path / "no_images"
    elif case == "bad_quality":
        extra = ["--quality", "0"]
    argv = ["--list", str(lst), "--images-root", str(root), "--categories", str(cats), "--out", str(out), *extra]
    assert shard.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shard.py: error:")
    expected_word = {"missing_list": "nope.txt", "unknown_class": "volcano", "unwritable_out": "not writable",
                     "missing_root": "no_images", "bad_quality": "quality"}[case]
    assert expected_word in err[0]
    leftovers = [p.name for p in out.glob("*")] if out.is_dir() else []
    assert not [n for n in leftovers if not n.startswith(".")]
