"""data.normalize: ImageNet's mean and std, or the papers' mean pixel subtracted from 0-255 pixels, read
from the training shards' color_pca.json when a run starts, carried in the checkpoint's config, and used
alike by training, validation, evaluate.py (per checkpoint) and predict.py."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_shards
from pipelines.online.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize
from training.config import ConfigError, load, to_dict
from training.normalization import PIXEL_STD, mean_std, with_mean_pixel

MEAN = (0.4, 0.5, 0.6)


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "train"
    write_shards(root, [2, 2, 2], shard_samples=2)
    (root / "color_pca.json").write_text(json.dumps({"eigenvalues": [0.03, 0.002, 0.001], "mean": list(MEAN),
                                                    "eigenvectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    return root


def test_mean_pixel_is_the_paper_s_0_255_pixel_minus_the_training_mean():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    cfg = load(None, ["data.normalize=mean_pixel", f"data.mean_pixel={list(MEAN)}"])
    got = BatchNormalize(**mean_std(cfg.data))(x)
    assert mean_std(cfg.data)["std"] == PIXEL_STD
    assert torch.allclose(got, x.float() - 255 * torch.tensor(MEAN).view(1, 3, 1, 1), atol=1e-3)
    assert mean_std(load().data) == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # the default, unchanged


def test_the_mean_pixel_comes_from_the_training_shards_once_for_the_run(shards):
    cfg = load(None, ["data.normalize=mean_pixel", f"data.train_shards={shards}"])
    resolved = with_mean_pixel(cfg)
    assert resolved.data.mean_pixel == MEAN and cfg.data.mean_pixel is None  # a copy; the recipe is untouched
    default = load()
    assert with_mean_pixel(resolved) is resolved and with_mean_pixel(default) is default
    with pytest.raises(ValueError, match="not resolved"):
        mean_std(cfg.data)


def test_a_mean_pixel_without_its_file_or_out_of_range_is_refused(tmp_path, shards):
    from training.preflight import check_training_inputs

    bare = tmp_path / "bare"
    write_shards(bare, [2, 2, 2], shard_samples=2)
    cfg = load(None, ["data.normalize=mean_pixel", f"data.train_shards={bare}", f"data.val_shards={shards}",
                      "model.num_classes=3"])
    with pytest.raises(ConfigError, match="'data.normalize': .*color_pca.json is missing: run pipelines/color_pca"):
        check_training_inputs(cfg)
    both = load(None, ["data.normalize=mean_pixel", "data.color_pca=true", f"data.train_shards={bare}",
                       f"data.val_shards={shards}", "model.num_classes=3"])
    with pytest.raises(ConfigError, match=r"'data.color_pca' \(and 'data.normalize'\): .*color_pca.json is missing.*"
                                          r"\(or set data.color_pca: false; or give data.mean_pixel"):
        check_training_inputs(both)  # one message for both settings that read the file
    check_training_inputs(load(None, ["data.normalize=mean_pixel", "data.mean_pixel=[0.5, 0.5, 0.5]",
                                      f"data.train_shards={bare}", f"data.val_shards={shards}", "model.num_classes=3"]))
    with pytest.raises(ConfigError, match="'data.mean_pixel' must be three values in \\[0, 1\\]"):
        load(None, ["data.normalize=mean_pixel", "data.mean_pixel=[120, 115, 100]"])
    with pytest.raises(ConfigError, match="'data.normalize' must be one of imagenet, mean_pixel"):
        load(None, ["data.normalize=caffe"])


def test_each_checkpoint_is_scored_with_its_own_normalisation(tmp_path):
    """Fused checkpoints may differ: evaluate.py's actor normalises each model's views as it trained."""
    from training.inference import Predictor
    from training.models import build_model
    from training.prediction import Model

    paths = []
    for name, sets in (("imagenet", []), ("paper", ["data.normalize=mean_pixel", f"data.mean_pixel={list(MEAN)}"])):
        cfg = load(None, ["model.num_classes=3", *sets])
        paths.append(tmp_path / f"{name}.pt")
        torch.save({"model": build_model(cfg).state_dict(), "config": to_dict(cfg)}, paths[-1])
    predictor = Predictor([str(p) for p in paths], "center", (256,), use_gpu=False, batch_size=4)
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    imagenet, paper = (n(x)[0, :, 0, 0] for n in predictor.normalizers)
    assert torch.allclose(paper, 255 * (1 - torch.tensor(MEAN)), atol=1e-3)
    assert torch.allclose(imagenet, (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD), atol=1e-5)
    assert Model(str(paths[1])).transform.mean == MEAN and Model(str(paths[1])).transform.std == PIXEL_STD
