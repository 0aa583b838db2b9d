"""Read WebDataset samples sequentially from a shard, from any byte position, knowing where each lies.

A `ShardReader` holds one open file (local or s3://) and parses tar headers as it goes; each sample
comes with its absolute byte range, so a stream's position is one number that can be saved and
resumed with a single seek, and a buffered sample can be fetched again with one range read.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from common.storage import Location


@dataclass
class RawSample:
    key: str
    members: dict[str, bytes]  # extension -> bytes
    offset: int  # first byte of its first header
    size: int  # through the end of its last member's padded data


class ShardReader:
    """Sequential samples of one shard, starting at byte `offset` (a sample boundary).

    Parses tar headers itself (ustar, with PAX `path`/`size` records and GNU long names, checksums
    verified): Python's `tarfile` costs more per member than decoding a small JPEG's worth of time.
    """

    def __init__(self, loc: Location | None, url: str, offset: int = 0, data: bytes | None = None):
        """`data`: the shard's bytes from `offset` on, already read (one sample's range), instead of the file."""
        self.loc, self.url = loc, url
        if data is None:
            self._file = loc.fs.open(loc.path(url), "rb")
            self._file.seek(offset)
        else:
            self._file = io.BytesIO(data)
        self.position = offset  # start of the next unread sample
        self._cursor = offset  # bytes consumed from the file
        self._pending: tuple[str, bytes, int] | None = None  # (name, data, header offset) read ahead
        self._error: Exception | None = None  # corruption met while reading ahead, raised on the next call

    def next(self) -> RawSample | None:
        """The next sample, or None at the end of the shard.  Raises tarfile.ReadError/EOFError on corruption."""
        if self._error is not None:
            raise self._error
        member = self._pending or self._member()
        self._pending = None
        if member is None:
            return None
        name, data, start = member
        key = _key(name)
        members = {}
        while member is not None and _key(member[0]) == key:
            members[member[0][len(key) + 1:]] = member[1]
            end = self._cursor
            try:
                member = self._member()
            except (tarfile.ReadError, EOFError, UnicodeDecodeError, ValueError) as exc:
                self._error, member = exc, None  # this sample is whole: hand it out first
        self._pending = member
        self.position = end
        return RawSample(key, members, start, end - start)

    @property
    def more(self) -> bool:
        """Whether another sample follows the one last handed out (its first member is read ahead)."""
        return self._pending is not None

    def _member(self) -> tuple[str, bytes, int] | None:
        """The next regular file: (name, data, offset of its first header), or None at the archive's end."""
        start, long_name, pax = self._cursor, None, {}
        while True:
            header = self._read(BLOCK, allow_eof=True)
            if not header or header == ZERO_BLOCK:
                return None
            name, size, kind = _parse_header(header, self.url, self._cursor - BLOCK)
            size = int(pax.get("size", size))
            data = self._read(size)
            self._read(_padded(size) - size)
            if kind == b"L":  # GNU long name for the next member
                long_name = data.rstrip(b"\0").decode("utf-8")
            elif kind == b"x":  # PAX extended header for the next member
                pax = _pax_records(data)
            elif kind in (b"0", b"\0", b"7"):
                return long_name or pax.get("path") or name, data, start
            else:  # directories, links, global headers: not sample members
                start, long_name, pax = self._cursor, None, {}

    def _read(self, n: int, allow_eof: bool = False) -> bytes:
        data = self._file.read(n) if n else b""
        if len(data) != n and not (allow_eof and not data):
            raise EOFError(f"{self.url} is cut short at byte {self._cursor + len(data)}")
        self._cursor += len(data)
        return data

    def close(self) -> None:
        self._file.close()


BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)


def _parse_header(block: bytes, url: str, offset: int) -> tuple[str, int, bytes]:
    stored = _number(block[148:156])
    actual = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != actual:
        raise tarfile.ReadError(f"{url}: bad tar header checksum at byte {offset}")
    name = block[:100].split(b"\0", 1)[0].decode("utf-8")
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8")
        if prefix:
            name = f"{prefix}/{name}"
    return name, _number(block[124:136]), block[156:157]


def _number(field: bytes) -> int:
    if field[:1] == b"\x80":  # base-256 (GNU) for sizes over 8 GB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1:i + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8")
        i += length
    return records


def fetch_sample(loc: Location, url: str, offset: int, size: int) -> RawSample:
    """One sample by its byte range (from a saved stream state or classes.parquet): one range read, its
    tar headers parsed by `ShardReader` (Python's `tarfile` costs more than the read).  Raises
    tarfile.ReadError or EOFError on damage."""
    return parse_sample(loc.read_range(url, offset, size), url, offset)


def parse_sample(data: bytes, url: str, offset: int) -> RawSample:
    """The one sample whose tar fragment `data` is, read from byte `offset` of `url`."""
    reader = ShardReader(None, url, offset, data)
    sample = reader.next()
    if sample is None:
        raise tarfile.ReadError(f"no sample at {url}:{offset}")
    if reader.next() is not None:  # also raises the damage met after the sample's last member
        raise tarfile.ReadError(f"more than one sample at {url}:{offset}")
    return RawSample(sample.key, sample.members, offset, len(data))


def _key(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    return prefix + base.split(".", 1)[0]


def _padded(size: int) -> int:
    return (size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
