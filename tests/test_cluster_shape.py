"""Decisions from what a cluster can become: its node types at their max_workers (cluster.yaml as the
autoscaler holds it, or autoscaler v2's ClusterConfig), the nodes of a fixed cluster, or this machine;
and `run.py --resume RUN` under the config the run saved."""

from __future__ import annotations

import argparse
import os

import pytest
import yaml

from conftest import ROOT, write_shards
from common.cluster_shape import (ClusterShape, NodeType, RequestDoesNotFit, node_types_from_autoscaling_config,
                                     node_types_from_cluster_config)
from common.shared_paths import SharedMarker, SharedPathError, check_local_paths


def bootstrap_config() -> dict:
    """cluster.yaml as `ray up` hands it to the head's autoscaler: the AWS provider fills in each node type's
    CPU and GPU from its instance type (p5.48xlarge: 192 vCPUs, 8 GPUs; c6i.8xlarge: 32 vCPUs)."""
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    types = config["available_node_types"]
    types["gpu_8x"]["resources"].update({"CPU": 192, "GPU": 8})
    types["cpu_32"]["resources"].update({"CPU": 32})
    return config


def cluster_yaml_shape() -> ClusterShape:
    types, limit = node_types_from_autoscaling_config(bootstrap_config())
    return ClusterShape((NodeType("head", {"CPU": 0}, 1), *types), "this Ray cluster at its autoscaler's max_workers",
                        autoscaling=True, max_worker_nodes=limit)


def test_cluster_yaml_read_at_its_largest_not_at_submit_time():
    shape = cluster_yaml_shape()
    assert {t.name: t.max_count for t in shape.node_types} == {"head": 1, "gpu_8x": 4, "cpu_32": 16}
    assert shape.max_nodes == 21  # the head and the cluster-wide max_workers: 20, not 4 + 16
    assert shape.capacity({"CPU": 8, "GPU": 1, "gpu_node": 0.001}) == 32  # 4 nodes x 8 GPUs
    # one-CPU tasks: 4 GPU nodes of 192 CPUs and 16 CPU nodes of 32, within the cluster-wide max_workers of 20
    assert shape.capacity({"CPU": 1}) == 4 * 192 + 16 * 32
    capped = ClusterShape(shape.node_types, shape.where, autoscaling=True, max_worker_nodes=5)
    assert capped.capacity({"CPU": 1}) == 4 * 192 + 1 * 32 and capped.max_nodes == 6


def test_a_request_no_node_type_holds_is_refused_naming_it_and_the_largest_node():
    shape = cluster_yaml_shape()
    shape.check_fits("4 workers", {"CPU": 8, "GPU": 1}, 32)
    with pytest.raises(RequestDoesNotFit, match=r"^4 workers asks for 33 x \{CPU: 8, GPU: 1\}, and this Ray cluster at "
                                                 r"its autoscaler's max_workers can hold 32 at most \(the largest node, "
                                                 r"gpu_8x, has \{CPU: 192, GPU: 8, gpu_node: 1, ingest_cpu: 64\}\)"):
        shape.check_fits("4 workers", {"CPU": 8, "GPU": 1}, 33)
    with pytest.raises(RequestDoesNotFit, match=r"a decode task asks for \{CPU: 1, tpu: 1\}"):
        shape.check_fits("a decode task", {"CPU": 1, "tpu": 1})


def test_autoscaler_v2_cluster_config():
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    for name, cpus, count in (("gpu", 16, 2), ("cpu", 8, -1), ("off", 4, 0)):
        group = config.node_group_configs.add()
        group.name, group.max_count = name, count
        group.resources["CPU"] = cpus
    types, limit = node_types_from_cluster_config(config)
    assert [(t.name, t.max_count) for t in types] == [("gpu", 2), ("cpu", 10**6)]  # -1: unbounded; 0: never
    shape = ClusterShape((NodeType("head", {"CPU": 0}, 1), *types), "here", autoscaling=True, max_worker_nodes=limit)
    assert shape.max_nodes > 10**5 and shape.capacity({"CPU": 8}) > 10**5
    assert shape.capacity({"CPU": 16}) == 2  # only the gpu nodes hold one


def test_a_laptop_and_a_fixed_cluster():
    laptop = ClusterShape((NodeType("this machine", {"CPU": 2, "GPU": 0}, 1),), "this machine")
    assert laptop.max_nodes == 1 and laptop.capacity({"CPU": 0.5}) == 4
    fixed = ClusterShape((NodeType("a", {"CPU": 0}, 1), NodeType("b", {"CPU": 3}, 1), NodeType("c", {"CPU": 3}, 1)),
                         "this Ray cluster")
    assert fixed.max_nodes == 3 and fixed.capacity({"CPU": 2}) == 2


def test_local_paths_on_a_cluster_that_can_grow_are_refused_unless_shared(tmp_path):
    laptop = ClusterShape((NodeType("this machine", {"CPU": 2}, 1),), "this machine")
    check_local_paths(laptop, [("--out", str(tmp_path))], False, "--shared-filesystem", str(tmp_path), [])
    with pytest.raises(SharedPathError, match=rf"^--out: {tmp_path} is a local path and this Ray cluster at its "
                                              r"autoscaler's max_workers can have 21 nodes, .* --shared-filesystem$"):
        check_local_paths(cluster_yaml_shape(), [("--out", str(tmp_path))], False, "--shared-filesystem",
                          str(tmp_path), [])
    marker = SharedMarker.write(str(tmp_path))
    marker.check("config key 'run.storage_path'")  # where the driver wrote it
    marker.remove()
    with pytest.raises(SharedPathError, match="config key 'run.storage_path': the shared filesystem is not mounted"):
        marker.check("config key 'run.storage_path'")  # a node that does not see it


def test_the_resnet18_recipe_on_this_machine_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    from pipelines import color_pca
    from training import run

    monkeypatch.setenv("RAY_ADDRESS", "local")  # a laptop: no cluster to join
    write_shards(tmp_path / "train", [4, 4], shard_samples=4)
    write_shards(tmp_path / "val", [2, 2], shard_samples=2)
    assert color_pca.main(["--shards", str(tmp_path / "train"), "--images", "8"]) == 0  # the recipe's colour noise
    capsys.readouterr()
    code = run.main(["--config", f"{ROOT}/configs/train/resnet18.yaml", "--set", f"data.train_shards={tmp_path}/train",
                     "--set", f"data.val_shards={tmp_path}/val", "--set", "model.num_classes=2",
                     "--set", f"run.storage_path={tmp_path}/runs"])
    out, err = capsys.readouterr()
    assert code == 2 and not ray.is_initialized() and not out
    [line] = err.splitlines()
    assert line.startswith("run.py: error: config keys 'run.workers', 'run.cpus_per_worker', 'run.gpu': "
                           "8 Train worker(s) asks for 8 x {CPU: 8, GPU: 1}, and this machine can hold 0 at most")


def resume(storage, name: str, *overrides: str, config: str | None = None, force: bool = False):
    """run.py's arguments for `--resume NAME [--config C] [--force-config] --set ...`."""
    return argparse.Namespace(resume=name, config=config, set=[f"run.storage_path={storage}", *overrides],
                              force_config=force)


def test_resume_continues_under_the_runs_saved_config(tmp_path, capsys):
    from training.config import ConfigError, load, save_run_config
    from training.runs import resume_config

    saved = load(f"{ROOT}/configs/train/demo.yaml", ["optim.lr=0.03", "run.epochs=5", f"run.storage_path={tmp_path}"])
    save_run_config(f"{tmp_path}/r1", saved)
    cfg = resume_config(resume(tmp_path, "r1"))  # no --config: the run's own, not the demo's
    assert (cfg.optim.lr, cfg.run.epochs) == (0.03, 5)
    assert f"resuming with the config r1 saved ({tmp_path}/r1/config.yaml)" in capsys.readouterr().out

    cfg = resume_config(resume(tmp_path, "r1", "run.epochs=8"))
    assert (cfg.optim.lr, cfg.run.epochs) == (0.03, 8)
    assert "overridden by run.storage_path=" in capsys.readouterr().out

    with pytest.raises(ConfigError, match=r"--config .*demo.yaml differs from the run's saved config in optim.lr, "
                                          r"run.epochs: leave --config out .* or pass --force-config"):
        resume_config(resume(tmp_path, "r1", config=f"{ROOT}/configs/train/demo.yaml"))
    forced = resume_config(resume(tmp_path, "r1", config=f"{ROOT}/configs/train/demo.yaml", force=True))
    assert forced.optim.lr != 0.03 and "--force-config" in capsys.readouterr().out

    with pytest.raises(ConfigError, match="--resume: no run named 'r2'"):
        resume_config(resume(tmp_path, "r2"))
    (tmp_path / "old").mkdir()  # a run from before runs saved their config
    with pytest.raises(ConfigError, match="holds no saved config .* --force-config"):
        resume_config(resume(tmp_path, "old"))
