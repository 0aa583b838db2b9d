"""s3:// for --list, --images-root and --out, against a real S3-compatible server on loopback."""

from __future__ import annotations

import itertools
import json

import boto3
import pytest
import webdataset as wds

from conftest import encode, scene
from common.storage import Location
from pipelines import shard

CLASSES = ["/k/kitchen", "/p/park"]


@pytest.fixture(scope="module")
def cluster_with_s3(s3_server):
    """S3 first, so the Ray workers start with the endpoint in their environment too."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield s3_server
    ray.shutdown()


def upload_corpus(client, bucket: str, local_dir) -> int:
    client.create_bucket(Bucket=bucket)
    lines = []
    for cid, name in enumerate(CLASSES):
        for i in range(5 + 3 * cid):
            key = f"images{name}/{i:04d}.jpg"
            data = encode(scene(cid * 50 + i, 80, 60))
            client.put_object(Bucket=bucket, Key=key, Body=data)
            (local_dir / "images" / name.strip("/")).mkdir(parents=True, exist_ok=True)
            (local_dir / "images" / name.strip("/") / f"{i:04d}.jpg").write_bytes(data)
            lines.append(f"{name}/{i:04d}.jpg {cid}")
    lines.append("/p/park/missing.jpg 1")
    body = "\n".join(lines) + "\n"
    cats = "".join(f"{c} {i}\n" for i, c in enumerate(CLASSES))
    client.put_object(Bucket=bucket, Key="train.txt", Body=body.encode())
    client.put_object(Bucket=bucket, Key="categories.txt", Body=cats.encode())
    (local_dir / "train.txt").write_text(body)
    (local_dir / "categories.txt").write_text(cats)
    return len(lines)


COMMON = ["--image-size", "64", "--resize", "shorter", "--shard-samples", "4"]
S3_ARGS = ["--list", "s3://corpus/train.txt", "--images-root", "s3://corpus/images",
           "--categories", "s3://corpus/categories.txt", "--out", "s3://shards/train", *COMMON]


@pytest.fixture(scope="module")
def sharded(cluster_with_s3, tmp_path_factory):
    """The corpus uploaded and sharded twice: bucket to bucket, and from a local copy to a local folder."""
    local = tmp_path_factory.mktemp("s3corpus")
    client = boto3.client("s3")
    entries = upload_corpus(client, "corpus", local)
    client.create_bucket(Bucket="shards")
    assert shard.main(S3_ARGS) == 0
    assert shard.main(["--list", str(local / "train.txt"), "--images-root", str(local / "images"),
                       "--categories", str(local / "categories.txt"), "--out", str(local / "out"), *COMMON]) == 0
    return entries, local / "out"


def test_s3_round_trip_matches_a_local_run(sharded):
    entries, local_out = sharded
    remote = Location.parse("s3://shards/train")
    manifest = json.loads(remote.read_bytes("manifest.json"))
    assert (manifest["entries_read"], manifest["written"], manifest["quarantined"]) == (entries, entries - 1, 1)
    index = json.loads(remote.read_bytes("index.json"))
    # The same bytes as the local run, shard for shard, and the same index files.
    for name in ["index.json", "classes.json", "classes.parquet", *[s["url"] for s in index["shardlist"]]]:
        assert remote.read_bytes(name) == (local_out / name).read_bytes(), name
    stored = remote.walk_files(".state")
    assert "c0000-00000.json" in stored  # the sidecars stay; the member lists do not:
    assert not [k for k in stored if k.startswith("members/")]  # removed under their prefix once every shard is written
    quarantine = [json.loads(ln) for ln in remote.read_text("quarantine.jsonl").splitlines()]
    assert [(q["source"], q["reason"].split(":")[0]) for q in quarantine] == [("/p/park/missing.jpg",
                                                                              "missing_file")]
    # Readers stream straight from the bucket through webdataset's URL handlers.
    url = f"pipe:python -c \"import sys,boto3; sys.stdout.buffer.write(boto3.client('s3').get_object(" \
          f"Bucket='shards', Key='train/{index['shardlist'][0]['url']}')['Body'].read())\""
    keys = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False, empty_check=False)]
    assert len(keys) == index["shardlist"][0]["nsamples"]

    # A rerun against the bucket verifies the checksums of what is there and reuses every shard.
    assert shard.main(S3_ARGS) == 0
    again = json.loads(remote.read_bytes("manifest.json"))
    assert again["shards_reused"] == again["shards"] == manifest["shards"]


def test_streams_read_shards_straight_from_s3(sharded, tmp_path):
    """Both samplers over s3:// give exactly what they give over a local copy of the same shards."""
    from pipelines.online.catalog import Catalog
    from pipelines.online.streams import ClassAwareStream, UniformStream

    remote = Location.parse("s3://shards/train")
    index = json.loads(remote.read_bytes("index.json"))
    for name in ["index.json", *[s["url"] for s in index["shardlist"]]]:
        (tmp_path / name).write_bytes(remote.read_bytes(name))
    s3, local = Catalog.load("s3://shards/train"), Catalog.load(str(tmp_path))
    keys = lambda stream, n=None: [(d.key, d.cls, d.members["jpg"]) for d in itertools.islice(stream, n)]
    assert keys(UniformStream(s3, seed=2, buffer_size=5, block=2)) == keys(
        UniformStream(local, seed=2, buffer_size=5, block=2))
    drawn = keys(ClassAwareStream(s3, seed=2), 40)
    assert drawn == keys(ClassAwareStream(local, seed=2), 40) and len(drawn) == 40


def test_unreachable_bucket_fails_before_any_work(cluster_with_s3, capsys):
    assert shard.main(["--list", "s3://no-such-bucket/train.txt", "--images-root", "s3://no-such-bucket/i",
                       "--categories", "s3://no-such-bucket/c.txt", "--out", "s3://no-such-bucket/out"]) == 2
    assert "no-such-bucket" in capsys.readouterr().err


def test_ucf101_videos_shard_from_a_bucket_as_from_a_local_folder(cluster_with_s3, tmp_path):
    """UCF-101's layout in a bucket (classInd.txt, a trainlist with CRLF ends, one line of two labels, one
    video missing), sharded bucket to bucket and from a local copy: the same files, byte for byte."""
    from pipelines.media.video import encode_video
    from test_video_decode import moving_square

    files = {"classInd.txt": b"1 Left\r\n2 Right\r\n",
             "trainlist01.txt": b"Left/v_a.avi 1\r\nRight/v_b.mp4 2\r\nRight/v_c.mkv 2,1\r\nLeft/v_gone.avi 1\r\n",
             "UCF-101/Left/v_a.avi": encode_video(moving_square(30, 64, 48, -2), 25, "avi", "mpeg4"),
             "UCF-101/Right/v_b.mp4": encode_video(moving_square(30, 64, 48, 2), 25, "mp4", "libx264"),
             "UCF-101/Right/v_c.mkv": encode_video(moving_square(30, 48, 64, 3), 24, "matroska", "libvpx-vp9")}
    client = boto3.client("s3")
    client.create_bucket(Bucket="ucf")
    for key, data in files.items():
        client.put_object(Bucket="ucf", Key=key, Body=data)
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    common = ["--video", "--frame-size", "32", "--shard-samples", "2", "--name", "ucf"]
    assert shard.main(["--list", "s3://ucf/trainlist01.txt", "--images-root", "s3://ucf/UCF-101", "--categories",
                       "s3://ucf/classInd.txt", "--out", "s3://ucf/shards", *common]) == 0
    assert shard.main(["--list", str(tmp_path / "trainlist01.txt"), "--images-root", str(tmp_path / "UCF-101"),
                       "--categories", str(tmp_path / "classInd.txt"), "--out", str(tmp_path / "out"), *common]) == 0
    remote = Location.parse("s3://ucf/shards")
    manifest = json.loads(remote.read_bytes("manifest.json"))
    assert (manifest["entries_read"], manifest["written"], manifest["entries_with_several_labels"]) == (4, 3, 1)
    assert manifest["quarantine_reasons"] == {"missing_file": 1}
    assert manifest["per_class_written"] == {"Left": 1, "Right": 2}
    index = json.loads(remote.read_bytes("index.json"))
    assert index["multi_label"] and index["class_names"] == ["Left", "Right"]
    for name in ["index.json", "classes.json", "classes.parquet", *[s["url"] for s in index["shardlist"]]]:
        assert remote.read_bytes(name) == (tmp_path / "out" / name).read_bytes(), name
    labels = {}
    for entry in index["shardlist"]:
        for sample in wds.WebDataset(str(tmp_path / "out" / entry["url"]), shardshuffle=False, empty_check=False):
            labels[sample["__key__"]] = (int(sample["cls"]), sample.get("labels"))
    assert labels == {"Left_v_a": (0, None), "Right_v_b": (1, None), "Right_v_c": (1, b"1,0")}
