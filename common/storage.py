"""Paths that may be local or remote (s3://, gs://, ... any fsspec URI).

Every file the pipelines touch goes through `Location`, so local folders and object stores behave the
same way.  S3 endpoints and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``...), which is how users point boto-based tools at MinIO or moto too.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

GZIP_MAGIC = b"\x1f\x8b"  # the first bytes of a gzip file: a list or settings file still compressed


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it; pickles cleanly into Ray tasks."""

    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def write_atomic_uri(cls, uri: str, data: bytes) -> str:
        """Atomically write one file given by its own path or URI (parent folders made); returns its URI."""
        parent, name = posixpath.split(uri.rstrip("/"))
        folder = cls.parse(parent or ".")
        folder.make_dirs()
        folder.write_atomic(name, data)
        return folder.uri(name)

    @classmethod
    def parse(cls, uri: str) -> "Location":
        if "://" not in uri:
            return cls(LocalFileSystem(), os.path.abspath(uri))
        options = {}
        if uri.startswith(("s3://", "s3a://")):
            # Pin the endpoint into the pickled filesystem, so Ray workers started before the variable
            # was set still reach the same server; and never serve a stale listing across processes.
            options["use_listings_cache"] = False
            if os.environ.get("AWS_ENDPOINT_URL"):
                options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        fs, path = fsspec.core.url_to_fs(uri, **options)
        return cls(fs, path.rstrip("/"))

    def is_within(self, other: "Location") -> bool:
        """Whether this path is `other` or below it, on the same filesystem (links followed locally)."""
        if self.is_local != other.is_local or (not self.is_local and self.fs.protocol != other.fs.protocol):
            return False
        mine, theirs = ((os.path.realpath(self.root), os.path.realpath(other.root)) if self.is_local else
                        (self.root, other.root))
        return mine == theirs or mine.startswith(theirs.rstrip("/") + "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def uri(self, rel: str = "") -> str:
        path = self.path(rel)
        if self.is_local:
            return path
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, (tuple, list)) else self.fs.protocol
        return f"{protocol}://{path}"

    def path(self, rel: str = "") -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def child(self, rel: str) -> "Location":
        return Location(self.fs, self.path(rel))

    # -- reading -------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel))

    def is_file(self, rel: str = "") -> bool:
        return self.fs.isfile(self.path(rel))

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.isdir(self.path(rel))

    def size(self, rel: str = "") -> int:
        return int(self.fs.size(self.path(rel)))

    def read_bytes(self, rel: str = "") -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        return self.fs.cat_file(self.path(rel), start=start, end=start + length)

    def read_text(self, rel: str = "") -> str:
        return self.read_bytes(rel).decode("utf-8")

    def list_dir(self, rel: str = "") -> list[tuple[str, str]]:
        """(name, 'file'|'directory') for the direct children, sorted by name."""
        out = []
        for info in self.fs.ls(self.path(rel), detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            out.append((name, "directory" if info["type"] == "directory" else "file"))
        return sorted(out)

    def walk_files(self, rel: str = "") -> list[str]:
        """Paths (relative to `rel`) of every regular file below `rel`, sorted."""
        base = self.path(rel).rstrip("/")
        found = self.fs.find(base)
        return sorted(posixpath.relpath(p, base) for p in found)

    # -- writing -------------------------------------------------------------------------------
    def make_dirs(self, rel: str = "") -> None:
        if self.is_local:
            os.makedirs(self.path(rel), exist_ok=True)
        # Object stores have no directories; a key's prefix exists once something is written.

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write so that `rel` either holds all of `data` or keeps what it held before.

        Local: temp file in the same folder, fsync, rename.  Object stores: a single PUT of the whole
        object, which becomes visible only once complete.
        """
        if not self.is_local:
            self.fs.pipe_file(self.path(rel), data)
            return
        with self.open_atomic(rel) as f:
            f.write(data)

    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[BinaryIO]:
        """Stream a large file so that it appears under `rel` only once complete.

        Local: temp file + rename.  Object stores: a multipart upload that is completed on success
        and aborted (`discard`) on error, so no partial object is ever visible.
        """
        target = self.path(rel)
        if not self.is_local:
            f = self.fs.open(target, "wb")
            try:
                yield f
            except BaseException:
                if hasattr(f, "discard"):
                    f.discard()
                raise
            f.close()
            return
        folder = posixpath.dirname(target)
        os.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel))

    def remove_tree(self, rel: str) -> None:
        """`rel` and everything below it (an object store: every key under the prefix, in bulk requests)."""
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def remove_temp_files(self, rel: str = "") -> int:
        """Delete leftovers of `write_atomic` from an interrupted run; returns how many."""
        if not self.is_local or not self.is_dir(rel):
            return 0
        count = 0
        for name in os.listdir(self.path(rel)):
            if name.startswith(".") and ".tmp-" in name:
                os.remove(self.path(posixpath.join(rel, name)) if rel else self.path(name))
                count += 1
        return count

    def check_writable(self) -> None:
        """Raise a clear error now rather than after hours of work."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.make_dirs()
            self.write_atomic(probe, b"ok")
            self.remove(probe)
        except Exception as exc:  # any backend error means the same thing to the user
            raise PermissionError(f"output location {self.uri()} is not writable: {exc}") from exc

    def pyarrow_fs(self):
        """The same filesystem for Ray Data readers, which take pyarrow filesystems."""
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))


class LockedError(RuntimeError):
    pass


@contextmanager
def exclusive(loc: Location, rel: str) -> Iterator[None]:
    """Hold the lock file `rel` below a local `loc` while the block runs: a second writer is refused at once
    instead of deleting the first one's files.  A lock whose process is gone (same host, dead pid: a killed
    run) is taken over.  Object stores have no atomic create-if-absent here: no lock there."""
    if not loc.is_local:
        yield
        return
    path = loc.path(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                os.remove(path)  # left by a run that was killed
                continue
            raise LockedError(f"another run (pid {holder.get('pid')} on {holder.get('host')}, since "
                              f"{holder.get('since')}) is writing to {loc.uri()}; wait for it to end, or delete "
                              f"{path} if it is gone") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _lock_holder(path).get("pid") == me["pid"]:
            os.remove(path)


def _lock_holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_out_outside(out: str, folder: str, what: str, then: str) -> None:
    """A ValueError where `out` is `folder` or inside it: no tool writes into what it reads (it would
    overwrite its input, or a rerun would read its own output)."""
    if Location.parse(out).is_within(Location.parse(folder)):
        raise ValueError(f"--out {out} is inside {what} {folder}: {then}")
