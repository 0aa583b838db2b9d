"""The Places365 recipes as written: the sharding recipes on a miniature release in the official layout
(365 classes, the lists' exact line formats, flat val/test folders, `--root` naming the release), their
outputs where the training recipes read, and every training recipe through pre-flight there (the
demo's and the course project's on shards of their own sizes)."""

from __future__ import annotations

import glob
import json
import os
import tarfile

import pytest
import yaml
from PIL import Image

from conftest import encode, scene

pytestmark = pytest.mark.slow
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CLASSES = 365


def training_recipes(reading: str) -> list[str]:
    """The training recipes (a model section) whose training shards' path holds `reading`."""
    found = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*", "*.yaml"))):
        with open(path) as f:
            recipe = yaml.safe_load(f)
        if "model" in recipe and reading in recipe.get("data", {}).get("train_shards", ""):
            found.append(path)
    return found


def miniature_release(root) -> None:
    """categories_places365.txt, places365_train_standard.txt (/a/airfield/00000001.jpg 0),
    places365_val.txt (Places365_val_00000001.jpg 0), places365_test.txt (names only), and the
    images under data_large/, val_large/ and test_large/ (aspect kept, as the release's)."""
    names = [f"/{chr(97 + i % 26)}/scene{i:03d}" for i in range(CLASSES)]
    root.mkdir()
    (root / "categories_places365.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    train, val = [], []
    for i, name in enumerate(names):
        path = f"{name}/00000001.jpg"
        (root / "data_large" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / "data_large" / path.lstrip("/")).write_bytes(encode(Image.fromarray(scene(i, 48, 36))))
        train.append(f"{path} {i}\n")
        (root / "val_large").mkdir(exist_ok=True)
        (root / "val_large" / f"Places365_val_{i + 1:08d}.jpg").write_bytes(encode(Image.fromarray(scene(i, 36, 48))))
        val.append(f"Places365_val_{i + 1:08d}.jpg {i}\n")
    (root / "places365_train_standard.txt").write_text("".join(train))
    (root / "places365_val.txt").write_text("".join(val))
    (root / "test_large").mkdir()
    for i in range(3):
        (root / "test_large" / f"Places365_test_{i + 1:08d}.jpg").write_bytes(encode(Image.fromarray(scene(900 + i))))
    (root / "places365_test.txt").write_text("".join(f"Places365_test_{i + 1:08d}.jpg\n" for i in range(3)))


def test_every_recipe_runs_as_written_on_a_miniature_release(ray_cluster, tmp_path, monkeypatch, capsys):
    import torch
    import torchvision

    from pipelines import color_pca, shard
    from training.config import ConfigError, load
    from training.preflight import check_training_inputs

    miniature_release(tmp_path / "places365")
    monkeypatch.chdir(tmp_path)  # the recipes' outputs and the training recipes' inputs: relative to here
    for split in ("standard", "val", "test"):
        argv = ["--config", os.path.join(CONFIGS, "shard", f"places365_{split}.yaml"), "--root",
                str(tmp_path / "places365"), "--image-size", "32", "--shard-samples", "100"]
        assert shard.main(argv) == 0, split
    counts = {split: json.loads((tmp_path / "data/places365/shards" / split / "index.json").read_text())
              for split in ("train", "val", "test")}
    assert [sum(s["nsamples"] for s in counts[k]["shardlist"]) for k in ("train", "val", "test")] == [365, 365, 3]
    with tarfile.open(tmp_path / "data/places365/shards/val" / counts["val"]["shardlist"][0]["url"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        with Image.open(tar.extractfile(member)) as image:  # 36x48 stored at shorter side 32, aspect kept
            assert image.size == (32, 43)
    recipes = training_recipes("places365")
    assert len(recipes) >= 19
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pt")
    needs_pca = [r for r in recipes if load(r).data.color_pca]
    assert needs_pca  # pre-flight names the missing file and how to make it, before Ray starts
    missing = r"'data.color_pca'( \(and 'data.normalize'\))?: .*color_pca.json is missing: run pipelines/color_pca.py"
    with pytest.raises(ConfigError, match=missing):
        check_training_inputs(load(needs_pca[0]))
    assert color_pca.main(["--shards", "data/places365/shards/train", "--images", "50"]) == 0
    for recipe in recipes:
        cfg = load(recipe, [f"model.pretrained={tmp_path / 'resnet50.pt'}"] if load(recipe).model.pretrained else [])
        check_training_inputs(cfg)  # classes, shards, model, weights, colour noise: as the recipe says


def test_the_other_image_recipes_pass_pre_flight_on_shards_where_they_read(tmp_path, monkeypatch):
    """The demo's and the course project's recipes, on shards of their class counts at their paths (the
    video recipes run end to end in tests/test_video_training.py)."""
    import torch
    import torchvision

    from conftest import write_shards
    from training.config import load
    from training.preflight import check_training_inputs

    recipes = training_recipes("data/demo/") + training_recipes("data/15scene/")
    assert len(recipes) >= 5
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pt")
    for recipe in recipes:
        here = tmp_path / os.path.basename(recipe)[:-5]  # each its own shards: attributes or none
        here.mkdir()
        monkeypatch.chdir(here)
        cfg = load(recipe, [f"model.pretrained={tmp_path / 'resnet50.pt'}"] if load(recipe).model.pretrained else [])
        for shards in (cfg.data.train_shards, cfg.data.val_shards):
            write_shards(here / shards, [1] * cfg.model.num_classes, shard_samples=1,
                         attributes=cfg.model.num_attributes)
        check_training_inputs(cfg)
