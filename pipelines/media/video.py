"""Video files as users have them -> frames at a fixed rate and size, or the reason a file is refused.

PyAV (FFmpeg inside its wheels) demuxes and decodes whatever FFmpeg knows: .avi, .mp4, .mkv, .webm with
H.264, MPEG-4, VP8/9, AV1 ...  The first video stream is used.  Frames are resampled to `fps` by time:
output frame k is the input frame on screen at k / fps (the last one whose presentation time is <= it),
so frames are repeated or dropped, never blended, and a 30 and a 25 fps copy of the same scene give
clips of the same duration.  Each frame is converted once, to RGB at the target size (FFmpeg's area
filter when shrinking), with its display rotation applied.

A file is refused with one code of `REASONS`, the quarantine report's vocabulary.  A stream that breaks
off mid-way keeps the frames decoded before the break when they are enough for a clip (`truncated`), as
a truncated download still holds its first seconds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

REASONS = {
    "zero_length": "the file is empty",
    "undecodable": "FFmpeg cannot open or decode it",
    "no_video_stream": "no video stream (and no audio either)",
    "audio_only": "audio streams only",
    "unsupported_codec": "its video codec is not one this FFmpeg decodes",
    "too_short": "fewer frames than one clip needs",
    "too_long": "more frames than fit in the memory one video may take",
}
RESIZE_MODES = ("shorter", "square")


class VideoRejected(Exception):
    """As `images.ImageRejected`: `code` is one of REASONS, `reason` the quarantine report's line."""

    def __init__(self, code: str, detail: str = ""):
        assert code in REASONS, code
        super().__init__(f"{code}: {detail or REASONS[code]}")
        self.code = code
        self.reason = str(self)


@dataclass(frozen=True)
class VideoSettings:
    """`size`: the shorter side (`resize: shorter`, aspect kept, both sides even) or both sides
    (`square`).  `min_frames`: the longest clip a network takes (late fusion: frames 0 and 15).
    `max_frames`: keep at most this many frames from the start (0: all), for hour-long videos.
    `max_bytes`: the decoded frames of one video are held in memory until it is encoded: a video with
    more (a long one, or a timestamp gap of an hour in a small file) is refused (`too_long`)."""

    fps: float = 25.0
    size: int = 178
    resize: str = "shorter"
    min_frames: int = 16
    max_frames: int = 0
    crf: int = 23  # H.264 quality of the stored video (lower: better, larger)
    max_bytes: int = 2 << 30  # 2 GiB: 8 minutes at 25 fps of 178x316 frames

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.fps <= 0 or self.size < 2 or self.min_frames < 1 or self.max_frames < 0 or not 0 <= self.crf <= 51:
            raise ValueError(f"fps > 0, size >= 2, min_frames >= 1, max_frames >= 0 and crf in [0, 51], got {self}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize == "square":
            return self.size, self.size
        scale = self.size / min(width, height)
        even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731  (4:2:0 encoders need even sides)
        return (self.size, even(height)) if width <= height else (even(width), self.size)


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, T frames at `fps`
    fps: float
    orig_size: tuple[int, int]  # (width, height) as displayed
    orig_fps: float
    codec: str
    truncated: bool  # decoding broke off; `frames` are those before the break


def decode_video(data: bytes, settings: VideoSettings) -> DecodedVideo:
    if not data:
        raise VideoRejected("zero_length")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise VideoRejected("undecodable", _message(exc)) from None
    with container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            kinds = {s.type for s in container.streams}
            raise VideoRejected("audio_only" if "audio" in kinds else "no_video_stream",
                                f"streams: {', '.join(sorted(kinds)) or 'none'} ({container.format.name})")
        if stream.codec_context is None:
            raise VideoRejected("unsupported_codec", f"video stream {stream.index} of a {container.format.name} file")
        stream.thread_type = "AUTO"
        return _resample(container, stream, settings)


def _resample(container, stream, settings: VideoSettings) -> DecodedVideo:
    frames = _Frames(settings)
    prev, prev_rgb, start, truncated, decoded = None, None, None, False, 0
    step = 1 / settings.fps
    tick = float(stream.time_base or 0) / 2 + 1e-9  # timestamps are rounded to the stream's time base
    try:
        for frame in container.decode(stream):
            decoded += 1
            t = frame.time if frame.time is not None else (len(frames) * step)
            start = t if start is None else start
            # every output time before this frame's shows the previous one
            while prev is not None and len(frames) * step < t - start - tick and not frames.full:
                prev_rgb = prev_rgb if prev_rgb is not None else _rgb(prev, settings)
                frames.append(prev_rgb)
            if frames.full:
                break
            prev, prev_rgb = frame, None
    except av.FFmpegError as exc:
        truncated = True
        if prev is None:
            raise VideoRejected("undecodable", _message(exc)) from None
    if prev is None:
        raise VideoRejected("undecodable", "no frame could be decoded")
    rate = float(stream.average_rate or stream.guessed_rate or settings.fps)
    if not frames.full:  # the last frame stays on screen for one input frame interval
        end = (prev.time - start if prev.time is not None else len(frames) * step) + 1 / rate
        last = prev_rgb if prev_rgb is not None else _rgb(prev, settings)
        while len(frames) * step < end - tick and not frames.full:
            frames.append(last)
        # a file cut short whose index (an MP4's moov at its start) lists more frames than it holds ends
        # without a decoding error: the index says so
        truncated = truncated or decoded < (stream.frames or 0)
    if len(frames) < settings.min_frames:
        raise VideoRejected("too_short", f"{len(frames)} frames at {settings.fps:g} fps, a clip needs "
                                         f"{settings.min_frames}")
    return DecodedVideo(np.stack(frames), settings.fps, _displayed_size(prev), rate, stream.codec_context.name,
                        truncated)


class _Frames(list):
    """The output frames, up to `max_frames`; more than `max_bytes` of them: `too_long`, before the memory
    is taken (repeated frames share one array until they are stacked)."""

    def __init__(self, settings: VideoSettings):
        super().__init__()
        self.settings, self.limit, self.cap = settings, settings.max_frames or None, None

    @property
    def full(self) -> bool:
        return len(self) == self.limit

    def append(self, rgb: np.ndarray) -> None:
        if self.cap is None:
            self.cap = max(1, self.settings.max_bytes // rgb.nbytes)
        if len(self) == self.cap:
            s = self.settings
            raise VideoRejected("too_long", f"more than {self.cap} frames of {rgb.shape[1]}x{rgb.shape[0]} at "
                                            f"{s.fps:g} fps ({self.cap / s.fps:.0f} s) would take over "
                                            f"{s.max_bytes / 2 ** 30:g} GiB of memory: --max-frames N keeps the "
                                            f"first N frames of each video")
        super().append(rgb)


@dataclass(frozen=True)
class PreparedVideo:
    mp4: bytes  # H.264 at settings.fps, a keyframe every second
    meta: dict  # what the shard's json member records about it


def prepare_video(data: bytes, settings: VideoSettings) -> PreparedVideo:
    """A user's video file -> what a shard stores: its frames at the fixed rate and size, re-encoded as
    H.264 (crf 23) with a keyframe every second, so a clip anywhere decodes at most a second of frames
    it does not use (`benchmarks/video_storage.py`: 1/16 of JPEG frames' bytes)."""
    video = decode_video(data, settings)
    gop = max(1, round(settings.fps))
    # asm=0: with x264's SIMD paths, repeated encodes of the same frames gave several bitstreams (some
    # decoding to other pixels), so shards were not reproducible; without them the encode is slower
    mp4 = encode_video(video.frames, settings.fps, "mp4", "libx264",
                       {"crf": str(settings.crf), "g": str(gop), "preset": "fast", "x264-params": "asm=0"})
    height, width = video.frames.shape[1:3]
    return PreparedVideo(mp4, {"frames": len(video.frames), "fps": settings.fps, "size": [width, height],
                               "orig_size": list(video.orig_size), "orig_fps": round(video.orig_fps, 3),
                               "codec": video.codec, "truncated": video.truncated})


def decode_clip(mp4: bytes, first: int, offsets: tuple[int, ...], fps: float) -> np.ndarray:
    """Frames first + o (o in `offsets`, ascending) of a stored video -> (T, H, W, 3) uint8: a seek to the
    keyframe at or before the first, then decoding up to the last."""
    wanted = [first + o for o in offsets]
    out: list[np.ndarray | None] = [None] * len(wanted)
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one core per loader worker
        container.seek(int(first / fps / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            index = int(round(frame.time * fps))
            for i, w in enumerate(wanted):
                if w == index:
                    out[i] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    missing = [w for w, f in zip(wanted, out) if f is None]
    if missing:
        raise EOFError(f"frames {missing} are not in the stored video")
    return np.stack(out)


def encode_video(frames: np.ndarray, fps: float, container: str = "mp4", codec: str = "libx264",
                 options: dict[str, str] | None = None) -> bytes:
    """(T, H, W, 3) uint8 RGB -> a video file's bytes (the demo corpus, tests, and shards that store
    video).  `options` are the encoder's (libx264: `crf`, `g` for the keyframe interval, `preset`)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=_rate(fps), options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec not in ("ffv1", "rawvideo") else "bgr0"
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001


def _displayed_size(frame) -> tuple[int, int]:
    quarter_turn = abs(getattr(frame, "rotation", 0) or 0) % 180 == 90
    return (frame.height, frame.width) if quarter_turn else (frame.width, frame.height)


def _rgb(frame, settings: VideoSettings) -> np.ndarray:
    rotation = (getattr(frame, "rotation", 0) or 0) % 360
    width, height = _displayed_size(frame)
    w, h = settings.target_size(width, height)
    # resize in the stored orientation, then turn: the display matrix rotates counter-clockwise
    stored = (h, w) if rotation in (90, 270) else (w, h)
    rgb = frame.reformat(width=stored[0], height=stored[1], format="rgb24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def _message(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"
