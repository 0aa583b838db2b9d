"""Clips of stored videos, as Karpathy et al. train and test on them.

A video is a bag of clips.  A training draw of a video (uniform or class-aware over videos, by the same
streams as images) takes one clip at a random start: the frames `offsets` after it that the network
takes (`model.backbone.clip_offsets`: one frame, ten contiguous, or two 15 apart), then one random
`size` x `size` crop and one horizontal flip for every frame of the clip alike (the paper: a random
170 crop of the 178-side frames, and flips).  Testing takes `clips` clips at evenly spaced starts, each
centre-cropped and also mirrored; the video's prediction is their average (`training.video_metrics`).
With `flip` off (classes a mirror changes: moving left or right, turning clockwise or not) neither
training nor testing mirrors.

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


@dataclass(frozen=True)
class ClipTransform:
    offsets: tuple[int, ...]  # frames of a clip, from its first (ascending)
    fps: float  # the stored rate (index.json's `video.fps`)
    size: int = 170
    flip: bool = True  # training flips, and testing also scores each clip's mirror
    clips: int = 20  # testing: clips per video
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not self.offsets or list(self.offsets) != sorted(set(self.offsets)) or self.offsets[0] != 0:
            raise ValueError(f"offsets must be ascending, distinct and start at 0, got {self.offsets}")
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")

    @property
    def views_per_clip(self) -> int:
        return 2 if self.flip else 1

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
        clip = decode_clip(mp4, first, self.offsets, self.fps)
        h, w = clip.shape[1:3]
        side = min(self.size, h, w)
        y0, x0 = rng.randint(0, h - side), rng.randint(0, w - side)
        out = clip[:, y0:y0 + side, x0:x0 + side]
        if self.flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        return _to_tensor(out, self.size)

    def views(self, mp4: bytes, meta: dict, clips: int | None = None) -> torch.Tensor:
        """(views_per_clip x clips, 3, T, S, S): `clips` (default `self.clips`) clips at evenly spaced
        starts, centre crops and (with `flip`) their mirrors, in that order (clip 0, its mirror, clip 1,
        ...).  Always that many, so that a batch of videos is a fixed number of views each: a video with
        fewer starts repeats some."""
        clips = clips or self.clips
        n = self.starts_in(meta)
        starts = [round(i * (n - 1) / (clips - 1)) for i in range(clips)] if clips > 1 else [(n - 1) // 2]
        pairs: dict[int, list[torch.Tensor]] = {}
        for first in starts:
            if first not in pairs:
                clip = decode_clip(mp4, first, self.offsets, self.fps)
                h, w = clip.shape[1:3]
                side = min(self.size, h, w)
                y0, x0 = (h - side) // 2, (w - side) // 2
                centre = clip[:, y0:y0 + side, x0:x0 + side]
                pairs[first] = [_to_tensor(centre, self.size)]
                if self.flip:
                    pairs[first].append(_to_tensor(centre[:, :, ::-1], self.size))
        return torch.stack([view for first in starts for view in pairs[first]])


def _to_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, s, s, 3) uint8 -> (3, T, size, size) uint8, resized when the stored frames were smaller."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()
