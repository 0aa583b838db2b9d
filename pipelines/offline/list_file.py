"""List files as bytes: one line splitter and one decoder, for the driver's pre-flight and the Ray tasks.

A line ends at b"\\n" only (a \\r before it is dropped).  Python's `str.splitlines`, and so Ray Data's
`read_text`, also break lines at U+2028, \\x0b, \\x1c... that a file name may hold: the pre-flight then
counted other entries than the workers parsed, and the accounting broke after the outputs were written.
Here both read the same bytes the same way: the pre-flight from the start, the workers in byte ranges
(a line belongs to the range its first byte is in), so an 8M-line list is read in parallel and never
held whole.
"""

from __future__ import annotations

import codecs
from typing import Iterator

from common.storage import GZIP_MAGIC, Location
from pipelines.offline.corpus import CorpusError, is_comment

RANGE_BYTES = 16 << 20  # ~300k Places365 lines per Ray task


def decode_line(raw: bytes) -> str:
    """One line's bytes (its b"\\n" removed) as text.  Bytes that are not UTF-8 become lone surrogates
    (`surrogateescape`) instead of an exception: the pre-flight finds them and says which line."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "surrogateescape")


def _lines(f, start: int, end: int | None) -> Iterator[str]:
    position = start
    if start:
        f.seek(start - 1)
        position += len(f.readline()) - 1  # the rest of the line that began before `start`: the previous range's
    while end is None or position < end:
        raw = f.readline()
        if not raw:
            return
        if position == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        position += len(raw)
        yield decode_line(raw[:-1] if raw.endswith(b"\n") else raw)


def iter_lines(loc: Location) -> Iterator[str]:
    """Every line of the file, in order, streamed."""
    with loc.fs.open(loc.path(), "rb") as f:
        yield from _lines(f, 0, None)


def text_lines(loc: Location) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is neither blank nor a `#` comment, streamed; a CorpusError
    naming the file, the line and the column of the first line that is not text (the pre-flight's check of
    a list or attribute file)."""
    for lineno, line in enumerate(iter_lines(loc), 1):
        if not line.strip() or is_comment(line):
            continue
        problem = text_problem(line)
        if problem:
            raise CorpusError(f"{loc.uri()}:{lineno}: {problem}")
        yield lineno, line


def byte_ranges(loc: Location, range_bytes: int = RANGE_BYTES) -> list[tuple[int, int]]:
    size = loc.size()
    return [(start, min(start + range_bytes, size)) for start in range(0, max(size, 1), range_bytes)]


def lines_in_range(loc: Location, start: int, end: int) -> Iterator[str]:
    """The lines whose first byte lies in [start, end): over `byte_ranges`, every line exactly once."""
    with loc.fs.open(loc.path(), "rb") as f:
        yield from _lines(f, start, end)


def text_problem(line: str) -> str | None:
    """Why a decoded line is not text a list may hold, or None."""
    if "\0" in line:
        return f"not a text list (a NUL byte at column {line.index(chr(0)) + 1})"
    if line.isascii():
        return None
    try:
        line.encode("utf-8")  # fails exactly on the surrogates `decode_line` put for undecodable bytes
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00
        return (f"not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}); re-encode the file as UTF-8, "
                f"e.g. iconv -f latin1 -t utf-8")
    return None


def check_not_compressed(loc: Location, what: str) -> None:
    with loc.fs.open(loc.path(), "rb") as f:
        head = f.read(2)
    if head == GZIP_MAGIC:
        raise CorpusError(f"{what} {loc.uri()} is gzip-compressed: decompress it first (gunzip -k)")


def printable(name: str) -> str:
    """A file name with undecodable bytes as \\xNN, for reports (JSON and Arrow need valid UTF-8)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unlistable_name(path: str) -> str | None:
    """Why a file found in a class folder cannot be carried by a list line (and is quarantined), or None."""
    if text_problem(path):
        return "undecodable_name: the file name is not UTF-8"
    if "\n" in path or "\r" in path:
        return "unlistable_name: the file name holds a line break"
    if path != path.rstrip():
        return "unlistable_name: the file name ends in whitespace"
    return None
