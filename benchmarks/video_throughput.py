"""Video training-input throughput: our clip stream from video shards vs the PyAV DataLoader users write.

    python benchmarks/video_throughput.py [--videos 200] [--loader-workers 1] [--batch-size 16] [--frames 10]

Prints JSON.  A folder of `--videos` H.264 .mp4 files at 320x240, 25 fps, 40 frames (the demo's moving
shapes, drawn larger) is written once and sharded by `pipelines/shard.py --video` at the paper's frame
size (178 shorter side).  Both contenders deliver the same thing: per video a clip of `--frames`
contiguous frames at a random start, one random 170x170 crop and flip for the whole clip, as
normalised float (N, 3, T, 170, 170) batches, with the same DataLoader workers and batch size, for one
pass over the videos after a warm-up batch.

- ours: `ShardLoader` (uniform) with `ClipTransform`: one range read of the stored video per sample,
  then decoding from the keyframe before the clip (the shards store a keyframe a second) to its end;
- peer: a `Dataset` over the files that opens each with PyAV, decodes from the start until the clip's
  last frame (it stops there, better than `read_video`'s whole video), resizes every frame to 178 on
  the shorter side, then crops, flips and normalises: what torchvision's and PyTorchVideo's examples do.

"per core" = clips/s / workers (each DataLoader worker is one process on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.tool_settings import add_old_spelling
from pipelines.online.clips import ClipTransform
from pipelines.online.loader import LoaderConfig, ShardLoader
from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE, CROP, FPS = 178, 170, 25


def make_videos(root: str, n: int) -> None:
    """`n` mp4 files in class folders: demo videos upscaled to 320x240."""
    from pipelines import demo_video
    from pipelines.media.video import encode_video

    for i in range(n):
        cls = demo_video.CLASSES[i % len(demo_video.CLASSES)]
        frames = torch.from_numpy(demo_video.draw(cls, np.random.default_rng(i))).permute(0, 3, 1, 2)
        big = F.interpolate(frames.float(), size=(240, 320), mode="bilinear", align_corners=False)
        folder = os.path.join(root, cls)
        os.makedirs(folder, exist_ok=True)
        data = encode_video(big.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), FPS, "mp4", "libx264")
        with open(os.path.join(folder, f"v{i:05d}.mp4"), "wb") as f:
            f.write(data)


class PyAVClips(Dataset):
    """The peer: decode the file with PyAV up to a random clip, resize, crop, flip, normalise."""

    def __init__(self, files: list[str], frames: int):
        self.files, self.frames = files, frames
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = random.Random(i)
        with av.open(self.files[i]) as container:
            stream = container.streams.video[0]
            total = stream.frames or 40
            first = rng.randrange(max(1, total - self.frames + 1))
            clip = []
            for k, frame in enumerate(container.decode(stream)):
                if k >= first:
                    clip.append(frame.to_ndarray(format="rgb24"))
                if len(clip) == self.frames:
                    break
        x = torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(SIZE, round(w * SIZE / h)) if h <= w else (round(h * SIZE / w), SIZE),
                          mode="bilinear", antialias=True, align_corners=False)
        y0, x0 = rng.randint(0, x.shape[-2] - CROP), rng.randint(0, x.shape[-1] - CROP)
        x = x[..., y0:y0 + CROP, x0:x0 + CROP]
        if rng.random() < 0.5:
            x = x.flip(-1)
        return (x.permute(1, 0, 2, 3) / 255 - self.mean) / self.std, 0


def timed(batches, warmup: int = 1) -> tuple[int, float]:
    """(clips, seconds) of one pass, after `warmup` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    clips, start = 0, time.perf_counter()
    for x, _ in it:
        clips += len(x)
    return clips, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=10, help="clip length: 10 (early/slow fusion), 1 (single frame)")
    p.add_argument("--keep", help="a folder to build the corpus and shards in (kept; reused when present)")
    add_old_spelling(p, "--batch", "--batch-size")
    add_old_spelling(p, "--workers", "--loader-workers")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = a.keep or tempfile.mkdtemp(prefix="video-throughput-")
    videos, shards = os.path.join(work, "videos"), os.path.join(work, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        from pipelines.offline.sharding import ShardConfig, run_and_report

        make_videos(videos, a.videos)
        if run_and_report(ShardConfig(video=True, image_folder=videos, out=shards, frame_size=SIZE, fps=FPS)) != 0:
            raise SystemExit("sharding the benchmark's videos failed")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(videos) for f in fs)

    clips = ClipTransform(offsets=tuple(range(a.frames)), fps=FPS, size=CROP)
    ours = ShardLoader(LoaderConfig(shards=shards, mode="uniform", batch_size=a.batch_size,
                                    num_workers=a.loader_workers), clips)
    n_ours, s_ours = timed(ours.epoch(0))
    peer = DataLoader(PyAVClips(files, a.frames), batch_size=a.batch_size, shuffle=True, num_workers=a.loader_workers,
                      persistent_workers=False)
    n_peer, s_peer = timed(peer)
    stored = sum(os.path.getsize(os.path.join(shards, f)) for f in os.listdir(shards) if f.endswith(".tar"))
    result = {
        "videos": len(files), "workers": a.loader_workers, "batch": a.batch_size, "clip_frames": a.frames, "crop": CROP,
        "stored_frame_size": SIZE, "source": "320x240 H.264 mp4, 25 fps, 40 frames",
        "ours_clips_per_s": n_ours / s_ours, "ours_clips_per_s_per_core": n_ours / s_ours / max(1, a.loader_workers),
        "peer_pyav_clips_per_s": n_peer / s_peer,
        "peer_pyav_clips_per_s_per_core": n_peer / s_peer / max(1, a.loader_workers),
        "speedup": (n_ours / s_ours) / (n_peer / s_peer),
        "bytes_per_video_sources": sum(map(os.path.getsize, files)) / len(files),
        "bytes_per_video_shards": stored / len(files),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
