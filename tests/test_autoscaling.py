"""The card's path on the cluster `ray up cluster.yaml` gives: a head with CPU 0 and worker types at
min_workers 0, grown by Ray's own autoscaler (its fake node provider starts worker raylets on this
machine when tasks and placement groups ask).  As a user drives it: `ray job submit` of training/run.py
and of tuning/search.py, tuning/analyze.py on the experiment, the dashboard's REST API, and the nodes
released once idle; refusals that need the cluster's possible shape, not its shape at submit time."""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import pytest
import yaml

from conftest import ROOT, encode, free_port, scene, start_head, stop_head, write_shards
from pipelines import color_pca

pytestmark = pytest.mark.slow
IDLE_TIMEOUT_MINUTES = 0.2
# cluster.yaml's node types, scaled down to this machine: the head coordinates only; Train workers on
# gpu_node (its `gpu_node` resource standing for the GPUs a fake node cannot have); Ray Data on cpu_data
NODE_TYPES = {
    "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},  # the fake provider's name
    "gpu_node": {"resources": {"CPU": 1, "gpu_node": 1, "object_store_memory": 200 * 2**20}, "node_config": {},
                 "min_workers": 0, "max_workers": 2},
    "cpu_data": {"resources": {"CPU": 1, "data_node": 1, "object_store_memory": 200 * 2**20}, "node_config": {},
                 "min_workers": 0, "max_workers": 1},
}


@dataclass
class FakeAutoscalingHead:
    """A client of the `ray start --head` this module starts with Ray's fake node provider (stopped by its
    process group; never Ray's AutoscalingCluster helper, which runs `ray stop --force`)."""

    dashboard: str  # http://127.0.0.1:PORT: `ray job submit --address` and the REST API
    env: dict  # a client's environment: RAY_AUTH_MODE=token and the cluster's token

    def submit(self, script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        """`ray job submit -- python SCRIPT ARGS`.  Without the runbook's `--working-dir .`: the fake provider's
        nodes share one runtime_resources folder on this machine, so a node starting mid-job unpacks the job's
        working_dir again under its running driver (which then dies).  The project is installed in this
        venv, as cluster.yaml's setup_commands install it on every node; tests/test_job_submit.py submits
        with --working-dir to a head of its own."""
        return subprocess.run(["ray", "job", "submit", "--address", self.dashboard, "--", sys.executable,
                               os.path.join(ROOT, script), *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def api(self, path: str):
        request = urllib.request.Request(f"{self.dashboard}{path}",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """Ray's state API over REST (what `ray list nodes` reads): node_id, is_head_node, resources_total."""
        nodes = self.api("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]


def autoscaling_config(gcs_port: int) -> dict:
    """A cluster launcher config for Ray's fake node provider (the wheel does not ship its example)."""
    return {"cluster_name": "places-test", "max_workers": 3, "upscaling_speed": 1.0,
            "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
            "available_node_types": NODE_TYPES, "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")}}


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    gcs, dashboard = free_port(), free_port()
    config = os.path.join(temp, "cluster.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(autoscaling_config(gcs), f)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    head = start_head(temp, {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}, f"--port={gcs}",
                      "--num-cpus=0", f"--autoscaling-config={config}", f"--object-store-memory={200 * 2**20}",
                      dashboard=dashboard)
    try:
        up = FakeAutoscalingHead(f"http://127.0.0.1:{dashboard}", env)
        deadline = time.time() + 60
        while not up.alive_nodes():  # the job API answers before the head's raylet has registered
            assert time.time() < deadline, "the head's raylet did not register"
            time.sleep(1)
        yield up
    finally:
        stop_head(head)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    data = tmp_path_factory.mktemp("card")  # every fake node is this machine: its disk is shared
    write_shards(data / "train", [16, 8], shard_samples=8)
    write_shards(data / "val", [4, 4], shard_samples=4)
    assert color_pca.main(["--shards", str(data / "train"), "--images", "8"]) == 0  # the resnet18 recipe's
    return data


def small(shards, *more: str) -> list[str]:
    settings = [f"data.train_shards={shards}/train", f"data.val_shards={shards}/val", "model.num_classes=2",
                "model.num_attributes=0", "data.batch_size=8", "data.loader_workers=0", "data.size=32",
                "data.eval_resize=36", "run.epochs=1", "run.cpus_per_worker=1", "run.worker_resource=gpu_node",
                *more]
    return [arg for s in settings for arg in ("--set", s)]


def errors(done: subprocess.CompletedProcess, tool: str) -> list[str]:
    """The job's console as `ray job submit` tailed it (on failure it then repeats the job's last logs)."""
    console = done.stdout.split("ERR cli.py:")[0]
    return [line for line in console.splitlines() if line.startswith(f"{tool}: error: ")]


def test_what_cannot_work_on_the_cluster_is_refused_before_a_node_starts(cluster, shards, tmp_path):
    assert len(cluster.alive_nodes()) == 1  # the head alone, with no CPU: as `ray up` leaves it
    local = cluster.submit("training/run.py", *small(shards, f"run.storage_path={tmp_path}/runs"), timeout=300)
    assert local.returncode != 0
    [line] = errors(local, "run.py")
    assert f"config key 'run.storage_path': {tmp_path}/runs is a local path and this Ray cluster at its " \
           "autoscaler's max_workers can have 4 nodes" in line and "--set run.shared_filesystem=true" in line
    assert not (tmp_path / "runs").exists()

    # configs/train/resnet18.yaml's 8 workers x 8 CPUs and a GPU each: no node type holds one
    recipe = cluster.submit("training/run.py", "--config", f"{ROOT}/configs/train/resnet18.yaml",
                            *small(shards, "run.cpus_per_worker=8", "run.shared_filesystem=true",
                                   f"run.storage_path={tmp_path}/runs"), timeout=300)
    [line] = errors(recipe, "run.py")
    assert "8 Train worker(s) asks for 8 x {CPU: 8, GPU: 1, gpu_node: 0.001}, and this Ray cluster at its " \
           "autoscaler's max_workers can hold 0 at most (the largest node, gpu_node, has " in line

    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "0.jpg").write_bytes(encode(scene(0)))
    sharding = cluster.submit("pipelines/shard.py", "--image-folder", str(tmp_path / "tree"), "--out",
                              str(tmp_path / "out"), timeout=300)
    [line] = errors(sharding, "shard.py")
    assert f"--image-folder: {tmp_path}/tree is a local path" in line and "--shared-filesystem" in line
    assert len(cluster.alive_nodes()) == 1  # nothing was asked of the autoscaler


def test_a_run_and_a_search_submitted_to_a_head_without_cpus_finish_on_autoscaled_nodes(cluster, shards, tmp_path):
    runs, experiments = tmp_path / "runs", tmp_path / "experiments"
    train = cluster.submit("training/run.py", *small(shards, "run.workers=2", "run.name=card",
                                                     f"run.storage_path={runs}", "run.shared_filesystem=true"))
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert sum("epoch 1/1 done: top-1 error " in line for line in train.stdout.splitlines()) == 1
    assert "Traceback" not in train.stdout and "(autoscaler" not in train.stdout
    assert (runs / "card" / "report.json").exists() and (runs / "card" / "config.yaml").exists()

    search = cluster.submit("tuning/search.py", "--config", f"{ROOT}/configs/train/demo.yaml", "--space",
                            f"{ROOT}/tuning/spaces/demo.yaml", "--scheduler", "fifo", "--trials", "2",
                            "--name", "card",
                            "--storage-path", str(experiments), *small(shards, "run.workers=1",
                                                                        "run.shared_filesystem=true"))
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    # two 1-worker trials at once: what the node types hold at their max_workers, not the 0 CPUs at submit
    assert "search.py: 2 trials, at most 2 at a time (what this Ray cluster at its autoscaler's max_workers " \
           "can hold" in search.stdout
    assert len(list((experiments / "card" / "finished").iterdir())) == 2

    analysis = subprocess.run([sys.executable, "tuning/analyze.py", str(experiments / "card"), "--out",
                               str(tmp_path / "analysis")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    with open(tmp_path / "analysis" / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    jobs = {os.path.relpath(j["entrypoint"].split()[1], ROOT): j for j in cluster.api("/api/jobs/")
            if j["status"] == "SUCCEEDED" and ROOT in j["entrypoint"]}
    assert {"training/run.py", "tuning/search.py"} <= set(jobs)
    [run] = [r for r in cluster.api("/api/train/v2/runs/v1")["train_runs"] if r["name"] == "card"]
    assert run["status"] == "FINISHED" and run["job_id"] == jobs["training/run.py"]["job_id"]
    workers = [w for attempt in run["attempts"] for w in attempt["workers"]]
    head = next(n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"])
    assert len(workers) == 2 and head not in {w["node_id"] for w in workers}  # on nodes the autoscaler added
    trials = [r for r in cluster.api("/api/train/v2/runs/v1")["train_runs"] if r["name"].startswith("trial-")]
    assert len(trials) == 2 and all(r["status"] == "FINISHED" for r in trials)

    deadline = time.time() + IDLE_TIMEOUT_MINUTES * 60 + 120
    while len(cluster.alive_nodes()) > 1 and time.time() < deadline:
        time.sleep(2)
    assert len(cluster.alive_nodes()) == 1  # the autoscaler released the idle workers
