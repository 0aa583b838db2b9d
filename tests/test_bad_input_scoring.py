"""Bad input to evaluate.py, predict.py and sample.py, second pass: no tool writes over its inputs or into a
shard folder it does not own, a diverged checkpoint is not scored (its rankings were 0 1 2 3 4 for every
image, exit 0), and a FIFO named .jpg is reported, not waited on."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import odd_files, write_shards
from refusals import check_refused, error_lines, files_under, join_a_gone_cluster
from training import predict
from training.config import load, to_dict
from training.models import build_model

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """3-class shards, a checkpoint for them and one whose weights hold NaN (a run that diverged), photos."""
    root = tmp_path_factory.mktemp("bad_scoring")
    write_shards(root / "val", [2, 2, 2], shard_samples=2)
    cfg = load(None, ["model.num_classes=3", "model.mode=bp", f"data.train_shards={root / 'val'}",
                      f"data.val_shards={root / 'val'}", "data.size=16", "data.eval_resize=18"])
    model = build_model(cfg)
    state = {"model": model.state_dict(), "config": to_dict(cfg), "history": [], "class_names": NAMES}
    torch.save(state, root / "model3.pt")
    diverged = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}
    torch.save({**state, "model": diverged}, root / "diverged.pt")
    (root / "photos").mkdir()
    (root / "photos" / "a.jpg").write_bytes(odd_files(64)["ok_baseline.jpg"])
    return root


CASES = [
    ("sample.py --out SHARDS/index.json (it overwrote the index it had read)", "sample",
     ["--shards", "{root}/val", "--mode", "uniform", "--num", "3", "--out", "{root}/val/index.json"],
     "--out {root}/val/index.json is inside --shards {root}/val: the shard folder belongs to pipelines/shard.py"),
    ("sample.py --out a new file in the shard folder", "sample",
     ["--shards", "{root}/val", "--mode", "uniform", "--num", "3", "--out", "{root}/val/draws.jsonl"],
     "is inside --shards {root}/val"),
    ("evaluate.py --out inside the shard folder", "evaluate",
     ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{root}/val/eval"],
     "--out {root}/val/eval is inside --shards {root}/val"),
    ("evaluate.py on a diverged checkpoint (0 1 2 3 4 for every image, exit 0)", "evaluate",
     ["--checkpoint", "{root}/diverged.pt", "--shards", "{root}/val", "--out", "{out}"],
     "--checkpoint {root}/diverged.pt: 17 weight tensor(s) hold NaN or infinite values (backbone."),
    ("predict.py on a diverged checkpoint (nan%, exit 0)", "predict",
     ["{root}/photos", "--checkpoint", "{root}/diverged.pt", "--out", "{out}"],
     "the run diverged; score an earlier checkpoint"),
    ("predict.py --out inside an input folder (a rerun scores the maps)", "predict",
     ["{root}/photos", "--checkpoint", "{root}/model3.pt", "--out", "{root}/photos/maps"],
     "--out {root}/photos/maps is inside the input folder {root}/photos"),
]


@pytest.mark.parametrize("row,tool,argv,message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_any_work(world, tmp_path, capsys, row, tool, argv, message):
    check_refused(tool, argv, message, world, tmp_path / "out", capsys)


@pytest.mark.parametrize("how", ["recorded", "RAY_ADDRESS"])
def test_a_cluster_that_no_longer_runs_is_refused_not_waited_for(world, tmp_path, capsys, monkeypatch, how):
    message = join_a_gone_cluster(monkeypatch, tmp_path / "ray-temp", how)
    check_refused("evaluate", ["--checkpoint", "{root}/model3.pt", "--shards", "{root}/val", "--out", "{out}"],
                  message, world, tmp_path / "out", capsys)


def test_a_fifo_named_jpg_is_reported_not_waited_on(world, tmp_path, capsys):
    """predict.py opened it and waited for a writer forever."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(odd_files(64)["ok_baseline.jpg"])
    os.mkfifo(photos / "pipe.jpg")
    before = files_under(world)
    code = predict.main([str(photos), "--checkpoint", str(world / "model3.pt"), "--out", str(tmp_path / "out")])
    assert code == 1
    [err] = error_lines(capsys)
    assert err == f"{photos / 'pipe.jpg'}: error: ValueError: not_a_file: not a regular file"
    [line] = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert json.loads(line)["image"] == str(photos / "a.jpg") and files_under(world) == before
