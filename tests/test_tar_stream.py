"""The shard reader: every sample with its exact byte range, long names, resume by position."""

import tarfile

import pytest

from common.storage import Location
from pipelines.offline.tar_shard import build_shard
from pipelines.online.tar_stream import ShardReader, fetch_sample


def samples(n, long_every=3):
    out = []
    for i in range(n):
        key = f"k{i:03d}" + ("_" + "x" * 150 if i % long_every == 0 else "")  # > 100 chars: a PAX header
        out.append({"__key__": key, "cls": str(i % 4).encode(), "jpg": bytes([i]) * (100 + 37 * i), "json": b"{}"})
    return out


@pytest.fixture()
def shard(tmp_path):
    built = build_shard(samples(10))
    (tmp_path / "s.tar").write_bytes(built.data)
    return Location.parse(str(tmp_path)), built


def test_reader_returns_every_sample_with_the_offsets_the_sharder_recorded(shard):
    loc, built = shard
    reader = ShardReader(loc, "s.tar")
    got = []
    while (s := reader.next()) is not None:
        got.append(s)
    expected = samples(10)
    assert [s.key for s in got] == [e["__key__"] for e in expected]
    assert all(s.members == {k: v for k, v in e.items() if k != "__key__"} for s, e in zip(got, expected))
    assert [(s.offset, s.size) for s in got] == [(loc_.offset, loc_.size) for loc_ in built.samples]


def test_resume_from_a_saved_position_and_fetch_by_range(shard):
    loc, built = shard
    reader = ShardReader(loc, "s.tar")
    for _ in range(4):
        reader.next()
    again = ShardReader(loc, "s.tar", reader.position)
    assert again.next().key == samples(10)[4]["__key__"]
    third = built.samples[3]
    assert fetch_sample(loc, "s.tar", third.offset, third.size).members["jpg"] == samples(10)[3]["jpg"]


def test_corruption_is_reported_after_the_last_whole_sample(shard, tmp_path):
    loc, built = shard
    data = bytearray(built.data)
    cut = built.samples[6].offset
    data[cut + 10:cut + 20] = b"\xff" * 10  # the 7th sample's first header
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    reader = ShardReader(loc, "bad.tar")
    keys = [reader.next().key for _ in range(6)]
    assert keys == [s["__key__"] for s in samples(10)[:6]]
    with pytest.raises(tarfile.ReadError, match="checksum"):
        reader.next()
    (tmp_path / "short.tar").write_bytes(built.data[: built.samples[2].offset + 700])
    short = ShardReader(loc, "short.tar")
    short.next(), short.next()
    with pytest.raises(EOFError):
        short.next()


def test_shards_are_the_bytes_webdatasets_tar_writer_writes():
    """tar_shard writes with `tarfile` (webdataset imports torch): the same bytes as webdataset.TarWriter,
    long (PAX) and non-ASCII names, empty and several-block members included."""
    import io

    import webdataset as wds

    rows = [*samples(7), {"__key__": "caf\u00e9_\u2028x", "cls": b"1", "labels": b"1,0", "mp4": b"", "json": "{}"}]
    buf = io.BytesIO()
    writer = wds.TarWriter(buf, user="places", group="places", mtime=0, encoder=False)
    for row in rows:
        writer.write({k: v.encode() if isinstance(v, str) else v for k, v in row.items() if k != "__key__"}
                     | {"__key__": row["__key__"]})
    writer.tarstream.close()
    assert build_shard(rows).data == buf.getvalue()
