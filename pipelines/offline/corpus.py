"""What a raw corpus says: its classes and its entries (image path + label), as published.

Formats accepted (REFERENCE.md):
- categories: ``/a/airfield 0`` per line (Places365), ``1 ApplyEyeMakeup`` (UCF-101's classInd.txt:
  the id first, counted from 1), or one bare class name per line (id = line number);
- lists: ``/a/art_school/00002916.jpg 20`` (with or without the leading ``/``),
  ``Places365_val_00020696.jpg 156`` (bare names), ``ApplyEyeMakeup/v_x.avi 1`` (UCF-101's trainlist:
  labels counted as its classInd.txt counts them), ``VIDEO 208,209`` (several labels, Sports-1M's
  multi-label lists; VIDEO may be the partition files' YouTube URL, `https://www.youtube.com/watch?v=ID`,
  which names the downloaded ``ID.mp4`` (or .webm, .mkv, ...) in the images root), or file names
  only: the unlabeled test list, or, when every path sits in a class's folder, a list whose labels
  are those folders (UCF-101's testlist);
- a class-per-folder tree (ImageFolder layout): classes are the sorted subfolder names.

Lines starting with `#` are comments in every categories, list and attribute file; a categories file's
lines all have one shape, and a list's labels are where its first entry has them (a header line is refused
with its number).

Parsing is per line and pure, so the driver's streaming pre-flight and the Ray Data workers agree on
every entry's fate.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator

from common.hashing import stable_hash
from common.storage import GZIP_MAGIC, Location

UNLABELED = -1
AMBIGUOUS = -3  # Categories.lookup: a short name several classes end with
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Sports-1M's partition files list videos by URL; downloaders (youtube-dl, yt-dlp -o '%(id)s.%(ext)s')
# name the files by the video's 11-character id, in whichever container YouTube served.
_YOUTUBE = re.compile(r"https?://(?:(?:www\.|m\.)?youtube\.com/watch\?(?:\S*&)?v=|youtu\.be/)([A-Za-z0-9_-]{11})\S*")
DOWNLOAD_EXTENSIONS = ("mp4", "webm", "mkv", "flv", "3gp", "avi")
ANY_DOWNLOAD = ".*"  # a path's suffix: the first of ID.{DOWNLOAD_EXTENSIONS} that exists


class CorpusError(ValueError):
    """A bad argument or input file, found before any work starts."""


# Where a list's labels come from (`parse_line`)
LISTED = "listed"  # the last token of each line: one label, or several joined by commas
FOLDER = "folder"  # the folder each listed path sits in (UCF-101's testlist)
NONE = "none"  # nowhere: an unlabeled test list


@dataclass(frozen=True)
class Categories:
    names: tuple[str, ...]
    ids_by_name: dict[str, int] = field(default_factory=dict, compare=False)
    first_id: int = 0  # what a list's numeric labels count from: 0 (Places365) or 1 (UCF-101)

    @classmethod
    def from_names(cls, names: list[str], first_id: int = 0) -> "Categories":
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
        return cls(tuple(names), ids, first_id)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, token: str) -> int | None:
        """The class id a list's label token means, None if it names no class, AMBIGUOUS if it is the
        tail of several classes' names (`indoor` for `/b/bazaar/indoor` and `/c/church/indoor`)."""
        if re.fullmatch(r"[+-]?[0-9]+", token):
            return int(token) - self.first_id
        return self.ids_by_name.get(token.strip("/"))

    def sharing(self, token: str) -> list[str]:
        tail = "/" + token.strip("/")
        return [n for n in self.names if ("/" + n.strip("/")).endswith(tail)]


def read_categories(loc: Location, rel: str = "") -> Categories:
    """Parse ``name id`` or ``id name`` lines (ids 0..K-1 or 1..K, each once) or bare names."""
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
    numbered = [(n, ln) for n, ln in enumerate((ln.strip() for ln in text.split("\n")), 1)
                if ln and not is_comment(ln)]
    if not numbered:
        raise CorpusError(f"categories file is empty: {where}")
    shapes = [_category_shape(ln) for _, ln in numbered]
    for (lineno, line), shape in zip(numbered, shapes):  # one shape for the whole file, or labels shift
        if shape != shapes[0]:
            raise CorpusError(f"{where}:{lineno}: {line!r} is {CATEGORY_SHAPES[shape]} but line {numbered[0][0]} "
                              f"{numbered[0][1]!r} is {CATEGORY_SHAPES[shapes[0]]}: every line must be alike "
                              f"(a header line? remove it or start it with '#')")
    lines = [ln for _, ln in numbered]
    first_id = 0
    if shapes[0] == "name id":
        names, first_id = _numbered([ln.rsplit(None, 1) for ln in lines], [n for n, _ in numbered], where)
    elif shapes[0] == "id name":
        names, first_id = _numbered([ln.split(None, 1)[::-1] for ln in lines], [n for n, _ in numbered], where)
    else:
        names = lines
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CorpusError(f"{where}: class name {dup!r} appears twice")
    return Categories.from_names(names, first_id)


CATEGORY_SHAPES = {"name id": "of the form 'name id'", "id name": "of the form 'id name'", "name": "a bare class name"}
_ID = re.compile(r"[0-9]+")  # ASCII digits: str.isdigit() also takes '¹', which int() refuses


def is_comment(line: str) -> bool:
    """A `#` line: skipped by every reader of categories, list and attribute files."""
    return line.lstrip().startswith("#")


def _category_shape(line: str) -> str:
    """Which documented form a categories line has: 'name id', 'id name' or 'name'."""
    name_id, id_name = line.rsplit(None, 1), line.split(None, 1)
    if len(name_id) == 2 and _ID.fullmatch(name_id[1]):
        return "name id"
    if len(id_name) == 2 and _ID.fullmatch(id_name[0]) and not _ID.fullmatch(id_name[1]):
        return "id name"
    return "name"


def _numbered(pairs: list[list[str]], linenos: list[int], where: str) -> tuple[list[str], int]:
    """(names in id order, the first id) of (name, id) pairs numbered 0..K-1 or 1..K."""
    by_id: dict[int, str] = {}
    for lineno, (name, idx) in zip(linenos, pairs):
        if int(idx) in by_id:
            raise CorpusError(f"{where}:{lineno}: class id {idx} is given twice")
        by_id[int(idx)] = name
    first = min(by_id)
    if first not in (0, 1) or sorted(by_id) != list(range(first, first + len(by_id))):
        raise CorpusError(f"{where}: class ids must be 0..{len(by_id) - 1} or 1..{len(by_id)} with no gaps")
    return [by_id[i] for i in range(first, first + len(by_id))], first


@dataclass(frozen=True)
class Entry:
    """One list line after parsing. `problem` set means the entry goes to quarantine."""

    source: str  # the path exactly as listed
    label: int  # class id (the first, with several), UNLABELED, or -2 when unusable
    label_token: str | None  # the label as written, for the quarantine report
    problem: str = ""
    labels: tuple[int, ...] = ()  # every class id, in list order, when the line gives several


def parse_line(line: str, categories: Categories, labels: str) -> Entry | None:
    """Parse one list line (`labels`: LISTED, FOLDER or NONE); None for blank lines (not entries)."""
    text = line.strip()
    if not text or is_comment(text):
        return None
    if labels == NONE:
        return Entry(source=text, label=UNLABELED, label_token=None)
    if labels == FOLDER:
        source, token = text, class_folder(text)
        if not token:
            return Entry(source, -2, None, problem="missing_label: the path is in no class folder")
    else:
        parts = text.rsplit(None, 1)
        if len(parts) == 1:
            return Entry(source=text, label=-2, label_token=None, problem="missing_label: line has no label")
        source, token = parts
    if labels == LISTED and categories.lookup(token) is None and "," in token:  # several labels (a class name may hold a comma)
        ids = []
        for part in token.split(","):
            label, problem = _label(part, categories)
            if problem:
                return Entry(source, -2, token, problem=problem)
            if label not in ids:
                ids.append(label)
        return Entry(source, ids[0], token, labels=tuple(ids) if len(ids) > 1 else ())
    label, problem = _label(token, categories)
    if problem and labels == FOLDER and problem.startswith("unknown_class"):
        problem = f"unknown_class: folder {token!r} of {source!r} names no class of the categories"
    return Entry(source, -2 if problem else label, token, problem=problem)


def _label(token: str, categories: Categories) -> tuple[int, str]:
    """(class id, "") of one label token, or (-2, the problem)."""
    label = categories.lookup(token)
    if label is None:
        # Callers decide: the pre-flight turns unknown class names into a CorpusError.
        return -2, f"unknown_class: {token!r} is not in the categories"
    if label == AMBIGUOUS:
        return -2, (f"unknown_class: {token!r} is ambiguous: it could be any of "
                    f"{', '.join(categories.sharing(token))}; give the full name")
    if not 0 <= label < len(categories):
        first = categories.first_id
        return -2, f"label_out_of_range: {token} not in [{first}, {first + len(categories)})"
    return label, ""


def class_folder(source: str) -> str:
    """The folder a listed path sits in (``ApplyEyeMakeup`` of ``ApplyEyeMakeup/v_x.avi``), or ""."""
    return posixpath.dirname(posixpath.normpath(source.strip().strip("/")))


def label_source(first_line: str, categories: Categories | None) -> str:
    """Where a list's labels are, from its first entry: a label token (LISTED); else the class folder
    its path sits in (FOLDER), when that folder names a class; else nowhere (NONE)."""
    if len(first_line.strip().rsplit(None, 1)) == 2:
        return LISTED
    folder = class_folder(first_line)
    label = categories.lookup(folder) if categories is not None and folder else None
    if label is not None and 0 <= label < len(categories):
        return FOLDER
    return NONE


def looks_labeled(line: str, categories: Categories | None) -> bool:
    """Whether a line ends in what a labeled list's lines end in: class ids, or a class's name.  In a list
    read as label-less, such a line means its first line was a header (`path,label`)."""
    parts = line.strip().rsplit(None, 1)
    if len(parts) < 2:
        return False
    token = parts[1]
    return bool(re.fullmatch(r"[0-9]+(,[0-9]+)*", token)) or (
        categories is not None and token.strip("/") in categories.ids_by_name)


def encode_labels(labels: tuple[int, ...]) -> bytes:
    """A sample's `labels` member: every class id, first the one its shard is for (``b"3,7"``)."""
    return ",".join(map(str, labels)).encode()


def decode_labels(member: bytes | None, cls: int) -> list[int]:
    """A sample's class ids: its `labels` member, or its one class `cls` without one."""
    if not member:
        return [cls]
    return [int(x) for x in member.decode().split(",")]


def youtube_id(source: str) -> str | None:
    """The video id of a YouTube URL (a Sports-1M partition line's), or None."""
    match = _YOUTUBE.fullmatch(source.strip())
    return match.group(1) if match else None


def relative_image_path(source: str) -> str | None:
    """Path below the images root, or None if the listed path escapes it; a YouTube URL's is its
    downloaded file, `ID` + ANY_DOWNLOAD."""
    video_id = youtube_id(source)
    if video_id:
        return video_id + ANY_DOWNLOAD
    rel = posixpath.normpath(source.lstrip("/"))
    if rel in ("", ".") or rel.startswith("../") or rel == "..":
        return None
    return rel


def sample_key(source: str) -> str:
    """WebDataset key: the listed path without extension, flattened, no dots (e.g. a_airfield_00001); a
    YouTube URL's: its video id."""
    video_id = youtube_id(source)
    if video_id:
        return video_id
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
