"""Clips of stored videos: the frames a network takes, one crop and flip per clip, evenly spaced test
clips, and clips normalised on the device like images."""

import json
import random

import numpy as np
import pytest
import torch

from pipelines.media.video import VideoSettings, encode_video, prepare_video
from pipelines.online.clips import ClipTransform
from pipelines.online.transforms import BatchNormalize


@pytest.fixture(scope="module")
def stored():
    """60 frames at 25 fps, 64x48, frame i gray at level 4i with a white marker on its left half, as a
    shard stores it."""
    frames = np.stack([np.full((48, 64, 3), 4 * i, np.uint8) for i in range(60)])
    frames[:, 20:28, 4:12] = 255
    prepared = prepare_video(encode_video(frames, 25, "matroska", "ffv1"), VideoSettings(fps=25, size=48))
    return prepared.mp4, {**prepared.meta, "source": "left/v.mkv"}


def level(frame: torch.Tensor) -> int:
    """The frame index a clip frame shows, from its gray level away from the marker."""
    return int(round(frame[:, -8:, -8:].float().mean().item() / 4))


def test_training_clip_takes_the_networks_frames_with_one_crop_and_flip(stored):
    mp4, meta = stored
    t = ClipTransform(offsets=tuple(range(10)), fps=25, size=40)
    flips = set()
    for seed in range(12):
        clip = t(mp4, meta, random.Random(seed))
        assert clip.shape == (3, 10, 40, 40) and clip.dtype == torch.uint8
        first = level(clip[:, 0])
        assert [level(clip[:, k]) for k in range(10)] == [first + k for k in range(10)]
        assert 0 <= first <= 60 - 10
        marker = (clip[0] > 250).float().mean((0, 1))  # where the marker's columns are, every frame alike
        assert ((clip[0] > 250) == (clip[0, :1] > 250)).all()
        flips.add(bool(marker[: 20].sum() < marker[20:].sum()))
    assert flips == {False, True}  # mirrored clips move the marker to the right half
    again = t(mp4, meta, random.Random(3))
    assert torch.equal(again, t(mp4, meta, random.Random(3)))  # a function of the draw's generator


def test_late_fusion_frames_fifteen_apart(stored):
    mp4, meta = stored
    clip = ClipTransform(offsets=(0, 15), fps=25, size=48, flip=False)(mp4, meta, random.Random(0))
    assert level(clip[:, 1]) - level(clip[:, 0]) == 15


def test_test_views_are_evenly_spaced_clips_and_their_mirrors(stored):
    mp4, meta = stored
    views = ClipTransform(offsets=tuple(range(10)), fps=25, size=40).views(mp4, meta, clips=4)
    assert views.shape == (8, 3, 10, 40, 40)
    assert [level(v[:, 0]) for v in views] == [0, 0, 17, 17, 33, 33, 50, 50]  # starts 0 .. 50 of 51
    assert torch.equal(views[1], views[0].flip(-1))


def test_every_video_gives_the_same_number_of_views(stored):
    mp4, meta = stored  # 51 starts for a 10-frame clip: 60 clips repeat some, so batches stay rectangular
    t = ClipTransform(offsets=tuple(range(10)), fps=25, size=40, clips=60)
    views = t.sample_views({"mp4": mp4, "json": json.dumps(meta).encode()})
    assert views.shape == (120, 3, 10, 40, 40)
    starts = [level(v[:, 0]) for v in views[::2]]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 50 and len(set(starts)) == 51


def test_a_sample_is_read_from_its_members(stored):
    mp4, meta = stored
    t = ClipTransform(offsets=(0, 15), fps=25, size=48)
    clip, extras = t.sample({"mp4": mp4, "json": json.dumps(meta).encode(), "cls": b"0"}, random.Random(5))
    assert extras == [] and torch.equal(clip, t(mp4, meta, random.Random(5)))


def test_a_video_too_short_for_the_clip_is_named(stored):
    mp4, meta = stored
    with pytest.raises(EOFError, match=r"left/v.mkv: 60 frames, a clip spans 61"):
        ClipTransform(offsets=(0, 60), fps=25)(mp4, meta, random.Random(0))
    with pytest.raises(ValueError, match="ascending"):
        ClipTransform(offsets=(0, 15, 5), fps=25)


def test_clips_normalise_like_images():
    norm = BatchNormalize((0.5, 0.25, 0.0), (0.5, 0.5, 1.0))
    clips = torch.full((2, 3, 4, 5, 5), 255, dtype=torch.uint8)
    out = norm(clips)
    assert out.shape == (2, 3, 4, 5, 5)
    torch.testing.assert_close(out[:, :, 0, 0, 0], torch.tensor([[1.0, 1.5, 1.0]] * 2))
    torch.testing.assert_close(norm(clips[:, :, 0]), out[:, :, 0])  # an image batch: the same numbers
