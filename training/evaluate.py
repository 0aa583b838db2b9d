"""Evaluate checkpoints on sharded images under the papers' test protocols, alone and fused.

    python training/evaluate.py --checkpoint PATH [--checkpoint PATH ...] --shards VAL_SHARDS \
        --protocol center|ten_crop|dense|multi_view|multi_crop|multi_crop_dense|googlenet_144 [--fusion average|product|learned] --out DIR
    python training/evaluate.py --checkpoint VIDEO_RUN [--checkpoint VIDEO_RUN ...] --shards VIDEO_SHARDS \
        [--clips 20] --out DIR
    places-eval ...                       (the same, installed with the package)

Video shards (`shard.py --video`) are scored as Karpathy et al. test (protocol `clips`, their default):
each video's `--clips` evenly spaced clips, centre-cropped and mirrored, class probabilities averaged
per clip and per video; metrics.json gives Clip Hit@1 and Video Hit@1/@5 per model and for their
average ("CNN Average"), per class too; `fused` and the plots follow `--fusion` as for images.

Runs as Ray Data batch inference (an actor pool, on GPUs when asked), so a 328k-image test set scales
out.  Writes DIR/metrics.json (top-1/top-5 error overall and per class, per model and fused),
DIR/confusion.png (the most-confused class pairs and the worst classes), DIR/predictions.csv (the
challenge's format: image id, then five labels, space-separated).  Learned fusion weights are fit on
a held-out slice of the images (`--heldout`, chosen by key hash) and scored only on the rest.
"""

from __future__ import annotations

import argparse
import sys

from common.arguments import fraction, positive_int
from common.cluster_shape import cluster_address
from common.console import report_failure, start_ray
from common.storage import Location, check_out_outside
from common.tool_settings import add_old_spelling, new_parser, parse
from pipelines.online.catalog import Catalog
from training.checkpoint.lookup import CheckpointError
from training.class_names import read_class_names
from training.evaluation import DEFAULT_SCALES, check_inputs, check_room_to_read, clip_transforms, score, view_geometry


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__)
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a state.pt written by training, its checkpoint folder, a run folder (its best "
                        "checkpoint), or a published model file (resnet18_places365.pth.tar, a torchvision "
                        "state_dict); repeat to fuse")
    p.add_argument("--arch", help="the network of a published model file that does not name it (a torchvision "
                                  "state_dict): resnet18, alexnet_owt, densenet161, ...")
    p.add_argument("--categories", help="class names of a published model file (categories_places365.txt)")
    p.add_argument("--shards", required=True, help="the shards to score (pipelines/shard.py's folder or URI)")
    p.add_argument("--protocol", choices=list(DEFAULT_SCALES),
                   help="test protocol (default: center for images, clips for video shards, the only one for them)")
    p.add_argument("--clips", type=positive_int, default=20,
                   help="video shards: test clips per video (Karpathy et al.'s 20)")
    p.add_argument("--scales", type=positive_int, nargs="+",
                   help="shorter sides (default: the checkpoint's data.eval_resize, and the protocol's other "
                        "scales in proportion, e.g. dense 256 384 512 for 256)")
    p.add_argument("--size", type=positive_int, help="crop size (default: the checkpoint's data.size)")
    p.add_argument("--fusion", choices=["average", "product", "learned"], default="average",
                   help="how several checkpoints' class probabilities combine: their mean, their product, or "
                        "weights fit on --heldout")
    p.add_argument("--heldout", type=fraction, default=0.2, help="learned fusion: fraction fit on, never scored")
    p.add_argument("--actors", type=positive_int, default=1, help="inference actors (Ray Data's actor pool)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per inference batch")
    p.add_argument("--max-skipped-fraction", type=fraction, default=0.01,
                   help="fail (exit 1) when more of the listed samples cannot be read")
    p.add_argument("--out", required=True, help="folder (or URI) for metrics.json, predictions.csv and the plots")
    add_old_spelling(p, "--workers", "--actors")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    from training.models import clip_offsets_for  # (torch's import: once the arguments parse)

    try:  # before Ray starts: a wrong path is a one-line error, not a traceback from an actor
        names = read_class_names(a.categories)
        checkpoints, configs, attributes = check_inputs(a.checkpoint, a.shards, a.arch, names)
        video = Catalog.load(a.shards).video is not None
        a.protocol = a.protocol or ("clips" if video else "center")
        if video != (a.protocol == "clips"):
            raise CheckpointError(f"--protocol {a.protocol}: {a.shards} holds {'videos' if video else 'images'}; "
                                  f"videos are scored with --protocol clips, images with the others")
        clips = clip_transforms(configs, a.shards, a.clips) if video else None
        if not video and any(clip_offsets_for(c) is not None for c in configs):
            raise CheckpointError(f"{a.shards} holds images and a checkpoint's model is a video network")
        size, scales = (configs[0].data.size, ()) if video else view_geometry(configs, a.protocol, a.size, a.scales)
        check_out_outside(a.out, a.shards, "--shards", "the shard folder belongs to pipelines/shard.py; write the "
                                                        "results elsewhere")
        Location.parse(a.out).check_writable()
        cluster_address()  # one that no longer runs: refused before Ray would wait for it
    except (OSError, ValueError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    start_ray(a.verbose)
    try:
        check_room_to_read(a.actors, a.gpu)
    except ValueError as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return score(a, checkpoints, size, scales, attributes, clips)
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("evaluate.py", exc, a.verbose)


if __name__ == "__main__":
    sys.exit(main())
