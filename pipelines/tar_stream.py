"""Read WebDataset samples sequentially from a shard, from any byte position, knowing where each lies.

A `ShardReader` holds one open file (local or s3://) and parses tar headers as it goes; each sample
comes with its absolute byte range, so a stream's position is one number that can be saved and
resumed with a single seek, and a buffered sample can be fetched again with one range read.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from pipelines.storage import Location


@dataclass
class RawSample:
    key: str
    members: dict[str, bytes]  # extension -> bytes
    offset: int  # first byte of its first header
    size: int  # through the end of its last member's padded data


class ShardReader:
    """Sequential samples of one shard, starting at byte `offset` (a sample boundary)."""

    def __init__(self, loc: Location, url: str, offset: int = 0):
        self.loc, self.url = loc, url
        self._file = loc.fs.open(loc.path(url), "rb")
        self._file.seek(offset)
        self._tar = tarfile.open(fileobj=self._file, mode="r|")
        self._base = offset
        self._pending: tarfile.TarInfo | None = None
        self.position = offset

    def next(self) -> RawSample | None:
        """The next sample, or None at the end of the shard.  Raises tarfile/OS errors on corruption."""
        info = self._pending or self._tar.next()
        self._pending = None
        if info is None:
            return None
        key = _key(info.name)
        members, start, end = {}, self._base + info.offset, 0
        while info is not None and _key(info.name) == key:
            if info.isfile():
                members[info.name[len(key) + 1:]] = self._tar.extractfile(info).read()
                end = self._base + info.offset_data + _padded(info.size)
            info = self._tar.next()
        self._pending = info
        self.position = end
        return RawSample(key, members, start, end - start)

    def close(self) -> None:
        self._file.close()


def fetch_sample(loc: Location, url: str, offset: int, size: int) -> RawSample:
    """One sample by its byte range (from a saved stream state or classes.json)."""
    data = loc.read_range(url, offset, size)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {}
        key = None
        for info in tar:
            key = _key(info.name)
            members[info.name[len(key) + 1:]] = tar.extractfile(info).read()
    if key is None:
        raise tarfile.ReadError(f"no sample at {url}:{offset}")
    return RawSample(key, members, offset, size)


def _key(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    return prefix + base.split(".", 1)[0]


def _padded(size: int) -> int:
    return (size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
