"""pipelines/demo_video.py: classes that differ by motion only, and a folder that shards with its
mistakes quarantined."""

import json

import numpy as np
import pytest

from pipelines import demo_video, shard


def shape_x(frames: np.ndarray, first: int = 6) -> list[float]:
    """Horizontal centre, in each of the first frames, of what differs from the whole video's per-pixel
    median: the background, where a shape moves on (it covers no pixel for most of the video)."""
    ground = np.median(frames, axis=0)
    out = []
    for f in frames[:first]:
        weight = (np.abs(f.astype(np.float32) - ground).sum(2) > 60).sum(0)
        out.append(float(np.average(np.arange(f.shape[1]), weights=weight)))
    return out


def test_motion_partners_differ_only_in_motion():
    rng = lambda cls: np.random.default_rng([0, demo_video.CLASSES.index(cls), 1, 0])  # noqa: E731
    left, right = demo_video.draw("moves_left", rng("moves_left")), demo_video.draw("moves_right", rng("moves_right"))
    assert left.shape == (demo_video.FRAMES, demo_video.H, demo_video.W, 3)
    xs_left, xs_right = shape_x(left), shape_x(right)
    assert all(b < a for a, b in zip(xs_left, xs_left[1:])) and all(b > a for a, b in zip(xs_right, xs_right[1:]))
    slow, fast = demo_video.draw("drifts_slowly", rng("drifts_slowly")), demo_video.draw("drifts_fast", rng("drifts_fast"))
    still = demo_video.draw("stays_still", rng("stays_still"))
    change = lambda v: np.abs(np.diff(v.astype(np.float32), axis=0)).mean()  # noqa: E731
    assert change(still) < change(slow) < change(fast)
    # a still frame of a motion class carries nothing of its class: its shape is any colour, anywhere
    assert not np.array_equal(left[0], right[0])


def test_the_transfer_classes_move_as_named():
    rng = lambda cls: np.random.default_rng([0, 100 + demo_video.TRANSFER_CLASSES.index(cls), 0, 0])  # noqa: E731
    up, down = demo_video.draw("moves_up", rng("moves_up")), demo_video.draw("moves_down", rng("moves_down"))
    ys = lambda v: shape_x(v.transpose(0, 2, 1, 3))  # noqa: E731  (the same measure along the other axis)
    assert all(b < a for a, b in zip(ys(up), ys(up)[1:])) and all(b > a for a, b in zip(ys(down), ys(down)[1:]))
    # a shape that changes size in place: between the first and last frames, a ring of pixels turns from
    # shape to background or back (sensor noise alone changes no pixel that much)
    changed = lambda v: int((np.abs(v[-1].astype(np.float32) - v[0]).sum(2) > 60).sum())  # noqa: E731
    assert changed(demo_video.draw("stays_still", np.random.default_rng(0))) == 0
    for cls in ("grows", "shrinks"):
        assert changed(demo_video.draw(cls, rng(cls))) > 100, cls


@pytest.mark.slow
def test_the_demo_folder_shards_with_its_mistakes_quarantined(ray_cluster, tmp_path):
    counts = demo_video.write(str(tmp_path / "demo"), train_per_class=2, val_per_class=1)
    assert counts == {"train": 20, "val": 10, "train_bad": 5}
    out = tmp_path / "shards"
    assert shard.main(["--video", "--image-folder", str(tmp_path / "demo" / "train"), "--out", str(out),
                       "--frame-size", "48"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == 20 and manifest["per_class_written"] == {c: 2 for c in demo_video.CLASSES}
    assert manifest["quarantine_reasons"] == {"audio_only": 1, "no_video_stream": 1, "too_short": 1,
                                              "undecodable": 1, "zero_length": 1}
