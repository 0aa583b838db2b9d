"""Multi-label attribute metrics: average precision per attribute (as scikit-learn's
`average_precision_score` defines it: precision summed over the recall steps of each distinct
score), their mean (mAP), and F1 at a per-attribute threshold chosen on validation (the score that
maximises that attribute's F1 there), then applied unchanged to any other split.

Entries whose target is MISSING (a sample sharded without attribute labels) are left out of every
figure.  An attribute with no positive among the scored samples has no AP (NaN in the per-attribute
table) and no part in the mean.
"""

from __future__ import annotations

import math

import numpy as np

from training.models.attribute_head import MISSING


def _steps(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct thresholds, true positives, false positives) predicting positive at score >= threshold,
    thresholds descending."""
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # the last sample of each distinct score
    return scores[last], np.cumsum(targets)[last], np.cumsum(1 - targets)[last]


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    known = targets != MISSING
    scores, targets = scores[known], targets[known]
    positives = float((targets == 1).sum())
    if positives == 0:
        return math.nan
    _, tp, fp = _steps(scores, targets)
    precision, recall = tp / (tp + fp), tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The score threshold with the highest F1 on these samples (0.5 when no sample is labelled positive)."""
    known = targets != MISSING
    scores, targets = scores[known], targets[known]
    positives = float((targets == 1).sum())
    if positives == 0:
        return 0.5
    thresholds, tp, fp = _steps(scores, targets)
    f1 = 2 * tp / (2 * tp + fp + (positives - tp))
    return float(thresholds[int(np.argmax(f1))])


def f1_at(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    known = targets != MISSING
    predicted, actual = scores[known] >= threshold, targets[known] == 1
    tp = float((predicted & actual).sum())
    denominator = 2 * tp + float((predicted & ~actual).sum()) + float((~predicted & actual).sum())
    return 2 * tp / denominator if denominator else math.nan


def attribute_report(scores: np.ndarray, targets: np.ndarray, names: list[str],
                     thresholds: list[float] | None = None) -> dict:
    """mAP, macro F1 and a per-attribute table for (N, A) probabilities and 0/1/MISSING targets.
    Without `thresholds`, each attribute's is chosen here (do that on validation only)."""
    chosen = thresholds if thresholds is not None else [
        best_f1_threshold(scores[:, a], targets[:, a]) for a in range(len(names))]
    per = {}
    for a, name in enumerate(names):
        per[name] = {"ap": average_precision(scores[:, a], targets[:, a]), "threshold": chosen[a],
                     "f1": f1_at(scores[:, a], targets[:, a], chosen[a]),
                     "positives": int((targets[:, a] == 1).sum()), "labelled": int((targets[:, a] != MISSING).sum())}
    aps = [p["ap"] for p in per.values() if not math.isnan(p["ap"])]
    f1s = [p["f1"] for p in per.values() if not math.isnan(p["f1"])]
    return {"mAP": float(np.mean(aps)) if aps else math.nan, "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
            "thresholds": [float(t) for t in chosen], "per_attribute": per}


def plot_attribute_ap(report: dict, path: str) -> None:
    """Per-attribute AP, best first, with each attribute's positives; the mAP as a line (102 SUN
    attributes stay readable: one bar each)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.storage import Location

    rows = sorted(((p["ap"], name, p["positives"]) for name, p in report["per_attribute"].items()
                   if not math.isnan(p["ap"])), reverse=True)
    fig, ax = plt.subplots(figsize=(8, 0.28 * max(len(rows), 4) + 1.2))
    ax.barh([f"{name} ({n})" for _, name, n in rows][::-1], [ap for ap, _, _ in rows][::-1], color="tab:green")
    ax.axvline(report["mAP"], color="black", linestyle="--", label=f"mAP {report['mAP']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title("attributes: AP per attribute (positives in brackets)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    Location.write_atomic_uri(path, buf.getvalue())
