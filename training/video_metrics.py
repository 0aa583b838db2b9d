"""Karpathy et al.'s video metrics: Clip Hit@k, Video Hit@k, and the "CNN Average" of several networks.

A video is a bag of clips.  A clip's prediction is its class probabilities; a video's is the average of
its clips' (the paper: 20 clips, each over crops and flips, averaged).  Every score here is a log
posterior and every average is taken in log space (`training/topk.py`: no float32 ties).  Sports-1M is multi-label, so a
video's labels are a multi-hot row, and a prediction is a hit at k when any of its labels is among the k
top classes.  Clip Hit@k scores every clip against its video's labels.
"""

from __future__ import annotations

import numpy as np

from training.topk import hits_at, log_mean_exp


def video_scores(clip_scores: np.ndarray, clip_video: np.ndarray, videos: int) -> np.ndarray:
    """(V, K): each video's clips' log posteriors averaged (in log space). `clip_video[i]` is clip i's
    video, in [0, videos); a video without clips is an error, not a row of zeros that would read as a
    miss."""
    counts = np.bincount(clip_video, minlength=videos)
    if len(counts) > videos or (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"every video needs at least one clip and an index below {videos}; "
                         f"without clips: {missing}")
    order = np.argsort(clip_video, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordered = clip_scores[order].astype(np.float64)
    top = np.maximum.reduceat(ordered, starts, axis=0)  # each video's largest, so exp() cannot underflow
    sums = np.add.reduceat(np.exp(ordered - np.repeat(top, counts, axis=0)), starts, axis=0)
    return top + np.log(sums / counts[:, None])


def cnn_average(per_network: list[np.ndarray]) -> np.ndarray:
    """The paper's "CNN Average": the networks' video posteriors averaged (log posteriors in and out)."""
    return log_mean_exp(np.stack(per_network), 0)


def hit_report(clip_log_probs: np.ndarray, clip_video: np.ndarray, video_targets: np.ndarray,
               ks: tuple[int, ...] = (1, 5)) -> dict:
    """Clip Hit@1 and Video Hit@k, overall and per class (a video counts for each of its labels)."""
    videos = video_targets.shape[0]
    clip_hit = hits_at(clip_log_probs, video_targets[clip_video], 1)
    per_video = video_scores(clip_log_probs, clip_video, videos)
    per_k = {k: hits_at(per_video, video_targets, k) for k in ks}
    per_class = {}
    for c in np.flatnonzero(video_targets.any(0)):
        mask = video_targets[:, c].astype(bool)
        per_class[str(int(c))] = {"videos": int(mask.sum()),
                                  **{f"video_hit@{k}": float(h[mask].mean()) for k, h in per_k.items()}}
    return {"clips": int(len(clip_log_probs)), "videos": int(videos), "clip_hit@1": float(clip_hit.mean()),
            **{f"video_hit@{k}": float(h.mean()) for k, h in per_k.items()}, "per_class": per_class}


def video_hits(clip_log_probs: np.ndarray, targets: np.ndarray, checkpoints: list[str], names: list[str]) -> dict:
    """Karpathy et al.'s table: Clip Hit@1 and Video Hit@1/@5 of each model, and of their "CNN Average"
    (clip i's posteriors averaged over the models, then over the clips); per class, by name.
    `clip_log_probs`: (videos, models, clips, K); `targets`: (videos, K) multi-hot."""
    videos, models, clips, k = clip_log_probs.shape
    clip_video = np.repeat(np.arange(videos), clips)

    def report(per_clip: np.ndarray) -> dict:
        hits = hit_report(per_clip.reshape(videos * clips, k), clip_video, targets)
        hits["per_class"] = {names[int(c)]: row for c, row in hits["per_class"].items()}
        return hits

    table = {path: report(clip_log_probs[:, i]) for i, path in enumerate(checkpoints)}
    if models > 1:
        table["CNN Average"] = report(cnn_average([clip_log_probs[:, i] for i in range(models)]))
    return table
