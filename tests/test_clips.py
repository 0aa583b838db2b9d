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


def marker_at(view: torch.Tensor) -> tuple[int, int] | None:
    """The top-left (row, column) of the white marker in a view's first frame, or None."""
    found = (view[0, 0] > 250).nonzero()
    return tuple(found.min(0).values.tolist()) if len(found) else None


def test_four_test_views_are_two_opposite_corners_and_their_mirrors(stored):
    mp4, meta = stored  # 64x48 frames, the marker at rows 20:28, columns 4:12
    t = ClipTransform(offsets=tuple(range(10)), fps=25, size=40, test_views="four")
    views = t.views(mp4, meta, clips=3)
    assert t.views_per_clip == 4 and views.shape == (12, 3, 10, 40, 40)
    assert [level(v[:, 0]) for v in views] == [0] * 4 + [25] * 4 + [50] * 4
    for clip in views.view(3, 4, 3, 10, 40, 40):
        assert torch.equal(clip[1], clip[0].flip(-1)) and torch.equal(clip[3], clip[2].flip(-1))
        assert marker_at(clip[0]) == (20, 4)  # rows 0:40, columns 0:40 of the frame
        assert marker_at(clip[2]) is None  # rows 8:48, columns 24:64: the marker is outside
    corners = ClipTransform(offsets=tuple(range(10)), fps=25, size=40, flip=False, test_views="four")
    views = corners.views(mp4, meta, clips=1)
    assert views.shape == (4, 3, 10, 40, 40)  # without mirrors: the four corners
    assert [marker_at(v) for v in views] == [(20, 4), None, (12, 4), None]


@pytest.fixture(scope="module")
def pillarboxed():
    """30 gray 64x48 frames with black bars outside their centre square (columns 8:56), and an 8x8
    white marker inside it."""
    frames = np.full((30, 48, 64, 3), 100, np.uint8)
    frames[:, :, :8] = frames[:, :, 56:] = 0
    frames[:, 16:24, 28:36] = 255
    prepared = prepare_video(encode_video(frames, 25, "matroska", "ffv1"), VideoSettings(fps=25, size=48))
    return prepared.mp4, prepared.meta


def test_a_region_takes_each_frames_centre_square_resized(pillarboxed):
    mp4, meta = pillarboxed
    sees_bars = lambda clip: bool((clip < 40).any())  # noqa: E731
    stored = ClipTransform(offsets=(0, 1), fps=25, size=48)
    assert any(sees_bars(stored(mp4, meta, random.Random(seed))) for seed in range(8))
    square = ClipTransform(offsets=(0, 1), fps=25, size=40, region=48)
    assert not any(sees_bars(square(mp4, meta, random.Random(seed))) for seed in range(8))
    whole = ClipTransform(offsets=(0, 1), fps=25, size=96, region=96, flip=False).views(mp4, meta, clips=2)
    assert whole.shape == (2, 3, 2, 96, 96) and not sees_bars(whole)
    white = int((whole[0, 0, 0] > 200).sum())
    assert 4 * 64 * 0.8 < white < 4 * 64 * 1.3  # the 48-pixel square at 96: twice as wide and as high
    with pytest.raises(ValueError, match="region 32 is smaller than the crop size 40"):
        ClipTransform(offsets=(0, 1), fps=25, size=40, region=32)
    with pytest.raises(ValueError, match="test_views must be one of centre, four"):
        ClipTransform(offsets=(0, 1), fps=25, test_views="ten")


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
