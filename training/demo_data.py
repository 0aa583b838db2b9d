"""The demos' corpora and shards, made on first use when a config points at them (data/demo,
data/video_demo) and they are absent."""

from __future__ import annotations

import os

from training.config import ConfigError, TrainConfig


def prepare_data(cfg: TrainConfig, verbose: bool = False) -> None:
    """Create a demo corpus and its shards when the config points at a demo's (data/demo, data/video_demo)
    and they are absent."""
    for shards in (cfg.data.train_shards, cfg.data.val_shards):
        if "://" in shards or os.path.exists(os.path.join(shards, "index.json")):
            continue
        demo_root = os.path.dirname(os.path.dirname(shards))
        if os.path.basename(os.path.dirname(shards)) == "shards" and "video_demo" in os.path.basename(demo_root):
            from pipelines.demo_video import prepare_video_demo
            split = os.path.basename(shards)
            prepare_video_demo(demo_root, seed=cfg.run.seed, verbose=verbose,
                               splits=("transfer_train", "transfer_val") if split.startswith("transfer") else
                               ("train", "val"))
        elif os.path.basename(os.path.dirname(shards)) == "shards" and "demo" in os.path.basename(demo_root):
            from pipelines.demo_shards import prepare_demo
            prepare_demo(demo_root, seed=cfg.run.seed, verbose=verbose, splits=("train", "val"))
        else:
            raise ConfigError(f"no shards at {shards}: run pipelines/shard.py first")
