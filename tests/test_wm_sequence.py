"""The job's WM sequence at the size the mission runs it: 365 classes of 4k-40k images, 64 streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.stats import chisquare, spearmanr

from pipelines.online.wm_sequence import WMSequence, job_draw, permute, stream_index

PLACES = {k: int(n) for k, n in enumerate(np.geomspace(4000, 40000, 365).round())}  # Places-like imbalance


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_permute_is_a_bijection_chosen_by_its_key(n):
    first = [permute(i, n, ("a", 1)) for i in range(n)]
    assert sorted(first) == list(range(n))
    assert first == [permute(i, n, ("a", 1)) for i in range(n)]
    if n >= 64:
        assert first != [permute(i, n, ("a", 2)) for i in range(n)]


@pytest.mark.parametrize("streams,batch", [(1, 1), (2, 3), (8, 4), (64, 32)])
def test_the_streams_share_out_the_draws_exactly(streams, batch):
    """W x K streams, each taking its own blocks: every draw of the job once, none twice."""
    taken = 5 * batch + 3
    drawn = [job_draw(t, s, streams, batch, start=17) for s in range(streams) for t in range(taken)]
    assert len(set(drawn)) == len(drawn)
    complete = streams * batch * 5  # every stream has taken its first 5 blocks
    assert set(range(17, 17 + complete)) <= set(drawn)
    # at step t, rank r's batch comes from worker t % K: the W ranks' batches are consecutive blocks
    world, workers = 4, streams // 4 or 1
    if streams % 4 == 0:
        for t in range(6):
            blocks = [job_draw((t // workers) * batch, stream_index(r, world, t % workers), world * workers, batch)
                      for r in range(world)]
            assert blocks == [(t * world + r) * batch for r in range(world)]


def class_draws(sequence: WMSequence, k: int, count: int) -> list[int]:
    """Class k's first `count` draws of the job."""
    return [sequence.class_draw(k, j) for j in range(count)]


def test_a_class_draw_is_its_draw_in_the_jobs_sequence():
    sequence = WMSequence({0: 5, 1: 3, 2: 4}, seed=1)
    seen = {k: [] for k in range(3)}
    for g in range(3 * 20):
        k, i = sequence.draw(g)
        seen[k].append(i)
    assert all(seen[k] == class_draws(sequence, k, 20) for k in range(3))


def test_at_places_scale_each_class_is_drawn_whole_before_any_repeat_in_a_fresh_order():
    sequence = WMSequence(PLACES, seed=7)
    for k in (0, 182, 364):  # the smallest, a middle and the largest class
        n = PLACES[k]
        draws = class_draws(sequence, k, 2 * n)
        assert sorted(draws[:n]) == sorted(draws[n:]) == list(range(n))  # 100% distinct, each pass
        rho = spearmanr(np.argsort(draws[:n]), np.argsort(draws[n:])).statistic
        assert abs(rho) < 0.1, rho  # pass-to-pass order unrelated


def test_class_counts_are_uniform_in_every_prefix():
    sequence = WMSequence(PLACES, seed=3)
    classes = len(PLACES)
    counts = np.zeros(classes, int)
    for g in range(classes * 40 + 123):
        counts[sequence.draw(g)[0]] += 1
    assert counts.max() - counts.min() <= 1  # each cycle draws every class once
    assert chisquare(counts).pvalue > 0.999


def test_a_reference_wm_sampler_and_ours_agree_on_what_matters():
    """The in-memory procedure (`random.shuffle` over full lists) against ours: same class balance per
    cycle, same coverage; ours needs no list."""
    counts = {0: 30, 1: 7, 2: 12}
    rng = random.Random(0)
    lists = {k: [] for k in counts}
    reference = []
    for _ in range(60):
        order = list(counts)
        rng.shuffle(order)
        for k in order:
            if not lists[k]:
                lists[k] = list(range(counts[k]))
                rng.shuffle(lists[k])
            reference.append((k, lists[k].pop()))
    ours = [WMSequence(counts, seed=0).draw(g) for g in range(len(reference))]
    for draws in (reference, ours):
        per_class = {k: [i for c, i in draws if c == k] for k in counts}
        assert all(len(v) == 60 for v in per_class.values())
        for k, n in counts.items():
            assert all(sorted(per_class[k][p * n:(p + 1) * n]) == list(range(n)) for p in range(60 // n))
