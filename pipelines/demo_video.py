"""A small synthetic video corpus whose classes need motion to tell apart, for demos and tests.

    python pipelines/demo_video.py --out data/video_demo [--train-per-class 40] [--val-per-class 10] [--seed 0]
    places-demo-video ...                 (the same, installed with the package)

Writes class-per-folder trees ``train/`` and ``val/`` (the UCF-101 layout) of short videos, in the
containers and codecs users have (.mp4 H.264, .avi MPEG-4, .mkv VP9, .webm VP8).  Every video shows
a shape of random colour, size and place over a random textured background, so no single frame
tells its class apart from its motion partner's:

- ``moves_left`` / ``moves_right``: the same drift, opposite directions;
- ``drifts_slowly`` / ``drifts_fast``: a random direction, 1 or 4 pixels per frame;
- ``turns_clockwise`` / ``turns_anticlockwise``: a bar rotating about its centre;
- ``pulses`` / ``stays_still``: a shape whose size oscillates (period 8 frames), or does not move;
- ``red_discs`` / ``blue_squares``: still shapes that one frame tells apart (what a single-frame
  network can learn).

``transfer_train/`` and ``transfer_val/`` play UCF-101's part in the paper's transfer study: few videos
of 4 new classes, all told apart by motion (``moves_up``, ``moves_down``, ``grows``, ``shrinks``).

``train/`` also holds the kinds of file a real video folder holds by mistake, so the sharding
quarantine has something to show: an empty file, a web page saved as .mp4, an audio-only .m4a, a
subtitle file, and a clip too short for a network's input.  Deterministic per seed.

`prepare_video_demo` (what `training/run.py --config configs/video/demo.yaml` or a transfer recipe calls
when the shards are absent) writes the corpus and shards the splits asked for with `pipelines/shard.py
--video`, frames stored at their drawn 96x72.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys

import av
import numpy as np

from common.arguments import positive_int
from common.console import report_failure
from common.tool_settings import new_parser, parse
from pipelines.media.video import encode_video

CLASSES = ("moves_left", "moves_right", "drifts_slowly", "drifts_fast", "turns_clockwise", "turns_anticlockwise",
           "pulses", "stays_still", "red_discs", "blue_squares")
TRANSFER_CLASSES = ("moves_up", "moves_down", "grows", "shrinks")
CONTAINERS = (("mp4", "libx264", ".mp4"), ("avi", "mpeg4", ".avi"), ("matroska", "libvpx-vp9", ".mkv"),
              ("webm", "libvpx", ".webm"))
W, H, FRAMES, FPS = 96, 72, 40, 25
COMPLETE = "corpus.json"  # written last
TRANSFER_COMPLETE = "transfer.json"


def draw(cls: str, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, H, W, 3) uint8 frames of one video of class `cls`."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ground = rng.uniform(40, 140, 3) + 25 * np.sin(xx[..., None] / rng.uniform(4, 12) + rng.uniform(0, 6, 3))
    color = {"red_discs": (220, 40, 40), "blue_squares": (40, 60, 220)}.get(cls) or rng.uniform(120, 255, 3)
    radius = rng.uniform(7, 12)
    x0, y0 = rng.uniform(20, W - 20), rng.uniform(16, H - 16)
    heading = rng.uniform(0, 2 * math.pi)
    speed = {"moves_left": 2.0, "moves_right": 2.0, "drifts_slowly": 1.0, "drifts_fast": 4.0, "moves_up": 2.0,
             "moves_down": 2.0}.get(cls, 0.0)
    dx = {"moves_left": -1.0, "moves_right": 1.0, "moves_up": 0.0, "moves_down": 0.0}.get(cls, math.cos(heading))
    dy = {"moves_left": 0.0, "moves_right": 0.0, "moves_up": -1.0, "moves_down": 1.0}.get(cls, math.sin(heading))
    spin = {"turns_clockwise": 0.15, "turns_anticlockwise": -0.15}.get(cls, 0.0)
    angle0 = rng.uniform(0, math.pi)
    out = np.empty((FRAMES, H, W, 3), np.uint8)
    for t in range(FRAMES):
        cx, cy = (x0 + speed * dx * t) % W, (y0 + speed * dy * t) % H
        if cls.startswith("turns"):  # a bar through the centre at angle a (y grows downwards: + is clockwise)
            a = angle0 + spin * t
            along = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            across = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            mask = (np.abs(along) < 2 * radius) & (np.abs(across) < 3)
        else:
            r = {"pulses": radius * (1 + 0.45 * math.sin(2 * math.pi * t / 8)),
                 "grows": radius * (0.5 + t / FRAMES), "shrinks": radius * (1.5 - t / FRAMES)}.get(cls, radius)
            if cls == "blue_squares":
                mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r)
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        frame = ground.copy()
        frame[mask] = color
        out[t] = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255)
    return out


def audio_track(seconds: float = 1.0) -> bytes:
    """An .mp4 holding one AAC track of a 440 Hz tone and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        tone = np.sin(np.arange(samples, dtype=np.float32) * 2 * math.pi * 440 / 16000)[None] * 0.1
        frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def bad_files(rng: np.random.Generator) -> dict[str, bytes]:
    """What ends up in a video folder by mistake: each must be quarantined with its reason."""
    return {
        "moves_left/empty.mp4": b"",
        "moves_right/download.mp4": b"<!doctype html><title>Video unavailable</title>\n" * 8,
        "pulses/soundtrack.m4a": audio_track(),
        "stays_still/captions.mkv": b"1\n00:00:00,000 --> 00:00:02,000\na shape\n",
        "drifts_fast/too_short.mp4": encode_video(draw("drifts_fast", rng)[:6], FPS, "mp4", "libx264"),
    }


def _write_split(out: str, split: str, classes: tuple[str, ...], n: int, seed: int, first_class: int,
                 containers: tuple) -> int:
    """`n` videos of each class into `out/split/<class>/`, containers in turn; returns how many.  Each video's
    randomness is keyed by (seed, first_class + class index, video, validation or not)."""
    for k, cls in enumerate(classes):
        folder = os.path.join(out, split, cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, first_class + k, i, split.endswith("val")])
            container, codec, ext = containers[(i + k) % len(containers)]
            with open(os.path.join(folder, f"v_{cls}_{i:03d}{ext}"), "wb") as f:
                f.write(encode_video(draw(cls, rng), FPS, container, codec))
    return n * len(classes)


def write(out: str, train_per_class: int, val_per_class: int, seed: int = 0) -> dict[str, int]:
    counts = {split: _write_split(out, split, CLASSES, n, seed, 0, CONTAINERS)
              for split, n in (("train", train_per_class), ("val", val_per_class))}
    for rel, data in bad_files(np.random.default_rng([seed, 99])).items():
        with open(os.path.join(out, "train", rel), "wb") as f:
            f.write(data)
    counts["train_bad"] = 5
    with open(os.path.join(out, COMPLETE), "w") as f:  # last: a corpus cut short is written again
        json.dump({"seed": seed, **counts}, f)
    return counts


def write_transfer(out: str, train_per_class: int, val_per_class: int, seed: int = 0) -> dict[str, int]:
    """The transfer study's small target set: `transfer_train/` and `transfer_val/`, .mp4 only."""
    counts = {split: _write_split(out, split, TRANSFER_CLASSES, n, seed, 100, CONTAINERS[:1])
              for split, n in (("transfer_train", train_per_class), ("transfer_val", val_per_class))}
    with open(os.path.join(out, TRANSFER_COMPLETE), "w") as f:
        json.dump({"seed": seed, **counts}, f)
    return counts


def prepare_video_demo(data: str = "data/video_demo", seed: int = 0, verbose: bool = False,
                       train_per_class: int = 40, val_per_class: int = 10,
                       splits: tuple[str, ...] = ("train", "val")) -> dict[str, dict]:
    """The corpus (when absent) and the shards of `splits` (train, val, transfer_train, transfer_val; when
    unfinished: a rerun resumes them, as `shard.py` does); returns each split's manifest.  The transfer
    set has a quarter of the videos per class."""
    from pipelines.offline.sharding import ShardConfig, run_and_report

    data = os.path.abspath(data)
    if {"train", "val"} & set(splits) and not os.path.exists(os.path.join(data, COMPLETE)):
        counts = write(data, train_per_class, val_per_class, seed)
        print(f"video demo corpus: {counts['train']} train (+ {counts['train_bad']} files to quarantine) / "
              f"{counts['val']} val videos in {data}")
    if {"transfer_train", "transfer_val"} & set(splits) and not os.path.exists(os.path.join(data, TRANSFER_COMPLETE)):
        counts = write_transfer(data, max(1, train_per_class // 4), max(1, val_per_class // 2), seed)
        print(f"video demo transfer set: {counts['transfer_train']} train / {counts['transfer_val']} val videos "
              f"in {data}")
    manifests = {}
    for split in splits:
        out = os.path.join(data, "shards", split)
        if not os.path.exists(os.path.join(out, "manifest.json")):
            cfg = ShardConfig(video=True, image_folder=os.path.join(data, split), out=out, frame_size=H,
                              name=f"video-demo-{split}")
            if run_and_report(cfg, verbose) != 0:
                raise RuntimeError(f"sharding the video demo's {split} split failed")
        with open(os.path.join(out, "manifest.json")) as f:
            manifests[split] = json.load(f)
    return manifests


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, ray=False)
    p.add_argument("--out", required=True, help="folder for OUT/train and OUT/val (videos, lists, classInd.txt)")
    p.add_argument("--train-per-class", type=positive_int, default=40, help="training videos per class")
    p.add_argument("--val-per-class", type=positive_int, default=10, help="validation videos per class")
    p.add_argument("--seed", type=int, default=0, help="seeds the generated videos")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(build_parser(), argv)
    try:
        counts = write(a.out, a.train_per_class, a.val_per_class, a.seed)
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("demo_video.py", exc, a.verbose)
    print(f"wrote {counts['train']} training videos (+ {counts['train_bad']} files to quarantine) and "
          f"{counts['val']} validation videos of {len(CLASSES)} classes in {a.out}/train and {a.out}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
