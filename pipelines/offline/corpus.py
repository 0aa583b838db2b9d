"""What a raw corpus says: its classes and its entries (image path + label), as published.

Formats accepted (REFERENCE.md):
- categories: ``/a/airfield 0`` per line (Places365), or one bare class name per line (id = line number);
- lists: ``/a/art_school/00002916.jpg 20`` (with or without the leading ``/``),
  ``Places365_val_00020696.jpg 156`` (bare names), or file names only (the unlabeled test list);
- a class-per-folder tree (ImageFolder layout): classes are the sorted subfolder names.

Parsing is per line and pure, so the driver's streaming pre-flight and the Ray Data workers agree on
every entry's fate.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator

from pipelines.hashing import stable_hash
from pipelines.storage import Location

UNLABELED = -1
AMBIGUOUS = -3  # Categories.lookup: a short name several classes end with
GZIP_MAGIC = b"\x1f\x8b"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class CorpusError(ValueError):
    """A bad argument or input file, found before any work starts."""


@dataclass(frozen=True)
class Categories:
    names: tuple[str, ...]
    ids_by_name: dict[str, int] = field(default_factory=dict, compare=False)

    @classmethod
    def from_names(cls, names: list[str]) -> "Categories":
        """Each class is found by its full name (leading and trailing `/` ignored: `c/church/indoor`) and by
        every shorter tail of it (`church/indoor`, `indoor`) that no other class shares."""
        ids: dict[str, int] = {}
        shared: set[str] = set()
        for i, name in enumerate(names):
            parts = name.strip("/").split("/")
            for start in range(1, len(parts)):
                tail = "/".join(parts[start:])
                if tail in ids and ids[tail] != i:
                    shared.add(tail)
                ids.setdefault(tail, i)
        for i, name in enumerate(names):  # full names win over any other class's tail
            ids[name.strip("/")] = i
            shared.discard(name.strip("/"))
        for tail in shared:
            ids[tail] = AMBIGUOUS
        return cls(tuple(names), ids)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, token: str) -> int | None:
        """The class id a list's label token means, None if it names no class, AMBIGUOUS if it is the
        tail of several classes' names (`indoor` for `/b/bazaar/indoor` and `/c/church/indoor`)."""
        if re.fullmatch(r"[+-]?\d+", token):
            return int(token)
        return self.ids_by_name.get(token.strip("/"))

    def sharing(self, token: str) -> list[str]:
        tail = "/" + token.strip("/")
        return [n for n in self.names if ("/" + n.strip("/")).endswith(tail)]


def read_categories(loc: Location, rel: str = "") -> Categories:
    """Parse ``name id`` lines (ids must be 0..K-1, each once) or bare names."""
    where = loc.uri(rel)
    if not loc.is_file(rel):
        raise CorpusError(f"categories file not found: {where}")
    data = loc.read_bytes(rel)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data[:exc.start].count(b"\n") + 1
        fix = "it is gzip-compressed: decompress it first" if data[:2] == GZIP_MAGIC else "re-encode it as UTF-8"
        raise CorpusError(f"{where}:{lineno}: not UTF-8 text (byte 0x{data[exc.start]:02x}); {fix}") from None
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise CorpusError(f"categories file is empty: {where}")
    pairs = [ln.rsplit(None, 1) for ln in lines]
    if all(len(p) == 2 and p[1].isdigit() for p in pairs):
        by_id: dict[int, str] = {}
        for lineno, (name, idx) in enumerate(pairs, 1):
            if int(idx) in by_id:
                raise CorpusError(f"{where}:{lineno}: class id {idx} is given twice")
            by_id[int(idx)] = name
        if sorted(by_id) != list(range(len(by_id))):
            raise CorpusError(f"{where}: class ids must be 0..{len(by_id) - 1} with no gaps")
        names = [by_id[i] for i in range(len(by_id))]
    else:
        names = lines
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CorpusError(f"{where}: class name {dup!r} appears twice")
    return Categories.from_names(names)


@dataclass(frozen=True)
class Entry:
    """One list line after parsing. `problem` set means the entry goes to quarantine."""

    source: str  # the path exactly as listed
    label: int  # class id, UNLABELED, or -2 when unusable
    label_token: str | None  # the label as written, for the quarantine report
    problem: str = ""


def parse_line(line: str, categories: Categories, labeled: bool) -> Entry | None:
    """Parse one list line; None for blank lines (they are not entries)."""
    text = line.strip()
    if not text:
        return None
    if not labeled:
        return Entry(source=text, label=UNLABELED, label_token=None)
    parts = text.rsplit(None, 1)
    if len(parts) == 1:
        return Entry(source=text, label=-2, label_token=None, problem="missing_label: line has no label")
    source, token = parts
    label = categories.lookup(token)
    if label is None:
        # Callers decide: the pre-flight turns unknown class names into a CorpusError.
        return Entry(source, -2, token, problem=f"unknown_class: {token!r} is not in the categories")
    if label == AMBIGUOUS:
        return Entry(source, -2, token, problem=f"unknown_class: {token!r} is ambiguous: it could be any of "
                                                 f"{', '.join(categories.sharing(token))}; give the full name")
    if not 0 <= label < len(categories):
        return Entry(source, -2, token, problem=f"label_out_of_range: {label} not in [0, {len(categories)})")
    return Entry(source, label, token)


def detect_labeled(first_line: str) -> bool:
    """A list is labeled if its first entry ends in a label token (test lists have names only)."""
    parts = first_line.strip().rsplit(None, 1)
    return len(parts) == 2


def relative_image_path(source: str) -> str | None:
    """Path below the images root, or None if the listed path escapes it."""
    rel = posixpath.normpath(source.lstrip("/"))
    if rel in ("", ".") or rel.startswith("../") or rel == "..":
        return None
    return rel


def sample_key(source: str) -> str:
    """WebDataset key: the listed path without extension, flattened, no dots (e.g. a_airfield_00001)."""
    rel = relative_image_path(source.strip()) or source.strip().lstrip("/")  # c//canyon/x.jpg is c/canyon/x.jpg
    stem, _ = posixpath.splitext(rel)
    key = _KEY_UNSAFE.sub("_", stem.replace("/", "_")).strip("_")
    return key or "sample_" + stable_hash(source).to_bytes(8, "big").hex()


def image_folder_classes(root: Location) -> list[str]:
    """Class names of a class-per-folder tree: its non-hidden subfolders, sorted."""
    if not root.is_dir():
        raise CorpusError(f"image folder not found: {root.uri()}")
    names = [n for n, kind in root.list_dir() if kind == "directory" and not n.startswith(".")]
    if not names:
        raise CorpusError(f"image folder {root.uri()} has no class subfolders")
    for name in names:  # a class name goes into index.json and every report: it must be text
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise CorpusError(f"class folder {root.uri(shown)}: its name is not UTF-8; rename it") from None
    return names


def image_folder_files(root: Location, classes: list[str]) -> Iterator[tuple[str, int]]:
    """(path below the root, class id) for every non-hidden file of each class folder, one class at a time.

    Every file counts as an input, whatever its extension: a `.txt` among the images is reported in the
    quarantine, not silently skipped.
    """
    for idx, name in enumerate(classes):
        for rel in root.walk_files(name):
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            yield f"{name}/{rel}", idx
