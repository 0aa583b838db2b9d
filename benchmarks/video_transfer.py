"""Karpathy et al.'s transfer study on the video demo: fine-tune the top layer, the top three, all layers,
or train from scratch, on a small set of new classes.

    python benchmarks/video_transfer.py [--pretrained RUN_OR_CHECKPOINT] [--epochs 12]
                                        [--data data/video_demo] [--out benchmarks/results/cpu/video_transfer.json]

Without `--pretrained`, first trains the source network with `configs/video/demo.yaml` (slow fusion on the
demo's 10 classes).  Then runs `configs/video/transfer_{top,top3,all,scratch}.yaml` on the demo's
transfer set (4 new motion classes, 10 training videos each), each from that network except scratch,
and prints JSON: per recipe its Video Hit@1/@5 and Clip Hit@1 after the last epoch (training's own
validation: 4 clips per video) and its training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECIPES = ("top", "top3", "all", "scratch")


def train(config: str, storage: str, name: str, overrides: list[str]) -> tuple[dict, float]:
    """(report.json, seconds) of one training run."""
    from training import run

    started = time.perf_counter()
    argv = ["--config", os.path.join(ROOT, "configs", "video", config), "--set", f"run.storage_path={storage}",
            "--set", f"run.name={name}", *sum((["--set", o] for o in overrides), [])]
    if run.main(argv) != 0:
        raise SystemExit(f"training {name} failed")
    with open(os.path.join(storage, name, "report.json")) as f:
        return json.load(f), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="the source network: a configs/video/demo.yaml run folder or checkpoint")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "video_demo"))
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    from common.console import start_ray

    start_ray()
    storage = tempfile.mkdtemp(prefix="video-transfer-")
    shards = os.path.abspath(os.path.join(a.data, "shards"))
    source = {}
    if not a.pretrained:
        report, seconds = train("demo.yaml", storage, "source", [
            f"data.train_shards={shards}/train", f"data.val_shards={shards}/val"])
        a.pretrained = os.path.join(storage, "source")
        source = {"video_hit@1": 1 - report["final"]["top1_error"], "train_s": seconds}
    results = {}
    for recipe in RECIPES:
        overrides = [f"data.train_shards={shards}/transfer_train", f"data.val_shards={shards}/transfer_val",
                     f"run.epochs={a.epochs}"]
        if recipe != "scratch":
            overrides.append(f"model.pretrained={a.pretrained}")
        report, seconds = train(f"transfer_{recipe}.yaml", storage, recipe, overrides)
        final = report["final"]
        results[recipe] = {"trainable_from": report["config"]["optim"]["trainable_from"],
                           "video_hit@1": 1 - final["top1_error"], "video_hit@5": 1 - final["top5_error"],
                           "clip_hit@1": final["clip_hit1"], "val_videos": final["val_images"], "train_s": seconds}
    summary = {"pretrained": a.pretrained, "source_on_demo_classes": source, "epochs": a.epochs, "recipes": results}
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
