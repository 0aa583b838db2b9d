"""What a sharded dataset holds, from its small `index.json` alone, and bounded access to its shards.

`Catalog` lists the shards (url, sample count, class).  `ReaderPool` keeps at most `max_open` shard
files open for sequential reading; a `Cursor` remembers its byte position, so a stream whose file was
closed reopens it with one seek.  `RangeReader` fetches byte ranges (one sample or a few) through at
most `max_open` open files, or one ranged GET each on object stores.  None of them loads the class
index (`classes.parquet`, every sample's byte ranges).
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections import OrderedDict
from dataclasses import asdict, dataclass

from common.storage import Location
from pipelines.online.tar_stream import RawSample, ShardReader

log = logging.getLogger(__name__)
READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class Shard:
    url: str
    nsamples: int
    cls: int
    filesize: int | None = None


class Catalog:
    def __init__(self, loc: Location, shards: list[Shard], num_classes: int, name: str,
                 class_names: list[str] | None = None, attribute_names: list[str] | None = None,
                 video: dict | None = None, multi_label: bool = False):
        self.loc, self.shards, self.num_classes, self.name = loc, shards, num_classes, name
        self.class_names = class_names  # in label order; None in an index written before they were kept
        self.attribute_names = attribute_names or []  # the order of each sample's `attr` bits
        self.video = video  # video shards: their stored frame rate and size; None for images
        self.multi_label = multi_label  # samples may carry several classes (a `labels` member)
        self.by_url = {s.url: s for s in shards}
        self.by_class: dict[int, list[Shard]] = {}
        for s in shards:
            self.by_class.setdefault(s.cls, []).append(s)
        self.total = sum(s.nsamples for s in shards)

    @classmethod
    def load(cls, uri: str) -> "Catalog":
        loc = Location.parse(uri)
        if not loc.is_file("index.json"):
            raise FileNotFoundError(f"no index.json in {loc.uri()}: is it a directory written by pipelines/shard.py?")
        where = loc.uri("index.json")
        try:
            index = json.loads(loc.read_bytes("index.json"))
        except ValueError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None
        if not isinstance(index, dict) or index.get("__kind__") != "wids-shard-index-v1":
            raise ValueError(f"{where}: not a wids-shard-index-v1 file")
        try:
            shards = [Shard(s["url"], int(s["nsamples"]), int(s.get("class", -1)),
                            int(s["filesize"]) if s.get("filesize") is not None else None)
                      for s in index["shardlist"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: a shardlist entry without a valid url/nsamples ({exc!r})") from None
        for s in shards:  # urls are relative to the shard folder, and stay in it
            if "://" in s.url or s.url.startswith("/") or ".." in s.url.split("/"):
                raise ValueError(f"{where}: shard url {s.url!r} leaves the shard folder")
        if not shards:
            raise ValueError(f"{loc.uri('index.json')} lists no shards")
        num_classes = int(index.get("num_classes", max(s.cls for s in shards) + 1))
        return cls(loc, shards, num_classes, index.get("name", ""), index.get("class_names"),
                   index.get("attribute_names"), index.get("video"), bool(index.get("multi_label")))


    def unavailable_shards(self) -> list[str]:
        """'url (why)' for every listed shard that is missing or not of its listed size: one listing per
        folder, so it is cheap on S3 too."""
        by_folder: dict[str, list[Shard]] = {}
        for shard in self.shards:
            by_folder.setdefault(posixpath.dirname(shard.url), []).append(shard)
        problems = []
        for folder, shards in sorted(by_folder.items()):
            try:
                sizes = {posixpath.basename(info["name"].rstrip("/")): info.get("size")
                         for info in self.loc.fs.ls(self.loc.path(folder), detail=True)}
            except FileNotFoundError:
                sizes = {}
            for shard in shards:
                size = sizes.get(posixpath.basename(shard.url))
                if size is None:
                    problems.append(f"{shard.url} (missing)")
                elif shard.filesize is not None and size != shard.filesize:
                    problems.append(f"{shard.url} ({size} bytes, index.json says {shard.filesize})")
        return problems

    def check_shards(self) -> None:
        """ValueError naming the index and the first unavailable shards, if any."""
        problems = self.unavailable_shards()
        if problems:
            raise ValueError(f"{len(problems)} of the {len(self.shards)} shards that {self.loc.uri('index.json')} "
                             f"lists are missing or of another size: {', '.join(problems[:3])}"
                             f"{' ...' if len(problems) > 3 else ''}")


def first_different_class(names: list[str] | None, other: list[str] | None) -> int | None:
    """The first label whose class name differs between two class lists of the same length, or None when
    they agree or either is unknown (an index written before names were kept)."""
    if not names or not other:
        return None
    return next((i for i, (a, b) in enumerate(zip(names, other)) if a != b), None)


@dataclass
class Cursor:
    """Where a stream is in one shard: next sample `index` (< `end`) at byte `pos` (None: not yet known)."""

    url: str
    index: int
    end: int
    pos: int | None = 0

    @property
    def done(self) -> bool:
        return self.index >= self.end

    def to_json(self) -> dict:
        return asdict(self)


class ReaderPool:
    """Open shard files, least recently used closed first; counts what had to be skipped."""

    def __init__(self, loc: Location, max_open: int, listed: dict[str, Shard] | None = None):
        self.loc, self.max_open = loc, max(1, max_open)
        self.listed = listed or {}  # url -> Shard: a shard that holds more samples than listed is reported
        self._open: OrderedDict[int, ShardReader] = OrderedDict()  # keyed by id(cursor)
        self.skipped = 0
        self._reported: set[str] = set()

    @property
    def open_files(self) -> int:
        return len(self._open)

    def read(self, cursor: Cursor) -> RawSample | None:
        """The cursor's next sample (advancing it), or None when its shard is done or cannot be read."""
        if cursor.done:
            return None
        try:
            reader = self._reader(cursor)
            sample = reader.next()
            if sample is None:
                raise EOFError(f"{cursor.url} ended at sample {cursor.index} of {cursor.end}")
        except READ_ERRORS as exc:
            self._give_up(cursor, exc)
            return None
        cursor.index += 1
        cursor.pos = reader.position
        shard = self.listed.get(cursor.url)
        if cursor.done and reader.more and shard is not None and cursor.end == shard.nsamples:
            self._count_unlisted(reader, shard)
        return sample

    def _count_unlisted(self, reader: ShardReader, shard: Shard) -> None:
        """Samples past the count index.json gives (a stale index) are never drawn: counted as skipped."""
        extra = 0
        try:
            while reader.next() is not None:
                extra += 1
        except READ_ERRORS:
            pass
        self.skipped += extra
        if shard.url not in self._reported:
            self._reported.add(shard.url)
            log.warning("shard %s holds %d more samples than the %d index.json lists; they are skipped: rebuild the "
                        "index (pipelines/shard.py)", self.loc.uri(shard.url), extra, shard.nsamples)

    def _reader(self, cursor: Cursor) -> ShardReader:
        key = id(cursor)
        reader = self._open.get(key)
        if reader is not None and reader.url == cursor.url and reader.position == cursor.pos:
            self._open.move_to_end(key)
            return reader
        if reader is not None:
            reader.close()
            del self._open[key]
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)[1].close()
        if cursor.pos is None:  # a segment that starts mid-shard: read from the top, drop what precedes
            reader = ShardReader(self.loc, cursor.url, 0)
            for _ in range(cursor.index):
                if reader.next() is None:
                    raise EOFError(f"{cursor.url} has fewer than {cursor.index} samples")
            cursor.pos = reader.position
        else:
            reader = ShardReader(self.loc, cursor.url, cursor.pos)
        self._open[key] = reader
        return reader

    def _give_up(self, cursor: Cursor, exc: Exception) -> None:
        lost = cursor.end - cursor.index
        self.skipped += lost
        if cursor.url not in self._reported:  # once per shard, not once per sample
            self._reported.add(cursor.url)
            log.warning("skipping the rest of shard %s (%d samples): %s: %s", self.loc.uri(cursor.url), lost,
                        type(exc).__name__, exc)
        cursor.index = cursor.end

    def release(self, cursor: Cursor) -> None:
        reader = self._open.pop(id(cursor), None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        for reader in self._open.values():
            reader.close()
        self._open.clear()


class RangeReader:
    """Byte ranges of shards.  Local shards: through up to `max_open` open files, least recently used
    closed first (an open and a close per read would cost as much as decoding the sample); object
    stores: one ranged GET each, exactly as asked (a file object there would read ahead megabytes)."""

    def __init__(self, loc: Location, max_open: int = 64):
        self.loc, self.max_open = loc, max(1, max_open)
        self._files: OrderedDict = OrderedDict()  # url -> open local file

    @property
    def open_files(self) -> int:
        return len(self._files)

    def read(self, url: str, offset: int, size: int) -> bytes:
        if not self.loc.is_local:
            return self.loc.read_range(url, offset, size)
        f = self._files.pop(url, None)
        if f is None:
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
            f = open(self.loc.path(url), "rb")
        self._files[url] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise EOFError(f"{url} ends before byte {offset + size}")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
