"""Clips of stored videos, as Karpathy et al. train and test on them.

A video is a bag of clips.  A training draw of a video (uniform or class-aware over videos, by the same
streams as images) takes one clip at a random start: the frames `offsets` after it that the network
takes (`model.backbone.clip_offsets`: one frame, ten contiguous, or two 15 apart), then one random
`size` x `size` crop and one horizontal flip for every frame of the clip alike.  With `region` set,
the crops come from each frame's centre square resized to `region` x `region` (the paper's full-frame
networks: the centre region resized to 200, random 170 crops, flips); without it, from the stored
frames as they are.  Testing takes `clips` clips at evenly spaced starts, and of each the views
`test_views` names: `centre` (the centre crop and its mirror) or `four` (the paper's "4 times, with
different crops and flips": two opposite corners of the region, each with its mirror); the video's
prediction is their average (`training.video_metrics`).  With `flip` off (classes a mirror changes:
moving left or right, turning clockwise or not) neither training nor testing mirrors: `centre` is
the centre crop alone and `four` the four corners.

Clips leave here as uint8 (3, T, S, S) tensors; `transforms.BatchNormalize` finishes a batch of them on
the training device, as it does images.  `sample` and `sample_views` take a stored sample's members, as
`TrainTransform` and `EvalTransform` do, so the loaders treat images and videos alike.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.media.video import decode_clip
from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize

TEST_VIEWS = ("centre", "four")  # ClipTransform.test_views


@dataclass(frozen=True)
class ClipTransform:
    offsets: tuple[int, ...]  # frames of a clip, from its first (ascending)
    fps: float  # the stored rate (index.json's `video.fps`)
    size: int = 170
    flip: bool = True  # training flips, and testing also scores each clip's mirror
    clips: int = 20  # testing: clips per video
    region: int | None = None  # crop from each frame's centre square resized to this side; None: the stored frames
    test_views: str = "centre"  # testing, per clip: centre (crop and mirror) | four (two corners and their mirrors)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not self.offsets or list(self.offsets) != sorted(set(self.offsets)) or self.offsets[0] != 0:
            raise ValueError(f"offsets must be ascending, distinct and start at 0, got {self.offsets}")
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.region is not None and self.region < self.size:
            raise ValueError(f"region {self.region} is smaller than the crop size {self.size}")
        if self.test_views not in TEST_VIEWS:
            raise ValueError(f"test_views must be one of {', '.join(TEST_VIEWS)}, got {self.test_views!r}")

    @property
    def views_per_clip(self) -> int:
        return 4 if self.test_views == "four" else 2 if self.flip else 1

    @property
    def span(self) -> int:
        return self.offsets[-1] + 1

    def starts_in(self, meta: dict) -> int:
        """How many clip starts the video offers; a video shorter than one clip is an error naming it."""
        n = int(meta["frames"]) - self.span + 1
        if n < 1:
            raise EOFError(f"{meta.get('source', 'a video')}: {meta['frames']} frames, a clip spans {self.span} "
                           f"(shard with --min-frames {self.span} or more)")
        return n

    def sample(self, members: dict[str, bytes], rng: random.Random) -> tuple[torch.Tensor, list[float]]:
        """A stored video's training clip, and no colour-noise draws (the loader's per-sample extras)."""
        return self(members["mp4"], json.loads(members["json"]), rng), []

    def sample_views(self, members: dict[str, bytes]) -> torch.Tensor:
        return self.views(members["mp4"], json.loads(members["json"]))

    def batch_normalizer(self) -> BatchNormalize:
        return BatchNormalize(self.mean, self.std)

    normalizer = batch_normalizer  # (testing views are normalised alike)

    def __call__(self, mp4: bytes, meta: dict, rng: random.Random) -> torch.Tensor:
        """One training clip: random start, crop and flip."""
        first = rng.randrange(self.starts_in(meta))
        clip = self._frames(mp4, first)
        h, w = clip.shape[1:3]
        side = min(self.size, h, w)
        y0, x0 = rng.randint(0, h - side), rng.randint(0, w - side)
        out = clip[:, y0:y0 + side, x0:x0 + side]
        if self.flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        return _to_tensor(out, self.size)

    def views(self, mp4: bytes, meta: dict, clips: int | None = None) -> torch.Tensor:
        """(clips x views_per_clip, 3, T, S, S): `clips` (default `self.clips`) clips at evenly spaced
        starts, each clip's views in `test_views`' order (clip 0's, then clip 1's, ...).  Always that
        many, so that a batch of videos is a fixed number of views each: a video with fewer starts
        repeats some."""
        clips = clips or self.clips
        n = self.starts_in(meta)
        starts = [round(i * (n - 1) / (clips - 1)) for i in range(clips)] if clips > 1 else [(n - 1) // 2]
        per_start: dict[int, list[torch.Tensor]] = {}
        for first in starts:
            if first not in per_start:
                per_start[first] = self._clip_views(self._frames(mp4, first))
        return torch.stack([view for first in starts for view in per_start[first]])

    def _frames(self, mp4: bytes, first: int) -> np.ndarray:
        """The clip's frames from `first`, (T, H, W, 3) uint8: stored, or their centre region resized."""
        clip = decode_clip(mp4, first, self.offsets, self.fps)
        return clip if self.region is None else _centre_region(clip, self.region)

    def _clip_views(self, clip: np.ndarray) -> list[torch.Tensor]:
        h, w = clip.shape[1:3]
        side = min(self.size, h, w)
        crop = lambda y0, x0: clip[:, y0:y0 + side, x0:x0 + side]  # noqa: E731
        if self.test_views == "four":
            far_y, far_x = h - side, w - side
            if self.flip:
                crops = [crop(0, 0), crop(0, 0)[:, :, ::-1], crop(far_y, far_x), crop(far_y, far_x)[:, :, ::-1]]
            else:
                crops = [crop(0, 0), crop(0, far_x), crop(far_y, 0), crop(far_y, far_x)]
        else:
            centre = crop((h - side) // 2, (w - side) // 2)
            crops = [centre, centre[:, :, ::-1]] if self.flip else [centre]
        return [_to_tensor(c, self.size) for c in crops]


def _centre_region(frames: np.ndarray, side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the centre min(H, W) square of every frame, resized to side x side."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    square = frames[:, y0:y0 + s, x0:x0 + s]
    if s == side:
        return square
    return _resize(torch.from_numpy(np.ascontiguousarray(square)).permute(0, 3, 1, 2), side).permute(0, 2, 3, 1).numpy()


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, side, side) uint8, antialiased bilinear."""
    return torch.nn.functional.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True,
                                           align_corners=False).round_().clamp_(0, 255).to(torch.uint8)


def _to_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, s, s, 3) uint8 -> (3, T, size, size) uint8, resized when the stored frames were smaller."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    if x.shape[-1] != size:
        x = _resize(x, size)
    return x.contiguous()
