"""The Sports-1M and UCF-101 recipes as written: the sharding recipes on miniature releases in the
published layouts (UCF-101's class folders of .avi files and its split files; Sports-1M's labels.txt
and partition files of YouTube URLs, with the downloads named by video id), their outputs where the
training recipes read, and every such training recipe through pre-flight there."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from pipelines.media.video import encode_video
from test_video_decode import moving_square

pytestmark = pytest.mark.slow
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "Basketball")
SPORTS = ("hiking", "rugby sevens", "mountain unicycling")


def video(dx: int, frames: int = 30, container: str = "avi", codec: str = "mpeg4") -> bytes:
    return encode_video(moving_square(frames, 64, 48, dx), 25, container, codec)


def miniature_ucf101(root) -> None:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt,
    with the release's CRLF line ends: groups 8 and 9 train, group 1 tests."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    train, test = [], []
    for i, cls in enumerate(UCF_CLASSES):
        (root / "UCF-101" / cls).mkdir(parents=True)
        for group in (1, 8, 9):
            name = f"{cls}/v_{cls}_g{group:02d}_c01.avi"
            (root / "UCF-101" / name).write_bytes(video(2 * i - 2))
            (test if group == 1 else train).append(name if group == 1 else f"{name} {i + 1}")
    (lists / "classInd.txt").write_bytes("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(UCF_CLASSES)).encode())
    (lists / "trainlist01.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
    (lists / "testlist01.txt").write_bytes("".join(f"{line}\r\n" for line in test).encode())


def miniature_sports1m(root) -> None:
    """sports-1m-dataset/labels.txt and original/{train,test}_partition.txt (URL and class ids), and
    videos/<id>.<ext> as a downloader names them; one listed video was never downloaded."""
    (root / "sports-1m-dataset" / "original").mkdir(parents=True)
    (root / "videos").mkdir()
    (root / "sports-1m-dataset" / "labels.txt").write_text("".join(f"{name}\n" for name in SPORTS))
    url = "https://www.youtube.com/watch?v={}"
    train = {"trainVideo0": ("mp4", "libx264", "0"), "trainVideo1": ("webm", "libvpx", "1,2"),
             "train-vid_2": ("matroska", "libvpx-vp9", "2")}  # ids: 11 characters of [A-Za-z0-9_-]
    for vid, (container, codec, _) in train.items():
        ext = "mkv" if container == "matroska" else container
        (root / "videos" / f"{vid}.{ext}").write_bytes(video(2, container=container, codec=codec))
    (root / "sports-1m-dataset" / "original" / "train_partition.txt").write_text(
        "".join(f"{url.format(vid)} {labels}\n" for vid, (_, _, labels) in train.items())
        + f"{url.format('gonefromyt0')} 1\n")
    for i in range(3):
        (root / "videos" / f"testVideo{i}0.mp4").write_bytes(video(-2, container="mp4", codec="libx264"))
    (root / "sports-1m-dataset" / "original" / "test_partition.txt").write_text(
        "".join(f"{url.format(f'testVideo{i}0')} {i}\n" for i in range(3)))


def video_recipes(reading: str) -> list[str]:
    found = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "video", "*.yaml"))):
        with open(path) as f:
            if reading in yaml.safe_load(f)["data"]["train_shards"]:
                found.append(path)
    return found


def test_the_sports1m_and_ucf101_recipes_run_as_written_on_miniature_releases(ray_cluster, tmp_path, monkeypatch):
    from pipelines import shard
    from training.config import load
    from training.preflight import check_training_inputs

    miniature_ucf101(tmp_path / "ucf101")
    miniature_sports1m(tmp_path / "sports1m")
    monkeypatch.chdir(tmp_path)  # the recipes' outputs and the training recipes' inputs: relative to here
    written = {}
    for dataset, recipe in [("ucf101", "ucf101_train"), ("ucf101", "ucf101_test"), ("sports1m", "sports1m_train"),
                            ("sports1m", "sports1m_test")]:
        argv = ["--config", os.path.join(CONFIGS, "shard", f"{recipe}.yaml"), "--root", str(tmp_path / dataset),
                "--frame-size", "48"]
        assert shard.main(argv) == 0, recipe
        with open(os.path.join(CONFIGS, "shard", f"{recipe}.yaml")) as f:
            out = tmp_path / yaml.safe_load(f)["out"]
        written[recipe] = json.loads((out / "manifest.json").read_text())
        index = json.loads((out / "index.json").read_text())
        assert index["video"]["fps"] == 25 and len(index["class_names"]) == 3, recipe
    assert [written[r]["written"] for r in ("ucf101_train", "ucf101_test")] == [6, 3]
    assert written["ucf101_test"]["labels_from"] == "folder"
    assert written["sports1m_train"]["written"] == 3 and written["sports1m_test"]["written"] == 3
    assert written["sports1m_train"]["quarantine_reasons"] == {"missing_file": 1}  # gone from YouTube
    assert written["sports1m_train"]["entries_with_several_labels"] == 1

    sports = video_recipes("sports1m")
    transfer = video_recipes("ucf101")
    assert len(sports) == 1 and len(transfer) == 4
    trained = load(sports[0])
    for recipe in sports + transfer:
        cfg = load(recipe)
        assert (cfg.data.size, cfg.data.clip_region, cfg.data.clip_views, cfg.data.eval_clips) == (170, 200, "four", 20)
        if cfg.model.pretrained:  # the Sports-1M recipe's run, whose classifier the transfer replaces
            assert cfg.model.pretrained == os.path.join(trained.run.storage_path, trained.run.name)
        # the miniatures have 3 classes; the network is the recipe's otherwise
        check_training_inputs(load(recipe, ["model.num_classes=3", "model.pretrained=null"]))
