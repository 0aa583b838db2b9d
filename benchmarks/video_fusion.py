"""Karpathy et al.'s time-fusion comparison on the video demo: each network trained by the same recipe.

    python benchmarks/video_fusion.py [--networks video_single_frame video_early_fusion ...] [--epochs 16]
                                      [--data data/video_demo] [--out benchmarks/results/cpu/video_fusion.json]

Trains every network with `training/run.py --config configs/video/demo.yaml` (2 CPU workers under Ray
Train; the corpus and its shards are made on first use) and only the network changed, then scores each
best checkpoint, and their "CNN Average", with `training/evaluate.py` (20 clips per video).  Prints JSON:
per network its Clip Hit@1, Video Hit@1/@5, the Video Hit@1 of the motion-only classes (8 of the demo's
10, which one frame cannot tell apart) and of the two still ones, and training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NETWORKS = ("video_single_frame", "video_early_fusion", "video_late_fusion", "video_slow_fusion")
STILL = ("red_discs", "blue_squares")  # the classes one frame tells apart


def class_groups(hits: dict) -> dict:
    """Video Hit@1 over the motion-only classes and over the still ones (per_class rows: name -> hits)."""
    def mean(names):
        rows = [hits["per_class"][n] for n in names]
        return sum(r["video_hit@1"] * r["videos"] for r in rows) / sum(r["videos"] for r in rows)

    motion = [n for n in hits["per_class"] if n not in STILL]
    return {"motion_classes_video_hit@1": mean(motion), "still_classes_video_hit@1": mean(STILL)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "video_demo"))
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    from common.console import start_ray
    from training import evaluate
    from video_transfer import train  # (this folder is on the path of a script run from it)

    start_ray()
    storage = tempfile.mkdtemp(prefix="video-fusion-")
    shards = os.path.abspath(os.path.join(a.data, "shards"))
    results, best = {}, {}
    for name in a.networks:
        report, seconds = train("demo.yaml", storage, name, [
            f"data.train_shards={shards}/train", f"data.val_shards={shards}/val", f"model.name={name}",
            f"run.epochs={a.epochs}"])
        best[name] = report["best_checkpoint"]
        results[name] = {"train_s": seconds, "epochs": a.epochs,
                         "validation_video_hit@1": 1 - report["final"]["top1_error"]}
    out = os.path.join(storage, "eval")
    if evaluate.main([*sum((["--checkpoint", best[n]] for n in a.networks), []), "--shards", f"{shards}/val",
                      "--clips", str(a.clips), "--out", out]) != 0:
        raise SystemExit("evaluating the checkpoints failed")
    with open(os.path.join(out, "metrics.json")) as f:
        video = json.load(f)["video"]
    of = {name: next(v for k, v in video.items() if k in (best[name], f"{best[name]}/state.pt"))
          for name in a.networks}  # metrics.json names each checkpoint's state.pt
    for name in a.networks:
        hits = of[name]
        results[name].update({k: hits[k] for k in ("clip_hit@1", "video_hit@1", "video_hit@5")}, **class_groups(hits))
    if "CNN Average" in video:
        hits = video["CNN Average"]
        results["CNN Average"] = {**{k: hits[k] for k in ("clip_hit@1", "video_hit@1", "video_hit@5")},
                                  **class_groups(hits)}
    summary = {"recipe": "configs/video/demo.yaml", "test_clips": a.clips, "videos": of[a.networks[0]]["videos"],
               "networks": results}
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
