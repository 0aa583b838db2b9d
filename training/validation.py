"""Validation during training: each rank scores its exact share of the val set, under the training's
mixed precision."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.online.clips import ClipTransform
from pipelines.online.loader import eval_batches
from pipelines.online.transforms import EvalTransform
from training.config import TrainConfig
from training.normalization import mean_std
from training.topk import log_mean_exp, top_classes


def autocast(cfg: TrainConfig, device) -> torch.autocast:
    """The training's mixed precision, for its steps and its validation alike: on GPU only."""
    return torch.autocast(device.type, dtype=getattr(torch, cfg.run.amp_dtype),
                          enabled=device.type == "cuda" and cfg.run.amp)


def evaluate_rank(model, cfg: TrainConfig, rank: int, world: int, device,
                  clips: ClipTransform | None = None) -> tuple[torch.Tensor, tuple | None]:
    """[top-1 correct, top-5 correct, seen, clip hits, clips] over this rank's exact share of the val set
    (no padding), under the training's autocast (as timm validates); `evaluate.py` scores checkpoints in
    fp32.  Images: the centre crop.  Videos (`clips`): Karpathy et al.'s protocol, each video's
    `clips.clips` clips (and their mirrors), class probabilities averaged per clip (Clip Hit@1) and per
    video (top-1/top-5 are Video Hit@1/5).  With attributes also (probabilities, targets) of this rank's
    share, as numpy arrays."""
    transform = clips or EvalTransform("center", size=cfg.data.size, resize=cfg.data.eval_resize,
                                       **mean_std(cfg.data))
    batch = max(1, cfg.data.batch_size // (clips.views_per_clip * clips.clips)) if clips else cfg.data.batch_size
    normalize = transform.normalizer()
    counts = torch.zeros(5, dtype=torch.float64, device=device)
    attributes = cfg.model.num_attributes
    k = model.backbone.num_classes
    scores, targets = [], []
    model.eval()
    with torch.no_grad(), autocast(cfg, device):
        for x, y in eval_batches(cfg.data.val_shards, transform, rank, world, batch, cfg.data.loader_workers,
                                 attributes):
            x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            logits, attr_logits = model.predict(x)
            # a hit is any of the sample's classes: its one class, or a multi-label split's row of them
            hot = y[:, 1:] if y.dim() == 2 and not attributes else F.one_hot(y[:, 0] if attributes else y, k)
            ranking = logits.float()  # one view: its logits rank as its log posteriors
            if clips is not None:  # (videos x clips x views_per_clip, K) -> per clip, per video
                per_clip = log_mean_exp(ranking.log_softmax(1).view(len(y), -1, clips.views_per_clip, k), 2)
                counts[3] += hot.gather(1, per_clip.argmax(2)).sum()
                counts[4] += per_clip.shape[0] * per_clip.shape[1]
                ranking = log_mean_exp(per_clip, 1)
            top5 = top_classes(ranking, 5)
            counts[0] += hot.gather(1, top5[:, :1]).sum()
            counts[1] += hot.gather(1, top5).amax(1).sum()
            counts[2] += len(y)
            if attributes:
                scores.append(torch.sigmoid(attr_logits.float()).cpu().numpy())
                targets.append(y[:, 1:].cpu().numpy())
    if not attributes:
        return counts, None
    return counts, (np.concatenate(scores) if scores else np.zeros((0, attributes), np.float32),
                    np.concatenate(targets) if targets else np.zeros((0, attributes), np.int64))
