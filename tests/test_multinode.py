"""Sharding and training on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`,
each node a raylet with its own CPUs), against the same work on one node: sharding's tasks spread over
every node with byte-identical output; local paths (sharding's, training's) refused unless every node
mounts them; DDP across nodes with the metrics of a one-node run."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from conftest import write_shards

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def writer_nodes(list_tasks) -> set[str]:
    """The nodes that ran sharding's `write_group` tasks.  Workers report task events about once a second,
    so a run that has just ended may not be in the state API yet: ask again for up to 30 s.  An attempt
    whose events have not reached the API yet can be listed with no node (node_id None): not a node."""
    deadline = time.time() + 30
    while True:
        nodes = {t["node_id"] for t in list_tasks(detail=True, limit=10_000)
                 if "write_group" in t["name"] and t["node_id"]}
        if len(nodes) >= 2 or time.time() > deadline:
            return nodes
        time.sleep(0.5)


def common(tmp_path, name: str) -> list[str]:
    return ["--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
            "--set", f"run.storage_path={tmp_path}/runs", "--set", "run.epochs=2", "--set", "model.num_classes=3",
            "--set", "data.size=32", "--set", "data.eval_resize=36", "--set", "data.batch_size=8",
            "--set", "data.loader_workers=0", "--set", "run.workers=2", "--set", "run.cpus_per_worker=1",
            "--set", f"run.name={name}", "--set", "model.num_attributes=0"]


def registered_checkpoints(snapshot) -> list:
    """What Ray Train's checkpoint manager has registered (a run restarts from these alone)."""
    try:
        return json.loads(snapshot.read_text()).get("checkpoint_results", [])
    except (OSError, ValueError):  # not written yet, or being written
        return []


def remove_a_training_node_after_a_checkpoint(cluster, run_dir, removed: list) -> None:
    from ray.util.state import list_actors

    deadline = time.time() + 300
    while time.time() < deadline:
        if registered_checkpoints(run_dir / "checkpoint_manager_snapshot.json"):
            alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            hosts = {a["node_id"] for a in alive}
            for node in cluster.list_all_nodes():
                if node.node_id in hosts and not node.head:
                    cluster.remove_node(node, allow_graceful=False)
                    removed.append(node.node_id)
                    return
        time.sleep(0.05)


def image_tree(root) -> None:
    from conftest import encode, scene

    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(10):
            (root / f"class{c}" / f"{i:03d}.jpg").write_bytes(encode(scene(c * 100 + i, 48, 40)))


def shard(tree, out, *flags: str) -> int:
    from pipelines import shard as shard_cli

    return shard_cli.main(["--image-folder", str(tree), "--out", str(out), "--image-size", "32",
                           "--shard-samples", "4", *flags])


def outputs(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "manifest.json"}


def test_sharding_and_ddp_across_nodes_match_one_node(tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors, list_tasks

    from training import run

    image_tree(tmp_path / "tree")
    write_shards(tmp_path / "train", [40, 24, 16], shard_samples=8, size=32)
    write_shards(tmp_path / "val", [6, 6, 6], shard_samples=6, size=32)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):  # one CPU each: the two Train workers must land on different nodes
            cluster.add_node(num_cpus=1, resources={"gpu_node": 1})
        ray.init(address=cluster.address)
        assert shard(tmp_path / "tree", tmp_path / "refused") == 2  # local paths, not said to be shared
        err = capsys.readouterr().err
        assert "--image-folder: " in err and "this Ray cluster has 3 nodes" in err and "--shared-filesystem" in err
        assert not list((tmp_path / "refused").glob("*.tar"))
        assert shard(tmp_path / "tree", tmp_path / "sharded-on-3-nodes", "--shared-filesystem") == 0
        assert len(writer_nodes(list_tasks)) == 2  # both worker nodes wrote shards

        assert run.main(common(tmp_path, "refused")) == 2
        err = capsys.readouterr().err
        assert "config key 'run.storage_path'" in err and "this Ray cluster has 3 nodes" in err
        assert "s3://" in err and "run.shared_filesystem=true" in err
        assert not (tmp_path / "runs" / "refused").exists()

        assert run.main([*common(tmp_path, "two-nodes"), "--set", "run.shared_filesystem=true"]) == 0
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True)
        assert len({a["node_id"] for a in workers}) == 2  # DDP (gloo) across the two nodes

        cluster.add_node(num_cpus=1, resources={"gpu_node": 1})  # room for the group after a node is lost
        removed: list[str] = []
        watcher = threading.Thread(target=remove_a_training_node_after_a_checkpoint,
                                   args=(cluster, tmp_path / "runs" / "node-lost", removed), daemon=True)
        watcher.start()
        assert run.main([*common(tmp_path, "node-lost"), "--set", "run.shared_filesystem=true",
                         "--set", "run.checkpoint_every_steps=2", "--set", "run.max_failures=3"]) == 0
        watcher.join(timeout=5)
        assert removed  # a node running a Train worker went away mid-run
        lost = json.loads((tmp_path / "runs" / "node-lost" / "report.json").read_text())["history"]
        # every epoch accounted for, with the input and losses of the run that lost nothing
        assert any(h["attempt_start_epoch"] or h["resumed_from_step"] for h in lost)
    finally:
        ray.shutdown()
        cluster.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the same work on one node
    try:
        assert shard(tmp_path / "tree", tmp_path / "sharded-on-1-node") == 0
        assert run.main(common(tmp_path, "one-node")) == 0
    finally:
        ray.shutdown()
    many, single = outputs(tmp_path / "sharded-on-3-nodes"), outputs(tmp_path / "sharded-on-1-node")
    assert many == single and sum(name.endswith(".tar") for name in many) >= 6
    two, one = (json.loads((tmp_path / "runs" / n / "report.json").read_text())["history"]
                for n in ("two-nodes", "one-node"))
    for key in ("epoch", "input_checksum", "step"):
        assert [h[key] for h in lost] == [h[key] for h in two], key
    assert [h["loss"] for h in lost] == pytest.approx([h["loss"] for h in two], rel=1e-4)
    for key in ("input_checksum", "step", "val_images", "workers"):
        assert [h[key] for h in two] == [h[key] for h in one], key
    assert [h["loss"] for h in two] == pytest.approx([h["loss"] for h in one], rel=1e-4)
    assert [h["top1_error"] for h in two] == pytest.approx([h["top1_error"] for h in one])


def test_tune_trials_run_on_different_nodes(tmp_path, capsys):
    import ray
    import yaml
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from tuning import search

    write_shards(tmp_path / "train", [16, 8], shard_samples=8)
    write_shards(tmp_path / "val", [4, 4], shard_samples=4)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"params": {"optim.lr": {"loguniform": [0.01, 0.1]}}}))
    argv = ["--config", "configs/train/demo.yaml", "--space", str(tmp_path / "space.yaml"), "--scheduler", "fifo",
            "--trials", "2", "--storage-path", str(tmp_path / "exp"),
            "--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
            "--set", "model.num_classes=2", "--set", "data.batch_size=8", "--set", "data.loader_workers=0",
            "--set", "data.size=32", "--set", "data.eval_resize=36", "--set", "run.epochs=1",
            "--set", "run.workers=1", "--set", "run.cpus_per_worker=1", "--set", "model.num_attributes=0"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for _ in range(2):  # one CPU each: two single-worker trials at once need both nodes
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        assert search.main([*argv, "--name", "local"]) == 2  # a local experiment folder: refused
        assert "config key 'run.storage_path'" in capsys.readouterr().err
        assert not (tmp_path / "exp" / "local").exists()  # refused before the experiment was made
        assert search.main([*argv, "--name", "shared", "--set", "run.shared_filesystem=true"]) == 0
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True)
        assert len(workers) == 2 and len({a["node_id"] for a in workers}) == 2
    finally:
        os.chdir(cwd)
        ray.shutdown()
        cluster.shutdown()
    assert len(list((tmp_path / "exp" / "shared" / "finished").iterdir())) == 2
