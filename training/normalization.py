"""The pixel normalisation a network trains and is scored with (`data.normalize`): ImageNet's mean and
std on [0, 1] pixels (torchvision's and timm's, and the published models'), or the papers' own, the
training set's mean pixel subtracted from 0-255 pixels (AlexNet, ZF, VGG, WM).  The mean pixel comes from
TRAIN_SHARDS/color_pca.json when a run starts and travels in its config, so a checkpoint is scored
the way it was trained wherever its training shards are."""

from __future__ import annotations

import copy

from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD
from training.config import DataConfig, TrainConfig

PIXEL_STD = (1 / 255,) * 3  # (x / 255 - mean) / (1 / 255) = x - 255 * mean: 0-255 units, nothing divided


def mean_std(data: DataConfig) -> dict:
    """The transforms' `mean` and `std` (BatchNormalize computes (x / 255 - mean) / std)."""
    if data.normalize == "imagenet":
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if data.mean_pixel is None:
        raise ValueError("data.normalize is mean_pixel and data.mean_pixel is not resolved (with_mean_pixel)")
    return {"mean": tuple(data.mean_pixel), "std": PIXEL_STD}


def with_mean_pixel(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, or a copy whose `data.mean_pixel` is the training shards' (color_pca.json) when it needs one."""
    if cfg.data.normalize != "mean_pixel" or cfg.data.mean_pixel is not None:
        return cfg
    from pipelines.online import pca_noise

    cfg = copy.deepcopy(cfg)
    cfg.data.mean_pixel = pca_noise.load_mean(cfg.data.train_shards)
    return cfg
