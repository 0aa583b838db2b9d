"""Raw image corpus -> WebDataset tar shards + shard index + class-indexed lists, nothing lost.

    python pipelines/shard.py --list TRAIN.txt --images-root ROOT --categories CATEGORIES.txt --out OUT
    python pipelines/shard.py --image-folder ROOT --out OUT
    python pipelines/shard.py --config configs/shard/places365_val.yaml --root PLACES365_RELEASE [--out OUT]
    places-shard ...                      (the same, installed with the package)

Every input line ends either in a shard or in OUT/quarantine.jsonl with its reason; the run prints
``entries read = written + quarantined`` at the end.  Rerunning with the same arguments skips shards
already written (verified by checksum).  The run itself is pipelines/offline/sharding.py's; see
README.md ("Sharding") for the layout and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from common import tool_settings
from pipelines.offline.corpus import CorpusError
from pipelines.offline.sharding import ShardConfig, inside_root, run_and_report


def parse_args(argv: list[str] | None = None) -> ShardConfig:
    return parse_command_line(argv)[0]


def build_parser() -> argparse.ArgumentParser:
    p = tool_settings.new_parser(__doc__)
    p.add_argument("--root", help="the folder (or URI) the inputs' relative paths are in: the Places365 release's, "
                                  "for the recipes")
    p.add_argument("--list", help="list of 'path label' lines (Places365, UCF-101's trainlist), 'path l1,l2' "
                                  "(several labels: Sports-1M), or bare paths (a test list; labelled by their "
                                  "class folder when it names a class: UCF-101's testlist)")
    p.add_argument("--image-folder", help="class-per-folder tree (classes = sorted subfolder names)")
    p.add_argument("--images-root", help="folder the list's paths are relative to (with --list)")
    p.add_argument("--categories", help="categories file: '/a/airfield 0' lines, '1 ApplyEyeMakeup' lines "
                                        "(UCF-101's classInd.txt), or one name per line")
    p.add_argument("--out", help="output folder or URI (s3://bucket/prefix)")
    p.add_argument("--image-size", type=int, help="S, in pixels")
    p.add_argument("--resize", choices=["square", "shorter", "keep"],
                   help="square: SxS (Places365 'small', the default); shorter: shorter side S; keep: no resize")
    p.add_argument("--shard-samples", type=int, help="target samples per shard")
    p.add_argument("--quality", type=int, help="JPEG quality when re-encoding")
    p.add_argument("--seed", type=int, help="seeds shard membership and in-shard order")
    p.add_argument("--max-pixels", type=int, help="refuse larger images, e.g. bombs")
    p.add_argument("--name", help="dataset name written into index.json (when not given: the list's file name)")
    p.add_argument("--attributes", help="per-image attributes, joined into the shards: CSV with a header "
                                        "path,attr1,... or JSON lines {\"path\": ..., \"attributes\": {...}}")
    p.add_argument("--attribute-threshold", type=float,
                   help="a value (a 0/1 label or a vote fraction) at least this is positive")
    p.add_argument("--keep-without-attributes", action="store_true", default=None,
                   help="keep images that have no attribute row (without attributes) instead of quarantining them")
    p.add_argument("--video", action="store_true", default=None,
                   help="the list or folder holds videos (.avi .mp4 .mkv .webm ...): each becomes one sample, "
                        "its frames at --fps and --frame-size re-encoded as H.264")
    p.add_argument("--fps", type=float, help="video frame rate after resampling")
    p.add_argument("--frame-size", type=int, help="video frames' shorter side, or both with --frame-resize "
                                                  "square")
    p.add_argument("--frame-resize", choices=["shorter", "square"],
                   help="shorter: the shorter side is --frame-size, aspect kept; square: both sides")
    p.add_argument("--min-frames", type=int, help="shorter videos are quarantined as too_short")
    p.add_argument("--max-frames", type=int, help="keep at most this many frames of a video (0: all)")
    p.add_argument("--shared-filesystem", action="store_true", default=None,
                   help="on a cluster of several nodes: the local paths given are mounted on every node "
                        "(verified); without it they are refused there (use s3://...)")
    p.add_argument("--force", action="store_true",
                   help="write into an OUT that holds files this tool did not write (they may be overwritten)")
    p.set_defaults(**{f.name: f.default for f in dataclasses.fields(ShardConfig)
                      if f.default is not dataclasses.MISSING})
    return p


def parse_command_line(argv: list[str] | None = None) -> tuple[ShardConfig, bool, bool]:
    """(settings, --verbose, --force); a recipe (configs/shard/*.yaml) holds the same keys as the flags."""
    p = build_parser()
    a = vars(tool_settings.parse(p, argv))
    verbose, force = a.pop("verbose"), a.pop("force")
    settings = inside_root({k: v for k, v in a.items() if k not in tool_settings.CONVENTION})
    if bool(settings.get("list")) == bool(settings.get("image_folder")):
        p.error("give exactly one of --list or --image-folder")
    if not settings.get("out"):
        p.error("--out is required")
    if settings.get("list") and not settings.get("images_root"):
        p.error("--list needs --images-root")
    if settings.get("image_folder") and (settings.get("images_root") or settings.get("categories")):
        p.error("--image-folder takes its classes and paths from the tree; drop --images-root/--categories")
    return ShardConfig(**settings), verbose, force  # a CorpusError names what is out of range


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, verbose, force = parse_command_line(argv)
    except CorpusError as exc:  # a setting out of range
        print(f"shard.py: error: {exc}", file=sys.stderr)
        return 2
    return run_and_report(cfg, verbose, force)


if __name__ == "__main__":
    sys.exit(main())
