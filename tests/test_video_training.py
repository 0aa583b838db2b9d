"""Videos end to end: the demo's folder of real video files sharded, every fusion network trained under Ray
Train (2 DDP workers) with Clip and Video Hit@k in its validation, `evaluate.py` scoring checkpoints alone
and averaged (CNN Average), and clip streams that resume to the exact batch."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, write_shards

pytestmark = pytest.mark.slow

NETWORKS = ("video_single_frame", "video_early_fusion", "video_late_fusion", "video_slow_fusion",
            "video_slow_fusion_multires")


@pytest.fixture(scope="module")
def demo(ray_cluster, tmp_path_factory):
    """The video demo, small: 3 training and 2 validation videos per class (+ the 5 files to quarantine)."""
    from pipelines.demo_video import prepare_video_demo

    root = tmp_path_factory.mktemp("data") / "video_demo"
    manifests = prepare_video_demo(str(root), train_per_class=3, val_per_class=2)
    assert manifests["train"]["written"] == 30 and manifests["val"]["written"] == 20
    assert sum(manifests["train"]["quarantine_reasons"].values()) == 5
    return root


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """One epoch of each network on the demo's recipe (late fusion with the paper's test views): ({network:
    report.json}, the console's text)."""
    from training import run

    storage = tmp_path_factory.mktemp("runs")
    reports, console = {}, io.StringIO()
    for name in NETWORKS:
        # late fusion tests as the paper does: 4 crops of each frame's centre square (the 72x72 of 96x72)
        paper_views = ["--set", "data.clip_views=four", "--set", "data.clip_region=72"]
        argv = [*(paper_views if name == "video_late_fusion" else []),
                "--config", os.path.join(ROOT, "configs", "video", "demo.yaml"),
                "--set", f"data.train_shards={demo}/shards/train", "--set", f"data.val_shards={demo}/shards/val",
                "--set", f"model.name={name}", "--set", "run.epochs=1", "--set", "data.loader_workers=0",
                "--set", "data.eval_clips=3", "--set", "data.sampling=uniform", "--set", f"run.storage_path={storage}", "--set", f"run.name={name}"]
        with contextlib.redirect_stdout(console):
            assert run.main(argv) == 0, name
        reports[name] = json.loads((storage / name / "report.json").read_text())
    return reports, console.getvalue()


def test_every_fusion_network_trains_under_ray_train_and_reports_hit_at_k(runs):
    reports, out = runs
    for name, report in reports.items():
        final = report["final"]
        assert final["workers"] == 2 and final["val_images"] == 20, name  # every val video, once
        assert final["trained_samples"] == 30 and final["skipped_samples"] == 0, name  # uniform: each once
        assert 0 <= final["clip_hit1"] <= 1 and 0 <= final["top1_error"] <= final["top5_error"] + 1, name
        # clip hits come in steps of one clip of 20 videos x 3 clips
        assert final["clip_hit1"] * 60 == pytest.approx(round(final["clip_hit1"] * 60)), name
    assert out.count("epoch 1/1 done: Video Hit@1 ") == len(NETWORKS), out
    assert out.count(" val videos) after 1 epochs") == len(NETWORKS), out


def test_evaluate_scores_videos_alone_and_averaged(runs, demo, tmp_path, capsys):
    from training import evaluate

    runs = runs[0]
    folders = [runs[n]["best_checkpoint"] for n in ("video_late_fusion", "video_slow_fusion")]
    out = tmp_path / "eval"
    argv = ["--shards", f"{demo}/shards/val", "--clips", "3", "--out", str(out)]
    assert evaluate.main([*sum((["--checkpoint", c] for c in folders), []), *argv]) == 0
    checkpoints = [f"{c}/state.pt" for c in folders]  # as metrics.json names them
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "clips" and metrics["images"] == 20
    video = metrics["video"]
    assert set(video) == {*checkpoints, "CNN Average"}
    for name, checkpoint in zip(("video_late_fusion", "video_slow_fusion"), checkpoints):
        # the same clips, in fp32 on CPU, as the training's own validation
        assert video[checkpoint]["video_hit@1"] == pytest.approx(1 - runs[name]["final"]["top1_error"])
        assert video[checkpoint]["video_hit@5"] == pytest.approx(1 - runs[name]["final"]["top5_error"])
        assert video[checkpoint]["clip_hit@1"] == pytest.approx(runs[name]["final"]["clip_hit1"])
        assert video[checkpoint]["clips"] == 60 and video[checkpoint]["videos"] == 20
    # CNN Average is --fusion average's video probabilities
    assert video["CNN Average"]["video_hit@1"] == pytest.approx(1 - metrics["fused"]["top1_error"])
    assert sorted(video["CNN Average"]["per_class"]) == sorted(os.listdir(demo / "val"))
    assert all(row["videos"] == 2 for row in video["CNN Average"]["per_class"].values())
    assert len((out / "predictions.csv").read_text().splitlines()) == 20
    assert (out / "confusion.png").stat().st_size > 0
    assert "CNN Average: Video Hit@1 " in capsys.readouterr().out


def test_evaluate_refuses_an_image_protocol_on_videos(runs, demo, tmp_path, capsys):
    from training import evaluate

    assert evaluate.main(["--checkpoint", runs[0]["video_slow_fusion"]["best_checkpoint"], "--shards",
                          f"{demo}/shards/val", "--protocol", "ten_crop", "--out", str(tmp_path)]) == 2
    assert "videos are scored with --protocol clips" in capsys.readouterr().err
    write_shards(tmp_path / "images", [2] * 10, shard_samples=2)  # images of the same ten classes
    index = json.loads((tmp_path / "images" / "index.json").read_text())
    index["class_names"] = sorted(os.listdir(demo / "val"))
    (tmp_path / "images" / "index.json").write_text(json.dumps(index))
    assert evaluate.main(["--checkpoint", runs[0]["video_slow_fusion"]["best_checkpoint"], "--shards",
                          str(tmp_path / "images"), "--out", str(tmp_path / "out")]) == 2
    assert "holds images and a checkpoint's model is a video network" in capsys.readouterr().err


def test_clip_streams_resume_to_the_exact_batch(demo):
    from pipelines.online.clips import ClipTransform
    from pipelines.online.loader import LoaderConfig, ShardLoader

    clips = ClipTransform(offsets=tuple(range(10)), fps=25, size=64)
    for mode in ("uniform", "class-aware"):
        cfg = LoaderConfig(shards=f"{demo}/shards/train", mode=mode, batch_size=4, num_workers=2, seed=3)
        reference = ShardLoader(cfg, clips)
        whole = [(x.clone(), y.clone()) for e in range(2) for x, y in reference.epoch(e)]
        assert whole[0][0].shape == (4, 3, 10, 64, 64) and whole[0][0].dtype == torch.float32
        if mode == "uniform":  # every training video once an epoch
            labels = np.concatenate([y.numpy() for _, y in whole[:len(whole) // 2]])
            assert sorted(labels.tolist()) == sorted([*range(10)] * 3)

        first = ShardLoader(cfg, clips)
        got = []
        for x, y in first.epoch(0):
            got.append((x.clone(), y.clone()))
            if len(got) == 3:
                break
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        second = ShardLoader(cfg, clips)
        second.load_state_dict(state)
        got += [(x.clone(), y.clone()) for e in range(2) for x, y in second.epoch(e)]
        assert len(got) == len(whole), mode
        for (a, la), (b, lb) in zip(got, whole):
            assert torch.equal(la, lb) and torch.equal(a, b), mode


def test_predict_refuses_a_video_checkpoint(runs, tmp_path, capsys):
    from PIL import Image

    from training import predict

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "frame.jpg")
    assert predict.main(["--checkpoint", runs[0]["video_early_fusion"]["best_checkpoint"], str(tmp_path / "frame.jpg"),
                         "--out", str(tmp_path / "out")]) == 2
    assert "video_early_fusion is a video network; predict.py scores images" in capsys.readouterr().err


def test_transfer_recipe_trains_only_the_top_layer(runs, demo, tmp_path):
    """configs/video/transfer_top.yaml from the demo's slow fusion run: everything below the classifier
    stays as pretrained (here on the demo's own classes, so the classifier itself is loaded too)."""
    from training import run
    from training.checkpoint import contents
    from training.checkpoint.contents import inference_weights

    source = runs[0]["video_slow_fusion"]["best_checkpoint"]
    argv = ["--config", os.path.join(ROOT, "configs", "video", "transfer_top.yaml"),
            "--set", f"data.train_shards={demo}/shards/train", "--set", f"data.val_shards={demo}/shards/val",
            "--set", "model.num_classes=10", "--set", f"model.pretrained={source}", "--set", "run.epochs=1",
            "--set", "data.loader_workers=0", "--set", f"run.storage_path={tmp_path}", "--set", "run.name=top"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(argv) == 0
    report = json.loads((tmp_path / "top" / "report.json").read_text())
    before = inference_weights(contents.load(source))
    after = contents.load(report["best_checkpoint"])["model"]
    frozen = [k for k in before if not k.startswith("backbone.head.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.head."))


def shard_list(listed, root, categories, out) -> dict:
    from pipelines import shard
    from pipelines.demo_video import H

    assert shard.main(["--video", "--list", str(listed), "--images-root", str(root), "--categories", str(categories),
                       "--out", str(out), "--frame-size", str(H), "--name", f"video-demo-{root.name}"]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_ucf101_split_files_shard_as_the_class_folders_do(demo, tmp_path):
    """UCF-101's classInd.txt (`1 ApplyEyeMakeup`: ids from 1), trainlist01.txt (labels from 1) and
    testlist01.txt (no labels: the class folder is the label), with its CRLF line ends."""
    classes = sorted(os.listdir(demo / "train"))
    (tmp_path / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode())

    def files(split):  # every file of the folders, the ones to quarantine too
        return [f"{c}/{f}" for c in classes for f in sorted(os.listdir(demo / split / c))]

    (tmp_path / "trainlist01.txt").write_bytes(
        "".join(f"{p} {classes.index(p.split('/')[0]) + 1}\r\n" for p in files("train")).encode())
    (tmp_path / "testlist01.txt").write_bytes("".join(f"{p}\r\n" for p in files("val")).encode())
    for split, listed, labels_from in (("train", "trainlist01.txt", "listed"), ("val", "testlist01.txt", "folder")):
        manifest = shard_list(tmp_path / listed, demo / split, tmp_path / "classInd.txt", tmp_path / split)
        folders = json.loads((demo / "shards" / split / "manifest.json").read_text())
        assert manifest["labels_from"] == labels_from
        for key in ("entries_read", "written", "quarantine_reasons", "per_class_written"):
            assert manifest[key] == folders[key], (split, key)
        index = json.loads((tmp_path / split / "index.json").read_text())
        assert index == json.loads((demo / "shards" / split / "index.json").read_text())
        for entry in index["shardlist"]:  # the very same shards, byte for byte
            assert (tmp_path / split / entry["url"]).read_bytes() == (demo / "shards" / split / entry["url"]).read_bytes()


@pytest.fixture(scope="module")
def multi_label(demo, tmp_path_factory):
    """The demo's validation videos as a multi-label set: the first video of each class also carries the
    next class (`v.mp4 moves_left,moves_right`, names or ids), the rest one label.  (list, shards, labels)."""
    classes = sorted(os.listdir(demo / "val"))
    folder = tmp_path_factory.mktemp("multi_label")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    lines, labels = [], {}
    for c, name in enumerate(classes):
        for i, f in enumerate(sorted(os.listdir(demo / "val" / name))):
            labels[f"{name}/{f}"] = [c, (c + 1) % len(classes)] if i == 0 else [c]
            token = f"{name},{classes[(c + 1) % len(classes)]}" if i == 0 and c % 2 else ",".join(map(str, labels[f"{name}/{f}"]))
            lines.append(f"{name}/{f} {token}\n")
    (folder / "list.txt").write_text("".join(lines))
    manifest = shard_list(folder / "list.txt", demo / "val", folder / "classes.txt", folder / "shards")
    assert (manifest["written"], manifest["entries_with_several_labels"], manifest["labels_from"]) == (20, 10, "listed")
    return folder / "shards", labels


def test_multi_label_lists_give_each_video_its_classes(multi_label):
    from pipelines.online.catalog import Catalog
    from pipelines.online.loader import target
    from pipelines.online.streams import SequentialStream

    shards, labels = multi_label
    catalog = Catalog.load(str(shards))
    assert catalog.multi_label and catalog.num_classes == 10
    seen = {}
    for draw in SequentialStream(catalog, 0, 1, 0, 1):
        source = json.loads(draw.members["json"])["source"]
        assert ("labels" in draw.members) == (len(labels[source]) > 1)  # only where there are several
        row = target(draw, 0, catalog.num_classes)
        assert row[0] == draw.cls == labels[source][0]  # in its first class's shard
        seen[source] = [c for c in range(10) if row[1 + c]]
    assert seen == {s: sorted(ls) for s, ls in labels.items()}


def test_multi_label_videos_train_and_score_a_hit_on_any_of_their_classes(multi_label, tmp_path, capsys):
    """Ray Train on the multi-label set (the softmax on equal shares of each video's classes); its
    validation and evaluate.py agree, and count a hit on any of a video's classes."""
    from training import evaluate, run

    shards, labels = multi_label
    argv = ["--config", os.path.join(ROOT, "configs", "video", "demo.yaml"), "--set", f"data.train_shards={shards}",
            "--set", f"data.val_shards={shards}", "--set", "model.name=video_single_frame", "--set", "run.epochs=1",
            "--set", "data.loader_workers=0", "--set", "data.eval_clips=2", "--set", "data.sampling=uniform",
            "--set", f"run.storage_path={tmp_path}", "--set", "run.name=ml"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(argv) == 0
    final = json.loads((tmp_path / "ml" / "report.json").read_text())["final"]
    assert final["trained_samples"] == 20 and final["val_images"] == 20
    checkpoint = json.loads((tmp_path / "ml" / "report.json").read_text())["best_checkpoint"]
    assert evaluate.main(["--checkpoint", checkpoint, "--shards", str(shards), "--clips", "2",
                          "--out", str(tmp_path / "eval")]) == 0
    video = json.loads((tmp_path / "eval" / "metrics.json").read_text())["video"][f"{checkpoint}/state.pt"]
    assert video["video_hit@1"] == pytest.approx(1 - final["top1_error"])
    assert video["clip_hit@1"] == pytest.approx(final["clip_hit1"])
    top1 = {line.split()[0]: int(line.split()[1]) for line in (tmp_path / "eval" / "predictions.csv").read_text().splitlines()}
    assert video["video_hit@1"] == pytest.approx(np.mean([top1[s] in ls for s, ls in labels.items()]))
    # a class's row counts the videos that carry it: 2 of its own, 1 more from the class before
    assert all(row["videos"] == 3 for row in video["per_class"].values())


def test_ray_data_ingest_makes_the_loaders_clips_and_trains_every_video_once(demo, tmp_path):
    """`data.ingest: ray_data` on video shards: a task's row for (epoch, position) is the clip the worker's
    own loader makes of that video with that position's randomness; a uniform epoch trains each video once."""
    import random

    from common.hashing import stable_hash
    from pipelines.online.catalog import Catalog
    from pipelines.online.class_offsets import ClassOffsets
    from pipelines.online.epoch_order import EpochOrder
    from pipelines.online.ingest_pipeline import IngestSpec, decode_rows
    from pipelines.online.tar_stream import ShardReader
    from training import run
    from training.config import load
    from training.models import clip_offsets_for
    from training.train_input import clip_transform

    cfg = load(os.path.join(ROOT, "configs", "video", "demo.yaml"), [
        f"data.train_shards={demo}/shards/train", "model.name=video_late_fusion"])
    clips = clip_transform(cfg, clip_offsets_for(cfg))
    assert clips.offsets == (0, 15) and clips.size == cfg.data.size
    spec = IngestSpec(shards=f"{demo}/shards/train", mode="uniform", seed=4, transform=clips)
    rows = decode_rows({"epoch": np.array([1, 1]), "position": np.array([0, 7])}, spec)
    assert rows["image"].shape == (2, 3, 2, cfg.data.size, cfg.data.size) and rows["ok"].all()
    catalog = Catalog.load(spec.shards)
    offsets = ClassOffsets(catalog)
    for j, position in enumerate((0, 7)):
        row = offsets.row(EpochOrder(offsets.rows, 1, 4, 1).row(position))
        sample = ShardReader(catalog.loc, row.url, offset=row.offset).next()  # the stream reader's way in
        clip, _ = clips.sample(sample.members, random.Random(stable_hash(4, "augment", 1, position)))
        assert np.array_equal(rows["image"][j], clip.numpy()) and rows["label"][j] == row.cls

    argv = ["--config", os.path.join(ROOT, "configs", "video", "demo.yaml"),
            "--set", f"data.train_shards={demo}/shards/train", "--set", f"data.val_shards={demo}/shards/val",
            "--set", "model.name=video_late_fusion", "--set", "run.epochs=1", "--set", "run.workers=1",
            "--set", "data.ingest=ray_data", "--set", "data.sampling=uniform", "--set", "data.eval_clips=2",
            "--set", "data.loader_workers=0", "--set", f"run.storage_path={tmp_path}", "--set", "run.name=ingest"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(argv) == 0
    final = json.loads((tmp_path / "ingest" / "report.json").read_text())["final"]
    assert (final["trained_samples"], final["skipped_samples"], final["val_images"]) == (30, 0, 20)
