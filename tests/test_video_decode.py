"""pipelines/media/video.py on real files written by FFmpeg's encoders (through PyAV): containers and
codecs users have, resampling by time, resizing, and every reason a file is refused."""

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from pipelines.demo_video import audio_track
from pipelines.media.video import (REASONS, VideoRejected, VideoSettings, decode_clip, decode_video, encode_video,
                                   prepare_video)


def gray_ramp(n: int, w: int = 64, h: int = 48, step: int = 6) -> np.ndarray:
    """Frame i is uniformly gray at level i * step: which input frame an output frame shows is readable."""
    return np.stack([np.full((h, w, 3), i * step, np.uint8) for i in range(n)])


def moving_square(frames: int, w: int, h: int, dx: int) -> np.ndarray:
    out = np.full((frames, h, w, 3), 40, np.uint8)
    for t in range(frames):
        x = (w // 2 + dx * t) % (w - 12)
        out[t, h // 2 - 6:h // 2 + 6, x:x + 12] = 220
    return out


def shown(video, step: int = 6) -> list[int]:
    return [int(round(f.mean() / step)) for f in video.frames]


@pytest.mark.parametrize("container, codec", [("mp4", "libx264"), ("avi", "mpeg4"), ("matroska", "libvpx-vp9"),
                                              ("webm", "libvpx"), ("matroska", "ffv1")])
def test_containers_and_codecs_users_have(container, codec):
    data = encode_video(gray_ramp(40), 30, container, codec)
    video = decode_video(data, VideoSettings(fps=30, size=48, min_frames=1))
    assert video.frames.shape == (40, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.orig_size == (64, 48) and video.orig_fps == 30 and not video.truncated
    assert max(abs(a - b) for a, b in zip(shown(video), range(40))) <= 1  # lossy codecs: within one level


def test_resampling_shows_the_frame_on_screen_at_each_output_time():
    data = encode_video(gray_ramp(40), 30, "matroska", "ffv1")  # lossless: levels read back exactly
    down = decode_video(data, VideoSettings(fps=25, size=48, min_frames=1))
    # output k at k/25 s shows input floor(k * 30/25); the last input frame lasts until 40/30 s
    assert shown(down) == [int(k * 30 / 25) for k in range(34)]
    up = decode_video(encode_video(gray_ramp(10), 10, "matroska", "ffv1"), VideoSettings(fps=25, size=48, min_frames=1))
    assert shown(up) == [int(k * 10 / 25) for k in range(25)]  # 1 s at 25 fps: frames repeated, none blended


def test_max_frames_keeps_the_start():
    data = encode_video(gray_ramp(40), 30, "matroska", "ffv1")
    video = decode_video(data, VideoSettings(fps=30, size=48, min_frames=1, max_frames=12))
    assert shown(video) == list(range(12))


@pytest.mark.parametrize("w, h, resize, expected", [
    (320, 240, "shorter", (238, 178)), (240, 320, "shorter", (178, 238)),
    (320, 240, "square", (178, 178)), (178, 100, "shorter", (316, 178))])
def test_frame_size(w, h, resize, expected):
    data = encode_video(gray_ramp(16, w, h), 25, "mp4", "libx264")
    video = decode_video(data, VideoSettings(size=178, resize=resize))
    assert video.frames.shape[1:3] == expected[::-1] and video.orig_size == (w, h)


def reason(data: bytes, **settings) -> str:
    with pytest.raises(VideoRejected) as info:
        decode_video(data, VideoSettings(**settings))
    assert info.value.code in REASONS and info.value.reason.startswith(info.value.code + ": ")
    return info.value.code


def test_every_reason_a_file_is_refused():
    avi = encode_video(gray_ramp(20), 25, "avi", "mpeg4")
    assert b"FMP4" in avi
    assert reason(b"") == "zero_length"
    assert reason(b"<html>not found</html>" * 20) == "undecodable"
    assert reason(audio_track()) == "audio_only"
    subtitles = b"1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:02,000 --> 00:00:03,000\nworld\n"
    assert reason(subtitles) == "no_video_stream"
    assert reason(avi.replace(b"FMP4", b"ZZZ9")) == "unsupported_codec"  # a FourCC no decoder claims
    assert reason(encode_video(gray_ramp(5), 25, "mp4", "libx264"), min_frames=16) == "too_short"
    assert reason(avi[:200]) == "undecodable"  # the header alone


def test_a_broken_off_stream_keeps_what_decoded():
    full = encode_video(gray_ramp(40, step=5), 25, "matroska", "ffv1")
    cut = decode_video(full[: len(full) * 2 // 3], VideoSettings(size=48, min_frames=1))
    assert 10 <= len(cut.frames) < 40
    assert shown(cut, 5) == list(range(len(cut.frames)))  # the frames before the break, in order


def written(path, frames: np.ndarray, pts: list[int], container: str = "matroska", codec: str = "ffv1",
            options: dict | None = None) -> bytes:
    """A video file of `frames` at the given presentation times (in 1/25 s), with container options
    (written to `path`: an MP4's faststart rewrites the file)."""
    with av.open(str(path), mode="w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"
        for image, t in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def test_a_file_cut_short_whose_index_lists_more_frames_is_marked_truncated(tmp_path):
    """A faststart MP4 (its index first) cut in half kept 22 of 100 frames with truncated: false."""
    noise = np.random.default_rng(0).integers(0, 256, (100, 48, 64, 3), dtype=np.uint8)  # the frames outweigh the index
    full = written(tmp_path / "a.mp4", noise, list(range(100)), "mp4", "libx264", {"movflags": "faststart"})
    assert full.index(b"moov") < full.index(b"mdat")
    cut = decode_video(full[: len(full) // 2], VideoSettings(size=48, min_frames=1))
    assert cut.truncated and 10 <= len(cut.frames) < 100
    assert not decode_video(full, VideoSettings(size=48, min_frames=1)).truncated


def test_frames_beyond_the_memory_bound_are_refused_before_they_are_held(tmp_path):
    data = encode_video(gray_ramp(40), 25, "matroska", "ffv1")
    one_frame = 64 * 48 * 3
    assert reason(data, size=48, min_frames=1, max_bytes=10 * one_frame) == "too_long"
    kept = decode_video(data, VideoSettings(size=48, min_frames=1, max_bytes=10 * one_frame, max_frames=10))
    assert shown(kept) == list(range(10))  # --max-frames keeps the start within the bound
    # a few frames with an hour between two timestamps asked for an hour of repeated frames
    gap = written(tmp_path / "gap.mkv", gray_ramp(4), [0, 1, 25 * 3600, 25 * 3600 + 1])
    assert len(gap) < 100_000 and reason(gap, size=48, min_frames=1, max_bytes=100 << 20) == "too_long"


def test_settings_are_checked():
    with pytest.raises(ValueError, match="resize must be one of shorter, square"):
        VideoSettings(resize="crop")
    with pytest.raises(ValueError, match="fps > 0"):
        VideoSettings(fps=0)


def test_display_rotation_is_applied():
    """A phone video stored landscape with a 90-degree counter-clockwise display matrix is decoded
    upright: portrait, and the stored top-left corner at the bottom left."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:8, :8] = 255
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(16):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    video = decode_video(buf.getvalue(), VideoSettings(size=48))
    assert video.orig_size == (48, 64) and video.frames.shape == (16, 64, 48, 3)
    frame = video.frames[0].mean(2)
    assert frame[-6:, :6].mean() > 200 and max(frame[:6, :6].mean(), frame[:6, -6:].mean(), frame[-6:, -6:].mean()) < 30


def test_prepared_video_stores_fixed_rate_frames_that_clips_seek_into():
    source = encode_video(gray_ramp(90, step=2), 30, "matroska", "ffv1")  # 3 s at 30 fps
    prepared = prepare_video(source, VideoSettings(fps=25, size=48))
    assert prepared.meta == {"frames": 75, "fps": 25, "size": [64, 48], "orig_size": [64, 48], "orig_fps": 30.0,
                             "codec": "ffv1", "truncated": False}
    for first, offsets in [(0, tuple(range(10))), (37, tuple(range(10))), (50, (0, 15)), (74, (0,))]:
        clip = decode_clip(prepared.mp4, first, offsets, 25)
        assert clip.shape == (len(offsets), 48, 64, 3)
        levels = [int(round(f.mean() / 2)) for f in clip]
        assert max(abs(a - int((first + o) * 30 / 25)) for a, o in zip(levels, offsets)) <= 1
    with pytest.raises(EOFError, match=r"frames \[75\]"):
        decode_clip(prepared.mp4, 70, (0, 5), 25)


def test_stored_video_bytes_do_not_depend_on_the_run():
    """What a shard stores is a function of the input video alone, byte for byte (libx264 with its SIMD
    paths gave one of several bitstreams for the same frames, some decoding to other pixels)."""
    first = encode_video(moving_square(30, 64, 48, -2), 25, "mp4", "libx264")
    other = encode_video(moving_square(25, 80, 60, 2), 25, "webm", "libvpx")
    settings = VideoSettings(fps=25, size=48)
    alone = prepare_video(first, settings).mp4
    for _ in range(30):
        prepare_video(other, settings)
        assert prepare_video(first, settings).mp4 == alone
