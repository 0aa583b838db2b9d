"""How a sharded video should be stored: re-encoded video, or its frames as JPEGs.  Size per video and
the cost of what training does with it, one random clip per draw, measured on the same frames.

    python benchmarks/video_storage.py [--videos 12] [--seconds 7] [--fps 25] [--size 178]

The frames are synthetic (this machine has no video corpus): textured shapes moving over a textured
background, with per-frame sensor noise (sigma 3), at the sharder's frame size (shorter side 178,
4:3), UCF-101's 25 fps and about its mean length (7 s).  Contenders:
- `h264_gopN`: one H.264 stream (libx264, crf 23, preset fast), a keyframe every N frames; a clip is a
  seek to the keyframe at or before its first frame, then decoding up to its last frame (the clip
  decoder training uses, `media.video.decode_clip`);
- `jpeg_qQ`: one JPEG per frame (Pillow, quality Q); a clip decodes its T frames only.
Per contender: KB per video and per second of video, and per clip (T = 10 contiguous frames, early and
slow fusion's input, and T = 2 frames 15 apart, late fusion's) the decode time in ms on one core (one
decoder thread), from the stored bytes to RGB arrays.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time

import numpy as np
from PIL import Image

from pipelines.media.video import decode_clip, encode_video


def synthetic_video(rng: np.random.Generator, frames: int, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    background = (96 + 60 * np.sin(xx / rng.uniform(5, 15)) * np.cos(yy / rng.uniform(5, 15)))[..., None]
    background = np.clip(background + rng.normal(0, 20, (h, w, 3)), 0, 255)
    out = np.empty((frames, h, w, 3), np.uint8)
    shapes = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-3, 3), rng.uniform(-2, 2), rng.uniform(10, 30),
               rng.uniform(0, 255, 3)) for _ in range(4)]
    for t in range(frames):
        img = background.copy()
        for x, y, vx, vy, r, color in shapes:
            cx, cy = (x + vx * t) % w, (y + vy * t) % h
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[mask] = color * (0.8 + 0.2 * np.sin((xx[mask] + yy[mask]) / 3))[:, None]
        out[t] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    return out


def clip_jpeg(jpegs: list[bytes], first: int, offsets: tuple[int, ...]) -> int:
    for o in offsets:
        np.asarray(Image.open(io.BytesIO(jpegs[first + o])).convert("RGB"))
    return len(offsets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seconds", type=float, default=7.0)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", type=int, default=178)
    p.add_argument("--clips", type=int, default=200, help="timed clips per contender and clip kind")
    a = p.parse_args()
    rng, pick = np.random.default_rng(0), random.Random(0)
    n, h = int(a.seconds * a.fps), a.size
    w = int(round(h * 4 / 3 / 2)) * 2
    videos = [synthetic_video(rng, n, w, h) for _ in range(a.videos)]
    contenders = {f"h264_gop{g}": ("h264", g) for g in (12, 25, 50)} | {f"jpeg_q{q}": ("jpeg", q) for q in (75, 90)}
    clip_kinds = {"t10_contiguous": tuple(range(10)), "t2_15_apart": (0, 15)}
    results = {}
    for name, (kind, arg) in contenders.items():
        start = time.perf_counter()
        if kind == "h264":
            stored = [encode_video(v, a.fps, "mp4", "libx264", {"crf": "23", "g": str(arg), "preset": "fast"})
                      for v in videos]
            size = sum(len(s) for s in stored)
        else:
            stored = []
            for v in videos:
                jpegs = []
                for frame in v:
                    buf = io.BytesIO()
                    Image.fromarray(frame).save(buf, "JPEG", quality=arg)
                    jpegs.append(buf.getvalue())
                stored.append(jpegs)
            size = sum(len(j) for js in stored for j in js)
        encode_s = time.perf_counter() - start
        row = {"kb_per_video": round(size / len(videos) / 1024, 1),
               "kb_per_second": round(size / len(videos) / a.seconds / 1024, 1),
               "encode_ms_per_video": round(encode_s / len(videos) * 1000, 1)}
        for clip_name, offsets in clip_kinds.items():
            draws = [(pick.randrange(len(stored)), pick.randrange(n - offsets[-1])) for _ in range(a.clips)]
            start = time.perf_counter()
            for v, first in draws:
                got = len(decode_clip(stored[v], first, offsets, a.fps)) if kind == "h264" else \
                    clip_jpeg(stored[v], first, offsets)
                assert got == len(offsets), (name, v, first, got)
            row[f"{clip_name}_ms_per_clip"] = round((time.perf_counter() - start) / a.clips * 1000, 2)
        results[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    print(json.dumps({"videos": a.videos, "seconds": a.seconds, "fps": a.fps, "frame": [w, h],
                      "frames_per_video": n, "clips_timed": a.clips, "contenders": results}, indent=1))


if __name__ == "__main__":
    main()
