"""Search spaces, warm-start selection, trial concurrency (tuning/)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from training.config import ConfigError, with_overrides
from tuning.experiment import FINISHED
from tuning.experiment_driver import max_concurrent, warm_start_checkpoint
from tuning.space import load_space, space_to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("space,recipe", [("demo", "demo"), ("lr_schedule", "resnet50"), ("lr_schedule", "alexnet"),
                                          ("vgg_depth", "vgg_a"), ("resnet_depth", "resnet50"),
                                          ("wm_a_depth", "wm_model_a_relay")])
def test_shipped_spaces_load_against_their_recipes(space, recipe):
    s = load_space(f"{ROOT}/tuning/spaces/{space}.yaml", f"{ROOT}/configs/train/{recipe}.yaml")
    assert s.params and all(kind in ("loguniform", "uniform", "randint", "choice") for kind, _ in s.params.values())


def test_depth_spaces_cover_the_families():
    assert load_space(f"{ROOT}/tuning/spaces/vgg_depth.yaml").depth_order == ["vgg_a", "vgg_b", "vgg_c", "vgg_d",
                                                                            "vgg_e"]
    assert load_space(f"{ROOT}/tuning/spaces/resnet_depth.yaml").depth_order == [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert load_space(f"{ROOT}/tuning/spaces/wm_a_depth.yaml").depth_order[2] == "[2, 2, 5, 5, 5]"  # the paper's


def write(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,match", [
    ("params: {optim.lr: {loguniform: [0.1, 0.01]}}", r"params\.optim\.lr\.loguniform must be \[low, high\]"),
    ("params: {optim.lr: {normal: [0, 1]}}", r"params\.optim\.lr must be one of"),
    ("params: {optim.lr: {choice: []}}", r"params\.optim\.lr\.choice must be a non-empty list"),
    ("parms: {optim.lr: {choice: [1]}}", "unknown key 'parms'"),
    ("params: {optim.lrr: {choice: [0.1]}}", r"optim\.lrr"),
    ("params: {optim.lr: {choice: [0.1, fast]}}", r"optim\.lr"),  # a choice that does not type-check
    ("params: {optim.lr: {uniform: [0.1, 0.2]}}\ndepth: optim.lr", "depth must name a `choice`"),
    ("params: {model.name: {choice: [vgg_a]}}\nwarm_start: true", "warm_start needs a depth"),
])
def test_bad_spaces_are_refused_by_name(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_space(write(tmp_path, text), f"{ROOT}/configs/train/demo.yaml")


def test_sampled_values_reach_the_trial_as_set_overrides(tmp_path):
    space = load_space(write(tmp_path, "params:\n  optim.lr: {loguniform: [0.01, 0.1]}\n"
                                       "  model.options.convs: {choice: [[1, 1, 1], [2, 2, 2]]}\n"
                                       "  optim.milestones: {choice: [[2], [1, 2]]}\n"
                                       "set: {run.epochs: 3, run.workers: 1}\n"), f"{ROOT}/configs/train/demo.yaml")
    assert space.params["model.options.convs"] == ("choice", ["[1, 1, 1]", "[2, 2, 2]"])  # YAML text: any searcher
    with open(f"{ROOT}/configs/train/demo.yaml") as f:
        base = yaml.safe_load(f)
    cfg = with_overrides(base, space.overrides({"optim.lr": 0.0625, "model.options.convs": "[2, 2, 2]",
                                                "optim.milestones": "[1, 2]"}))
    assert (cfg.optim.lr, cfg.model.options, cfg.optim.milestones) == (0.0625, {"convs": [2, 2, 2]}, (1, 2))
    assert (cfg.run.epochs, cfg.run.workers, cfg.model.name) == (3, 1, "simple_net")
    assert base["run"]["epochs"] == 8  # the base mapping is left as it was


def test_warm_start_takes_the_best_of_the_deepest_shallower_trials(tmp_path):
    space = load_space(write(tmp_path, "params: {model.name: {choice: [vgg_a, vgg_b, vgg_c, vgg_d]}}\n"
                                       "depth: model.name\nwarm_start: true\n"))
    setup = {"experiment": str(tmp_path / "exp"), "space": space_to_dict(space)}
    assert warm_start_checkpoint(setup, "vgg_d") is None  # nothing finished yet
    finished = tmp_path / "exp" / FINISHED
    finished.mkdir(parents=True)
    for trial, depth, err in [("t1", "vgg_a", 0.30), ("t2", "vgg_b", 0.40), ("t3", "vgg_b", 0.35),
                              ("t4", "vgg_d", 0.20)]:
        (finished / f"{trial}.json").write_text(json.dumps({"trial_id": trial, "depth": depth, "top1_error": err,
                                                            "checkpoint": f"/ckpt/{trial}"}))
    assert warm_start_checkpoint(setup, "vgg_c") == "/ckpt/t3"  # vgg_b beats vgg_a by depth, t3 beats t2
    assert warm_start_checkpoint(setup, "vgg_b") == "/ckpt/t1"
    assert warm_start_checkpoint(setup, "vgg_a") is None


def test_concurrent_trials_follow_the_cluster_and_the_workers():
    from common.cluster_shape import ClusterShape, NodeType
    from training.config import load

    demo = f"{ROOT}/configs/train/demo.yaml"
    laptop = ClusterShape((NodeType("this machine", {"CPU": 2, "GPU": 0}, 1),), "this machine")
    assert max_concurrent(load(demo, ["run.workers=1", "run.cpus_per_worker=1"]), laptop) == 2
    assert max_concurrent(load(demo, ["run.workers=2", "run.cpus_per_worker=1"]), laptop) == 1
    assert max_concurrent(load(demo, ["run.workers=1", "run.cpus_per_worker=0.5"]), laptop) == 4
    with pytest.raises(ConfigError, match=r"3 x \{CPU: 1\}, and this machine can hold 2 at most"):
        max_concurrent(load(demo, ["run.workers=3"]), laptop)
    with pytest.raises(ConfigError, match=r"\{CPU: 1, GPU: 1\}, and this machine can hold 0"):
        max_concurrent(load(demo, ["run.workers=1", "run.gpu=true"]), laptop)
    # cluster.yaml's shape from zero workers: a CPU-only head, up to 4 nodes of 8 GPUs: 2-GPU trials, 16 at once
    autoscaling = ClusterShape((NodeType("head", {"CPU": 0}, 1), NodeType("gpu_node", {"CPU": 64, "GPU": 8}, 4),
                                NodeType("cpu_data", {"CPU": 32, "data_node": 1}, 8)),
                               "this Ray cluster at its autoscaler's max_workers", autoscaling=True, max_worker_nodes=12)
    assert max_concurrent(load(demo, ["run.workers=2", "run.gpu=true", "run.cpus_per_worker=4"]), autoscaling) == 16
    # a ray_data trial's decode CPUs count on a CPU cluster: 2 workers x 1 CPU + 2 decode CPUs per trial
    assert max_concurrent(load(demo, ["run.workers=2", "data.ingest=ray_data", "data.ingest_cpus=2"]),
                          ClusterShape((NodeType("n", {"CPU": 8}, 2),), "this Ray cluster")) == 4


def test_optuna_suggestions_are_runnable_trial_configs():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(f"{ROOT}/tuning/spaces/demo.yaml", f"{ROOT}/configs/train/demo.yaml")
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0))
    assert searcher.set_search_properties("top1_error", "min", space.tune_space())
    with open(f"{ROOT}/configs/train/demo.yaml") as f:
        base = yaml.safe_load(f)
    for i in range(3):
        sampled = searcher.suggest(f"t{i}")
        assert set(sampled) == set(space.params)
        cfg = with_overrides(base, space.overrides(sampled))
        assert 0.01 <= cfg.optim.lr <= 0.2 and cfg.model.options["convs"] in ([1, 1, 1], [1, 2, 2], [2, 2, 2])
        searcher.on_trial_complete(f"t{i}", {"top1_error": 0.5 - 0.1 * i})
