"""One sharding run: raw corpus -> WebDataset tar shards + shard index + class-indexed lists, nothing
lost.  `ShardConfig` holds its settings (a YAML recipe gives them too, with the same keys as the flags); `run` checks
every input before any image is read (`preflight`), then writes the shards with Ray Data and returns the
run's accounting; `run_and_report` is the console's one line and exit status, as `pipelines/shard.py`
prints them.  Every input line ends either in a shard or in OUT/quarantine.jsonl with its reason, and
rerunning with the same settings reuses the shards already written (verified by checksum)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields

from common import cluster_shape
from common.cluster_shape import ClusterNotRunning, ClusterShape, RequestDoesNotFit
from common.console import report_failure, start_ray
from common.shared_paths import SharedPathError, check_local_paths
from common.storage import Location, LockedError, exclusive
from pipelines.media.images import ImageSettings
from pipelines.media.video import VideoSettings
from pipelines.offline import list_file, shard_index
from pipelines.offline.attributes import AttributeFile, read_attribute_file
from pipelines.offline.corpus import (LISTED, UNLABELED, Categories, CorpusError, image_folder_classes,
                                      image_folder_files, label_source, looks_labeled, parse_line,
                                      read_categories)
from pipelines.offline.shard_tasks import (MEMBERS_DIR, STATE_DIR, ShardPlan, collect_group,
                                           parse_attribute_ranges, parse_ranges, resolve_duplicates, write_group,
                                           write_rejects)

LOCK_FILE = "lock"  # in OUT/.state while a run writes there
IMAGE_FOLDER_LIST = "image_folder_list.txt"  # in OUT/.state: an --image-folder tree as a list
NAME_REJECTS = "rejects-names.jsonl"  # in OUT/.state: its files whose names a list cannot carry
TASK = {"CPU": 1}  # what each of the pipeline's tasks reserves
BUCKET_ROWS = 200_000  # list entries per duplicate-detection bucket: its reduce task holds them all
GROUP_ROWS = 50_000  # list entries per shard-grouping partition: what bounds a worker's memory there
INPUT_PATHS = ("list", "images_root", "image_folder", "categories", "attributes")  # relative ones: inside --root


@dataclass(frozen=True)
class ShardConfig:
    out: str
    list: str | None = None
    images_root: str | None = None
    categories: str | None = None
    image_folder: str | None = None
    image_size: int = 256
    resize: str = "square"
    shard_samples: int = 1000
    quality: int = 90
    seed: int = 0
    max_pixels: int = 100_000_000
    name: str | None = None
    attributes: str | None = None  # CSV or JSON lines of per-image attributes (pipelines/offline/attributes.py)
    attribute_threshold: float = 0.5  # a vote fraction at least this is a positive label
    keep_without_attributes: bool = False  # an image without an attribute row: kept without `attr`
    video: bool = False  # the inputs are videos (pipelines/media/video.py): re-encoded H.264 at a fixed rate
    fps: float = 25.0
    frame_size: int = 178  # the shorter side (frame_resize: shorter) or both sides (square)
    frame_resize: str = "shorter"
    min_frames: int = 16  # fewer frames at fps: quarantined as too_short
    max_frames: int = 0  # keep at most this many frames from a video's start (0: all)
    shared_filesystem: bool = False  # local paths are mounted on every node of the cluster (verified)

    def __post_init__(self):  # a recipe file's values arrive untyped
        for f in fields(self):
            value, flag = getattr(self, f.name), f"--{f.name.replace('_', '-')}"
            if value is None and "None" in f.type:
                continue
            wanted, what = {"int": (int, "a whole number"), "float": ((int, float), "a number"),
                            "bool": (bool, "true or false")}.get(f.type.split(" ")[0], (str, "text"))
            if not isinstance(value, wanted) or (isinstance(value, bool) and f.type != "bool"):
                raise CorpusError(f"{flag} ({f.name}) must be {what}, got {value!r}")
        for flag, value, low in (("--shard-samples", self.shard_samples, 1), ("--seed", self.seed, 0),
                                 ("--max-pixels", self.max_pixels, 1)):
            if value < low:
                raise CorpusError(f"{flag} must be >= {low}, got {value}")
        if not 0 < self.attribute_threshold <= 1:
            raise CorpusError(f"--attribute-threshold must be in (0, 1], got {self.attribute_threshold}")
        if self.keep_without_attributes and not self.attributes:
            raise CorpusError("--keep-without-attributes needs --attributes")
        if self.video and self.attributes:
            raise CorpusError("--attributes are per image: they cannot be joined into video shards")
        try:
            self.media_settings()
        except ValueError as exc:
            raise CorpusError(str(exc)) from None

    def media_settings(self) -> ImageSettings | VideoSettings:
        if self.video:
            return VideoSettings(self.fps, self.frame_size, self.frame_resize, self.min_frames, self.max_frames)
        return ImageSettings(self.image_size, self.resize, self.quality, self.max_pixels)


def inside_root(settings: dict) -> dict:
    """The settings with their relative input paths inside `root` (the release's folder), when given."""
    root = settings.pop("root", None)
    if not root:
        return settings
    return {k: f"{str(root).rstrip('/')}/{v}" if k in INPUT_PATHS and v and "://" not in str(v)
            and not os.path.isabs(str(v)) else v for k, v in settings.items()}


@dataclass
class Preflight:
    """What one streaming pass over the list tells, before any image is touched."""

    list_loc: Location
    categories: Categories
    labels: str  # where the list's labels are: corpus.LISTED, FOLDER or NONE
    entries: int
    per_label: Counter
    several_labels: int = 0  # entries with more than one label (Sports-1M's multi-label lists)
    attributes: AttributeFile | None = None


def check_out_folder(cfg: ShardConfig, out: Location, force: bool) -> None:
    """OUT must not be inside the tree being scanned (the next run would read its own shards as images),
    and a non-empty OUT must be an earlier output of this tool (it holds .state/), unless --force: its
    index.json or manifest.json would otherwise overwrite a user's files."""
    if cfg.image_folder and out.is_local and "://" not in cfg.image_folder:
        tree = os.path.realpath(cfg.image_folder)
        if os.path.commonpath([tree, os.path.realpath(out.path())]) == tree:
            raise CorpusError(f"--out {cfg.out} is inside --image-folder {cfg.image_folder}: a rerun would read "
                              f"the shards as images of a class; write them elsewhere")
    if not force and out.is_dir():
        names = [name for name, _ in out.list_dir()]
        if names and STATE_DIR not in names:
            raise CorpusError(f"--out {cfg.out} holds files that this tool did not write ({', '.join(names[:3])}"
                              f"{' ...' if len(names) > 3 else ''}): give an empty or new folder, or --force")


def preflight(cfg: ShardConfig, out: Location) -> Preflight:
    """Check every argument and stream the list once; raise CorpusError with one clear message."""
    if cfg.image_folder:
        root = Location.parse(cfg.image_folder)
        classes = image_folder_classes(root)
        categories = Categories.from_names(classes)
        list_loc, name_rejects = _write_image_folder_list(root, classes, out)
    else:
        list_loc, name_rejects = Location.parse(cfg.list), 0
        if not list_loc.is_file():
            raise CorpusError(f"list file not found: {cfg.list}")
        list_file.check_not_compressed(list_loc, "list file")
        root = Location.parse(cfg.images_root)
        if not root.is_dir():
            raise CorpusError(f"images root not found: {cfg.images_root}")
        categories = read_categories(Location.parse(cfg.categories)) if cfg.categories else None

    labels, entries, per_label, several = LISTED if name_rejects else None, name_rejects, Counter(), 0
    for lineno, line in list_file.text_lines(list_loc):
        if labels is None:
            labels, first = label_source(line, categories), (lineno, line)
            if labels == LISTED and categories is None:
                raise CorpusError(f"{cfg.list} has labels: pass --categories so they can be named")
            categories = categories or Categories.from_names([])
        elif labels != LISTED and looks_labeled(line, categories):  # read as label-less: every entry lost
            raise CorpusError(f"{list_loc.uri()}:{first[0]}: {first[1].strip()!r} has no label but line {lineno} "
                              f"{line.strip()!r} has one: is line {first[0]} a header? Remove it or start it with '#'")
        entry = parse_line(line, categories, labels)
        if entry.problem.startswith("unknown_class"):
            raise CorpusError(f"{list_loc.uri()}:{lineno}: {entry.problem[len('unknown_class: '):]}"
                              f" (categories has {len(categories)} classes)")
        entries += 1
        per_label[entry.label] += 1
        several += len(entry.labels) > 1
    if labels is None:
        raise CorpusError(f"list file has no entries: {list_loc.uri()}")
    if several and cfg.attributes:
        raise CorpusError(f"{list_loc.uri()} gives several labels per entry: --attributes are for "
                          f"single-label scene lists")
    attributes = read_attribute_file(cfg.attributes, cfg.attribute_threshold) if cfg.attributes else None
    return Preflight(list_loc, categories, labels, entries, per_label, several, attributes)


def _write_image_folder_list(root: Location, classes: list[str], out: Location) -> tuple[Location, int]:
    """The tree as a list (``class/file id`` lines) in OUT/.state; files whose names no list line can carry
    (not UTF-8, a line break) go straight to a reject file of their own.  Returns (list, rejected)."""
    rejects = []
    with out.open_atomic(f"{STATE_DIR}/{IMAGE_FOLDER_LIST}") as f:
        for path, label in image_folder_files(root, classes):
            problem = list_file.unlistable_name(path)
            if problem:
                rejects.append({"source": list_file.printable(path), "label": label, "reason": problem})
            else:  # a class folder named #...: ./ keeps the line from reading as a comment
                f.write(f"{'./' if path.startswith('#') else ''}{path} {label}\n".encode())
    if rejects:
        write_rejects(out, NAME_REJECTS, rejects)
    return out.child(f"{STATE_DIR}/{IMAGE_FOLDER_LIST}"), len(rejects)


def make_plan(cfg: ShardConfig, pf: Preflight, out: Location) -> ShardPlan:
    shards = {label: max(1, math.ceil(n / cfg.shard_samples)) for label, n in pf.per_label.items() if label >= -1}
    images_root = Location.parse(cfg.image_folder or cfg.images_root)
    return ShardPlan(categories=pf.categories, labels=pf.labels, shards_per_label=shards,
                     num_buckets=max(1, math.ceil(pf.entries / BUCKET_ROWS)), seed=cfg.seed,
                     images_root=images_root, out=out, media=cfg.media_settings(), attributes=pf.attributes,
                     keep_without_attributes=cfg.keep_without_attributes)


def run(cfg: ShardConfig, verbose: bool = False, force: bool = False) -> dict:
    """Shard the corpus; returns the manifest.  Uses the current Ray cluster, or starts a local one
    (`verbose`: with Ray's INFO output on the console; `force`: write into a folder of other files)."""
    started = time.time()
    cluster_shape.cluster_address()  # one that no longer runs: refused before any work
    out = Location.parse(cfg.out)
    check_out_folder(cfg, out, force)
    out.check_writable()
    with exclusive(out, f"{STATE_DIR}/{LOCK_FILE}"):  # a second run into OUT would delete this one's files
        return _run_locked(cfg, out, started, verbose)


def _run_locked(cfg: ShardConfig, out: Location, started: float, verbose: bool) -> dict:
    import ray

    _clean_previous_attempt(out)
    pf = preflight(cfg, out)
    plan = make_plan(cfg, pf, out)
    start_ray(verbose)
    shape = cluster_shape.of_cluster()
    check_cluster(cfg, shape)
    summaries = _run_pipeline(pf, plan, shape.capacity(TASK))
    out.remove_tree(MEMBERS_DIR)  # the shards' member lists: every shard is written, its sidecar says what it holds

    reasons = shard_index.quarantine_reasons(out, summaries)
    written = sum(s["nsamples"] for s in summaries)
    quarantined = sum(reasons.values())
    if pf.entries != written + quarantined:  # checked before any index file is written under its final name
        raise RuntimeError(f"accounting broken: read {pf.entries} != written {written} + quarantined "
                           f"{quarantined}; no index file was written in {out.uri()}")
    name = cfg.name or _default_name(cfg)
    shard_index.write_quarantine(out, summaries)
    shard_index.write_classes(out, pf.categories, summaries, name)
    media = plan.media
    shard_index.write_index(out, summaries, name, pf.categories.names,
                            pf.attributes.names if pf.attributes else None,
                            {"fps": media.fps, "size": media.size, "resize": media.resize, "codec": "h264"}
                            if cfg.video else None, multi_label=pf.several_labels > 0)
    shard_index.remove_unlisted_shards(out, summaries)
    fresh = [s for s in summaries if not s["reused"]]
    elapsed = time.time() - started
    per_class = Counter()
    for s in summaries:
        per_class[s["label"]] += s["nsamples"]
    manifest = {
        "entries_read": pf.entries, "written": written, "quarantined": quarantined,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "per_class_written": {n: per_class[i] for i, n in enumerate(pf.categories.names)},
        "unlabeled_written": per_class[UNLABELED],
        "labels_from": pf.labels, "entries_with_several_labels": pf.several_labels,
        "shards": sum(1 for s in summaries if s["nsamples"]), "shards_reused": len(summaries) - len(fresh),
        "passthrough": sum(s["passthrough"] for s in summaries),
        "images_processed_this_run": sum(s["nsamples"] + s["quarantined"] for s in fresh),
        "elapsed_s": round(elapsed, 3),
        "worker_seconds": round(sum(s["seconds"] for s in fresh), 3),
        "images_per_s": round(sum(s["nsamples"] + s["quarantined"] for s in fresh) / max(elapsed, 1e-9), 1),
        "settings": {k: v for k, v in asdict(cfg).items()}, "versions": shard_index.package_versions(),
        "attributes": {"names": len(pf.attributes.names), "rows": pf.attributes.rows,
                       "written_with_attributes": sum(s["with_attributes"] for s in summaries)}
        if pf.attributes else None,
        "cluster_cpus": ray.cluster_resources().get("CPU", 0),
    }
    shard_index.write_manifest(out, manifest)
    return manifest


def check_cluster(cfg: ShardConfig, shape: ClusterShape) -> None:
    """Before any task starts: a task fits the cluster at its largest, and the local paths reach every node
    it has or can have (a CorpusError naming the flag otherwise)."""
    try:
        shape.check_fits("shard.py: a sharding task", TASK)
        local = [(flag, path) for flag, path in (
            ("--list", cfg.list), ("--images-root", cfg.images_root), ("--image-folder", cfg.image_folder),
            ("--categories", cfg.categories), ("--attributes", cfg.attributes), ("--out", cfg.out))
            if path and "://" not in path]
        out = os.path.abspath(cfg.out) if "://" not in cfg.out else None
        check_local_paths(shape, local, cfg.shared_filesystem, "--shared-filesystem",
                          os.path.join(out, STATE_DIR) if out else None,
                          [os.path.abspath(p) for flag, p in local if flag != "--out"])
    except (RequestDoesNotFit, SharedPathError) as exc:
        raise CorpusError(str(exc)) from None


def _run_pipeline(pf: Preflight, plan: ShardPlan, cpus: int) -> list[dict]:
    import ray

    num_groups = sum(plan.shards_per_label.values())
    ranges = list_file.byte_ranges(pf.list_loc)
    ds = ray.data.from_items([{"start": start, "end": end} for start, end in ranges], override_num_blocks=len(ranges))
    ds = ds.map_batches(parse_ranges, fn_kwargs={"plan": plan, "list_loc": pf.list_loc}, batch_size=1,
                        batch_format="numpy")
    if plan.attributes is not None:  # attribute rows meet their images' entries in the key buckets
        ranges = list_file.byte_ranges(plan.attributes.loc)
        rows = ray.data.from_items([{"start": start, "end": end} for start, end in ranges],
                                   override_num_blocks=len(ranges))
        ds = ds.union(rows.map_batches(parse_attribute_ranges, fn_kwargs={"plan": plan}, batch_size=1,
                                       batch_format="numpy"))
    ds = ds.groupby("bucket", num_partitions=plan.num_buckets).map_groups(
        resolve_duplicates, fn_kwargs={"plan": plan}, batch_format="numpy")
    if num_groups == 0:  # every entry unusable: its reject files are all there is to write
        ds.materialize()
        return []
    # One row per shard (its member list is a file: shard_tasks).  Materialising these stops Ray from
    # fusing the heavy write stage into the shuffle's reduce tasks, which would leave most CPUs idle.
    # partitions sized by entries, not CPUs, so a partition's rows stay bounded as the corpus grows
    partitions = min(num_groups, max(4 * cpus, math.ceil(pf.entries / GROUP_ROWS)))
    groups = ds.groupby("group", num_partitions=partitions).map_groups(
        collect_group, fn_kwargs={"plan": plan}, batch_format="numpy").materialize()
    n = groups.count()
    writes = groups.repartition(max(1, n)).map_batches(
        write_group, fn_kwargs={"plan": plan}, batch_format="numpy", batch_size=1, num_cpus=1)
    return [dict(row) for row in writes.iter_rows()]


def _default_name(cfg: ShardConfig) -> str:
    """From the input, not OUT, so the same corpus sharded anywhere gives identical index files."""
    source = (cfg.image_folder or cfg.list or "shards").rstrip("/")
    return os.path.splitext(os.path.basename(source))[0] or "shards"


def _clean_previous_attempt(out: Location) -> None:
    """Drop temp files of a killed run and its list-level rejects (they are recomputed every run)."""
    out.make_dirs(STATE_DIR)
    out.remove_temp_files()
    out.remove_temp_files(STATE_DIR)
    out.remove_tree(MEMBERS_DIR)  # a killed run's member lists: this run writes its own
    for name in shard_index.reject_files_in(out):  # listed, not globbed: OUT may hold [ or ?
        out.remove(f"{STATE_DIR}/{name}")


def run_and_report(cfg: ShardConfig, verbose: bool = False, force: bool = False) -> int:
    """`run`, then its one console line; the exit status: 0, 1 when nothing was written, 2 for bad input,
    130 when interrupted."""
    try:
        m = run(cfg, verbose, force)
    except (CorpusError, PermissionError, LockedError, ClusterNotRunning) as exc:
        print(f"shard.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # OUT's lock was released on the way out; finished shards are kept
        print(f"shard.py: interrupted; {cfg.out} is unlocked: the same command again continues, reusing the "
              f"shards already written", file=sys.stderr)
        return 130
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("shard.py", exc, verbose)
    reasons = ", ".join(f"{reason} {n}" for reason, n in m["quarantine_reasons"].items())
    print(f"entries read {m['entries_read']} = written {m['written']} + quarantined {m['quarantined']}"
          f"{f' ({reasons})' if reasons else ''}; {m['shards']} shards ({m['shards_reused']} reused) in {cfg.out}; "
          f"{m['elapsed_s']:.1f} s, {m['images_per_s']:.0f} {'videos' if cfg.video else 'img'}/s")
    if not m["written"]:  # shards of nothing would train on nothing
        print(f"shard.py: error: every entry was quarantined, nothing was written: see "
              f"{Location.parse(cfg.out).uri('quarantine.jsonl')}", file=sys.stderr)
        return 1
    return 0
