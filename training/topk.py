"""Class rankings and top-k hits against a sample's classes: one, or several in a multi-label set
(Sports-1M).

Every tool ranks log posteriors: one view's logits (the same order as its log-softmax), or several
views', crops', clips' or models' posteriors averaged in log space (`log_mean_exp`), the same mean
without the float32 softmax outputs that are exactly 0 for most classes once logits are large (ranks
2-5 would be ties).  Ties go to the lower class (`top_classes`), so the trainer, evaluate.py and
predict.py rank alike.

A prediction is a hit at k when any of the sample's classes is among its k highest scores; with one
class per sample this is the usual top-k accuracy.  Classes are multi-hot rows, so the image metrics
(`top_errors`) and the video ones (`training.video_metrics`) score single- and multi-label sets alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipelines.offline.corpus import decode_labels


def log_mean_exp(log_p, axis: int):
    """log(mean(exp(log_p))) over `axis` (a torch tensor or a numpy array): posteriors averaged."""
    if isinstance(log_p, torch.Tensor):
        return torch.logsumexp(log_p, axis) - math.log(log_p.shape[axis])
    top = np.max(log_p, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.mean(np.exp(log_p - top), axis=axis))


def top_classes(scores, k: int):
    """(N, min(k, K)) the classes of each row's k highest `scores`, highest first, ties to the lower class
    (a torch tensor or a numpy array, as given)."""
    if isinstance(scores, torch.Tensor):
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def hits_at(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: any label of row i (`targets`, (N, K) multi-hot) among the k highest `scores` of row i."""
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    top = top_classes(scores, k)
    return targets[np.arange(len(scores))[:, None], top].astype(bool).any(1)


def multi_hot(classes: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, K) int8: sample i's classes, its `labels` member (`labels[i]`, "" for none) or else `classes[i]`."""
    rows = np.zeros((len(classes), num_classes), np.int8)
    for i, (cls, member) in enumerate(zip(classes, labels)):
        rows[i, decode_labels(str(member).encode(), int(cls))] = 1
    return rows


def top_errors(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Top-1/top-5 error over all samples and per class (a sample counts for each of its classes)."""
    hit1, hit5 = hits_at(probs, targets, 1), hits_at(probs, targets, 5)
    per_class = {}
    for c in np.flatnonzero(targets.any(0)):
        mask = targets[:, c].astype(bool)
        per_class[str(int(c))] = {"count": int(mask.sum()), "top1_error": float(1 - hit1[mask].mean()),
                                  "top5_error": float(1 - hit5[mask].mean())}
    return {"images": int(len(probs)), "top1_error": float(1 - hit1.mean()), "top5_error": float(1 - hit5.mean()),
            "per_class": per_class}
