"""`pipelines/shard.py --video` end to end: real video files of the containers and codecs users have,
written by FFmpeg's encoders, and every kind of bad one, through a real local Ray cluster."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from pipelines import shard
from pipelines.demo_video import audio_track
from pipelines.media.video import decode_clip, encode_video
from conftest import write_shards
from test_video_decode import moving_square

pytestmark = pytest.mark.slow  # two sharding runs on a local Ray cluster

# (class, file) -> (container, codec, frames, fps, width, height)
GOOD = {
    ("left", "a.avi"): ("avi", "mpeg4", 40, 30, 96, 72),
    ("left", "b.mp4"): ("mp4", "libx264", 30, 25, 64, 48),
    ("right", "c.mkv"): ("matroska", "libvpx-vp9", 36, 24, 72, 96),  # portrait
    ("right", "d.webm"): ("webm", "libvpx", 25, 25, 80, 60),
}
REJECTS = {  # file -> reason code
    "left/empty.mp4": "zero_length",
    "left/page.mp4": "undecodable",
    "left/short.mp4": "too_short",
    "right/song.mp4": "audio_only",
    "right/subtitles.mkv": "no_video_stream",
    "right/fourcc.avi": "unsupported_codec",
    "right/notes.txt": "undecodable",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for (cls, name), (container, codec, frames, fps, w, h) in GOOD.items():
        (root / cls).mkdir(exist_ok=True)
        clip = moving_square(frames, w, h, -2 if cls == "left" else 2)
        (root / cls / name).write_bytes(encode_video(clip, fps, container, codec))
    avi = encode_video(moving_square(20, 64, 48, 2), 25, "avi", "mpeg4")
    files = {
        "left/empty.mp4": b"",
        "left/page.mp4": b"<html><body>404 Not Found</body></html>\n" * 10,
        "left/short.mp4": encode_video(moving_square(5, 64, 48, 2), 25, "mp4", "libx264"),
        "right/song.mp4": audio_track(),
        "right/subtitles.mkv": b"1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:02,000 --> 00:00:03,000\nbye\n",
        "right/fourcc.avi": avi.replace(b"FMP4", b"ZZZ9"),
        "right/notes.txt": b"filmed on a phone\n",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def sharded(ray_cluster, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("video_shards")
    assert shard.main(["--video", "--image-folder", str(tree), "--out", str(out), "--fps", "25",
                       "--frame-size", "48", "--shard-samples", "2"]) == 0
    return out


def samples_of(out) -> dict[str, dict[str, bytes]]:
    index = json.loads((out / "index.json").read_text())
    samples: dict[str, dict[str, bytes]] = {}
    for entry in index["shardlist"]:
        with tarfile.open(out / entry["url"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_every_video_is_written_or_quarantined_with_its_reason(sharded):
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["entries_read"] == len(GOOD) + len(REJECTS)
    assert manifest["written"] == len(GOOD)
    reasons = {}
    for line in (sharded / "quarantine.jsonl").read_text().splitlines():
        row = json.loads(line)
        reasons[row["source"]] = row["reason"].split(":")[0]
    assert reasons == REJECTS
    assert manifest["per_class_written"] == {"left": 2, "right": 2}


def test_each_video_is_stored_at_the_fixed_rate_and_size(sharded):
    index = json.loads((sharded / "index.json").read_text())
    assert index["video"] == {"fps": 25.0, "size": 48, "resize": "shorter", "codec": "h264"}
    assert index["class_names"] == ["left", "right"] and index["total_samples"] == 4
    samples = samples_of(sharded)
    assert len(samples) == 4
    by_source = {json.loads(s["json"])["source"]: s for s in samples.values()}
    for (cls, name), (_, codec, frames, fps, w, h) in GOOD.items():
        sample = by_source[f"{cls}/{name}"]
        meta = json.loads(sample["json"])
        assert set(sample) == {"cls", "mp4", "json"} and int(sample["cls"]) == ["left", "right"].index(cls)
        assert meta["frames"] == round(frames / fps * 25) and meta["orig_size"] == [w, h]
        assert min(meta["size"]) == 48 and meta["size"][0] * h == pytest.approx(meta["size"][1] * w, rel=0.05)
        clip = decode_clip(sample["mp4"], 0, tuple(range(10)), 25)
        assert clip.shape == (10, meta["size"][1], meta["size"][0], 3)
        # the square moves the way its class says: its centre of brightness drifts left or right
        xs = [np.average(np.arange(clip.shape[2]), weights=f.mean((0, 2))) for f in clip[:4]]
        assert (xs[-1] < xs[0]) == (cls == "left")


def test_rerun_is_byte_identical(sharded, tree, tmp_path):
    again = tmp_path / "again"
    assert shard.main(["--video", "--image-folder", str(tree), "--out", str(again), "--fps", "25",
                       "--frame-size", "48", "--shard-samples", "2"]) == 0
    first = json.loads((sharded / "index.json").read_text())["shardlist"]
    assert json.loads((again / "index.json").read_text())["shardlist"] == first
    for entry in first:
        assert (again / entry["url"]).read_bytes() == (sharded / entry["url"]).read_bytes()


def test_video_settings_are_checked(tree, tmp_path, capsys):
    with pytest.raises(SystemExit):
        shard.main(["--video", "--image-folder", str(tree), "--out", str(tmp_path / "x"), "--frame-resize", "crop"])
    assert shard.main(["--video", "--image-folder", str(tree), "--out", str(tmp_path / "y"), "--fps", "0"]) == 2
    assert "fps > 0" in capsys.readouterr().err


def test_training_checks_network_and_shards_agree(sharded, tmp_path):
    from training.config import ConfigError, load
    from training.preflight import check_training_inputs

    on_videos = ["model.num_classes=2", f"data.train_shards={sharded}", f"data.val_shards={sharded}"]
    with pytest.raises(ConfigError, match="simple_net is an image network and data.train_shards holds videos"):
        check_training_inputs(load(None, on_videos))
    slow = [*on_videos, "model.name=video_slow_fusion", "model.options={input_size: 40, width: 0.25, fc: 64}"]
    with pytest.raises(ConfigError, match=r"'data.size' is 224 but video_slow_fusion is built for 40x40"):
        check_training_inputs(load(None, slow))
    with pytest.raises(ConfigError, match=r"'data.decode': video clips are decoded on CPUs"):
        check_training_inputs(load(None, [*slow, "data.size=40", "data.decode=device"]))
    check_training_inputs(load(None, [*slow, "data.size=40"]))
    check_training_inputs(load(None, [*slow, "data.size=40", "data.ingest=ray_data"]))
    check_training_inputs(load(None, [*slow, "data.size=40", "data.clip_region=48", "data.clip_views=four"]))
    with pytest.raises(ConfigError, match=r"'data.clip_region' \(32\) must be at least data.size \(40\)"):
        load(None, [*slow, "data.size=40", "data.clip_region=32"])
    with pytest.raises(ConfigError, match=r"'data.clip_views' must be one of centre, four, got 'ten'"):
        load(None, [*slow, "data.size=40", "data.clip_views=ten"])
    images = tmp_path / "images"
    write_shards(images, [4, 4], shard_samples=4)
    on_images = ["model.num_classes=2", f"data.train_shards={images}", f"data.val_shards={images}"]
    check_training_inputs(load(None, on_images))
    for setting in ("data.clip_region=256", "data.clip_views=four"):
        with pytest.raises(ConfigError, match=f"'{setting.split('=')[0]}' shapes video clips and simple_net is an "
                                              f"image network"):
            check_training_inputs(load(None, [*on_images, setting]))


def test_a_list_of_videos_with_a_missing_file(ray_cluster, tree, tmp_path):
    (tmp_path / "classes.txt").write_text("left\nright\n")
    (tmp_path / "list.txt").write_text("left/b.mp4 0\nright/d.webm 1\nright/gone.mp4 1\n")
    out = tmp_path / "out"
    assert shard.main(["--video", "--list", str(tmp_path / "list.txt"), "--images-root", str(tree),
                       "--categories", str(tmp_path / "classes.txt"), "--out", str(out), "--frame-size", "48"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["entries_read"], manifest["written"]) == (3, 2)
    assert manifest["quarantine_reasons"] == {"missing_file": 1}


def test_sports1m_partition_lines_name_their_downloads_by_youtube_id(ray_cluster, tree, tmp_path):
    """Sports-1M as published: `URL labels` lines (0-based ids into labels.txt, several for some videos);
    the downloads named by video id, in whatever container each came; a video gone from YouTube is
    accounted for as missing_file."""
    downloads = tmp_path / "videos"
    downloads.mkdir()
    (downloads / "aaaaaaaaaaa.mp4").write_bytes((tree / "left" / "b.mp4").read_bytes())
    (downloads / "bbbbbbbbb-_.webm").write_bytes((tree / "right" / "d.webm").read_bytes())
    (tmp_path / "labels.txt").write_text("left\nright\n")
    (tmp_path / "train_partition.txt").write_text(
        "https://www.youtube.com/watch?v=aaaaaaaaaaa 0\n"
        "https://www.youtube.com/watch?v=bbbbbbbbb-_ 1,0\n"
        "https://www.youtube.com/watch?v=ccccccccccc 1\n")
    out = tmp_path / "out"
    assert shard.main(["--video", "--list", str(tmp_path / "train_partition.txt"), "--images-root", str(downloads),
                       "--categories", str(tmp_path / "labels.txt"), "--out", str(out), "--frame-size", "48"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["entries_read"], manifest["written"]) == (3, 2)
    assert manifest["quarantine_reasons"] == {"missing_file": 1}
    assert manifest["entries_with_several_labels"] == 1
    samples = {}
    for entry in json.loads((out / "index.json").read_text())["shardlist"]:
        with tarfile.open(out / entry["url"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert sorted(samples) == ["aaaaaaaaaaa", "bbbbbbbbb-_"]  # keyed by video id
    assert samples["bbbbbbbbb-_"]["cls"] == b"1" and samples["bbbbbbbbb-_"]["labels"] == b"1,0"
    assert json.loads(samples["aaaaaaaaaaa"]["json"])["source"] == "https://www.youtube.com/watch?v=aaaaaaaaaaa"
    report = (out / "quarantine.jsonl").read_text()
    assert "ccccccccccc" in report and "watch?v=ccccccccccc" in report
