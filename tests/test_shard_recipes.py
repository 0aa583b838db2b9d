"""pipelines/shard.py's YAML recipes (configs/shard/*.yaml): read, overridden by flags, unknown keys named."""

from __future__ import annotations

import os

import pytest

from pipelines import shard


def test_yaml_recipe_with_flag_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("list: a.txt\nimages_root: imgs\ncategories: c.txt\nresize: shorter\nshard_samples: 7\n")
    cfg = shard.parse_args(["--config", str(recipe), "--out", "o", "--shard-samples", "9"])
    assert (cfg.list, cfg.resize, cfg.shard_samples, cfg.image_size, cfg.out) == ("a.txt", "shorter", 9, 256, "o")


def test_shipped_recipes_parse():
    configs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "shard")
    recipes = sorted(n for n in os.listdir(configs) if n.endswith(".yaml"))
    assert len(recipes) >= 3
    for name in recipes:
        assert shard.parse_args(["--config", os.path.join(configs, name), "--out", "o"]).images_root


def test_unknown_recipe_key_is_named(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("list: a.txt\nimages_root: i\nshard_sampels: 7\n")
    with pytest.raises(SystemExit):
        shard.parse_args(["--config", str(recipe), "--out", "o"])
    assert "'shard_sampels'" in capsys.readouterr().err
