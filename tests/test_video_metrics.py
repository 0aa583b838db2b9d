"""Clip and Video Hit@k with multi-label videos, and the averaging of clips and of networks."""

import numpy as np
import pytest
import torch

from training.topk import hits_at
from training.video_metrics import cnn_average, hit_report, video_scores


def multi_hot(labels: list[list[int]], classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes), dtype=bool)
    for i, ls in enumerate(labels):
        out[i, ls] = True
    return out


def test_a_hit_is_any_label_in_the_top_k():
    scores = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    targets = multi_hot([[1, 3], [3], [2]], 4)
    assert hits_at(scores, targets, 1).tolist() == [False, True, False]
    assert hits_at(scores, targets, 2).tolist() == [True, True, False]
    assert hits_at(scores, targets, 3).tolist() == [True, True, True]
    assert hits_at(scores, targets, 10).tolist() == [True, True, True]


def test_video_prediction_averages_its_clips():
    clip_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    clip_video = np.array([0, 0, 0, 1, 2])  # video 0 has three clips
    np.testing.assert_allclose(np.exp(video_scores(np.log(clip_probs), clip_video, 3)),
                               [[1.4 / 3, 1.6 / 3], [0.6, 0.4], [0.1, 0.9]])
    report = hit_report(np.log(clip_probs), clip_video, multi_hot([[1], [0], [0, 1]], 2))
    # clips: 0 miss, 1 hit, 2 hit (video 0's label 1); 3 hit; 4 hit (video 2 has both labels)
    assert report["clip_hit@1"] == pytest.approx(4 / 5)
    assert report["video_hit@1"] == 1.0  # video 0 averages to class 1: the clips outvote the confident one
    assert report["per_class"] == {"0": {"videos": 2, "video_hit@1": 1.0, "video_hit@5": 1.0},
                                   "1": {"videos": 2, "video_hit@1": 1.0, "video_hit@5": 1.0}}


def test_a_video_without_clips_is_refused():
    with pytest.raises(ValueError, match=r"without clips: \[1\]"):
        video_scores(np.ones((2, 3)), np.array([0, 2]), 3)


def test_cnn_average_of_networks():
    a, b = np.array([[0.6, 0.4]]), np.array([[0.0, 1.0]])
    with np.errstate(divide="ignore"):  # log(0) = -inf, a posterior of exactly 0
        np.testing.assert_allclose(np.exp(cnn_average([np.log(a), np.log(b)])), [[0.3, 0.7]])


def test_at_sports1m_size_matches_a_plain_loop():
    """487 classes, 20 clips per video in shuffled order, up to 3 labels per video: the vectorised report
    equals the definition computed video by video."""
    rng = np.random.default_rng(0)
    videos, classes, clips = 2000, 487, 20
    targets = multi_hot([rng.choice(classes, rng.integers(1, 4), replace=False).tolist() for _ in range(videos)],
                        classes)
    clip_video = rng.permutation(np.repeat(np.arange(videos), clips))
    logits = rng.normal(size=(len(clip_video), classes)) + 3 * targets[clip_video] * rng.random((len(clip_video), 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = hit_report(np.log(probs), clip_video, targets)
    hit1 = hit5 = 0
    for v in range(videos):
        mean = probs[clip_video == v].mean(0)
        top = np.argsort(-mean)[:5]
        hit1 += targets[v, top[0]]
        hit5 += targets[v, top].any()
    clip_hit = np.mean([targets[v, np.argmax(p)] for p, v in zip(probs, clip_video)])
    assert report["video_hit@1"] == pytest.approx(hit1 / videos)
    assert report["video_hit@5"] == pytest.approx(hit5 / videos)
    assert report["clip_hit@1"] == pytest.approx(clip_hit)
    assert report["clips"] == videos * clips and report["videos"] == videos
    assert 0.2 < report["clip_hit@1"] < report["video_hit@1"] < report["video_hit@5"] < 1  # averaging helps


def test_averages_in_log_space_rank_what_float32_probabilities_tie():
    """Logits of +-2000: float32 softmax outputs are exactly 0 past the first class, so ranks 2-5 would be
    ties; log posteriors averaged in log space keep them apart, and equal scores go to the lower class."""
    from training.topk import log_mean_exp, top_classes

    logits = torch.tensor([[2000.0, -2000.0, 1500.0, 1000.0, -1000.0, 1500.0]] * 3)
    logits[1] += torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # a second view: class 2 a little higher
    assert (logits.softmax(1)[:, 1:] == 0).all()  # what ranking probabilities would tie
    mean = log_mean_exp(logits.log_softmax(1), 0)
    assert top_classes(mean[None], 6).tolist() == [[0, 2, 5, 3, 4, 1]]
    assert top_classes(np.zeros((1, 4)), 5).tolist() == [[0, 1, 2, 3]]  # ties: the lower class first
    clips = logits.log_softmax(1).numpy().astype(np.float32)
    per_video = video_scores(clips, np.array([0, 0, 0]), 1)
    assert top_classes(per_video, 5).tolist() == [[0, 2, 5, 3, 4]]


def test_top_errors_count_a_hit_on_any_of_a_samples_classes():
    from training.topk import multi_hot, top_errors

    targets = multi_hot(np.array([0, 2, 1]), np.array(["0,3", "", "1,0,2"], dtype=object), 4)
    assert targets.tolist() == [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]]
    probs = np.array([[0.1, 0.2, 0.3, 0.4],  # top-1 is 3: one of its classes
                      [0.4, 0.3, 0.2, 0.1],  # its class 2 third
                      [0.1, 0.2, 0.3, 0.4]])  # top-1 3, its classes 0-2 below: a top-5 hit only
    report = top_errors(probs, targets)
    assert report["top1_error"] == pytest.approx(2 / 3) and report["top5_error"] == 0
    assert report["per_class"]["0"] == {"count": 2, "top1_error": 0.5, "top5_error": 0.0}
    assert report["per_class"]["3"] == {"count": 1, "top1_error": 0.0, "top5_error": 0.0}
    one = top_errors(probs, multi_hot(np.array([3, 0, 1]), np.array(["", "", ""], dtype=object), 4))
    assert (one["top1_error"], sorted(one["per_class"])) == (pytest.approx(1 / 3), ["0", "1", "3"])
