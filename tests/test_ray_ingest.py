"""`data.ingest: ray_data`: positions -> rows in Ray Data tasks, exactly once per epoch across the ranks, on
the data node when the training nodes have no CPU to spare, through a killed data task, and through a
mid-epoch resume; the same samples per epoch as the loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from conftest import write_shards
from pipelines.online.ingest_worker import merge, runs, subtract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interval_bookkeeping():
    assert merge([[5, 7], [0, 2], [2, 3], [6, 9], [4, 4]]) == [[0, 3], [5, 9]]
    assert subtract(0, 10, [[2, 4], [3, 5], [8, 12]]) == [[0, 2], [5, 8]]
    assert subtract(3, 6, []) == [[3, 6]] and subtract(3, 6, [[0, 9]]) == []
    assert runs(np.array([7, 3, 4, 5, 9, 8, 0])) == [[0, 1], [3, 6], [7, 10]]


def test_a_resumed_epoch_of_places365_challenge_is_planned_exactly_and_packed():
    """The bookkeeping at the mission's size: 8,026,628 positions, 64 ranks, a checkpoint half-way through a
    shuffled uniform epoch (`data.read_block` > 1: each rank's local shuffle buffer and prefetched batches
    hold received positions it has not trained).  The resumed plan is exactly the positions no rank
    trained, in tasks of `chunk` (the last one fewer), although most of its intervals are a few positions."""
    from pipelines.online.ingest_pipeline import read_ranges

    n, world, chunk, batch = 8_026_628, 64, 128, 256
    rng = np.random.default_rng(0)
    starts = np.arange(0, n, chunk)
    received = [starts[rank::world] for rank in range(world)]  # blocks go to the rank with the fewest rows
    states = []
    for rank in range(world):
        half = received[rank][:n // world // chunk // 2]
        stream = np.concatenate([np.arange(a, min(n, a + chunk)) for a in half])
        # trained: what it received, less two prefetched batches and the rows its shuffle buffer holds (4
        # batches, drawn from the recent rows)
        held = len(stream) - 2 * batch - 1 - rng.choice(16 * batch, 4 * batch, replace=False)
        trained = np.delete(stream[:-2 * batch], held)
        states.append(runs(rng.permutation(trained)))
    consumed = [interval for state in states for interval in state]  # what the checkpoint holds
    todo = subtract(0, n, merge(consumed))
    tasks = read_ranges(todo, chunk)

    times = np.zeros(n, np.int8)  # how often each position is trained, before and after the resume
    for lo, hi in consumed + [r for task in tasks for r in task]:
        times[lo:hi] += 1
    assert (times == 1).all()
    remaining = sum(hi - lo for lo, hi in todo)
    full, rest = divmod(remaining, chunk)
    assert [sum(hi - lo for lo, hi in t) for t in tasks] == [chunk] * full + ([rest] if rest else [])
    per_interval = sum(-(-(hi - lo) // chunk) for lo, hi in todo)
    assert per_interval > 2 * len(tasks)  # one task per interval: more than twice the tasks, most tiny
    assert read_ranges([[0, 5], [7, 8]], 3) == [[(0, 3)], [(3, 5), (7, 8)]] and read_ranges([], 3) == []


def spec(shards, mode="uniform", **kw):
    from pipelines.online.ingest_pipeline import IngestSpec
    from pipelines.online.transforms import TrainTransform

    return IngestSpec(shards=str(shards), mode=mode, seed=3, transform=TrainTransform(size=16), **kw)


def test_rows_are_a_function_of_epoch_and_position(tmp_path):
    from pipelines.online.catalog import Catalog
    from pipelines.online.class_offsets import ClassOffsets
    from pipelines.online.ingest_pipeline import decode_rows
    from pipelines.online.wm_sequence import WMSequence

    write_shards(tmp_path / "s", [9, 5, 3], shard_samples=4, size=24, attributes=2)
    uniform = spec(tmp_path / "s", attributes=2)
    every = decode_rows({"epoch": np.zeros(17, np.int64), "position": np.arange(17)}, uniform)
    assert every["ok"].all() and every["image"].shape == (17, 16, 16, 3) and every["label"].shape == (17, 3)
    assert Counter(every["label"][:, 0].tolist()) == {0: 9, 1: 5, 2: 3}  # an epoch: every sample once
    again = decode_rows({"epoch": np.zeros(3, np.int64), "position": np.array([11, 2, 5])}, uniform)
    assert np.array_equal(again["image"], every["image"][[11, 2, 5]])  # a retried task: the same rows
    other = decode_rows({"epoch": np.ones(17, np.int64), "position": np.arange(17)}, uniform)
    assert not np.array_equal(other["label"], every["label"])  # another epoch: another shuffle

    aware = decode_rows({"epoch": np.zeros(12, np.int64), "position": np.arange(12)}, spec(tmp_path / "s", "class-aware"))
    offsets = ClassOffsets(Catalog.load(str(tmp_path / "s")))
    assert aware["label"].tolist() == [WMSequence(offsets.counts, 3).draw(d)[0] for d in range(12)]

    (tmp_path / "s" / "c0000-00001.tar").write_bytes(b"damaged")
    damaged = decode_rows({"epoch": np.zeros(17, np.int64), "position": np.arange(17)}, spec(tmp_path / "s"))
    assert (~damaged["ok"]).sum() == 4 and not damaged["image"][~damaged["ok"]].any()  # kept, flagged, counted


def run_tool(cwd, *argv: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's
    done = subprocess.run([sys.executable, os.path.join(ROOT, "training", "run.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.mark.slow
def test_run_py_trains_from_ray_data_and_refuses_a_machine_without_room_for_it(tmp_path):
    write_shards(tmp_path / "train", [24, 16, 8], shard_samples=8, size=32)
    write_shards(tmp_path / "val", [4, 4, 4], shard_samples=4, size=32)
    common = [f"--set=data.train_shards={tmp_path}/train", f"--set=data.val_shards={tmp_path}/val",
              f"--set=run.storage_path={tmp_path}/runs", "--set=model.num_classes=3", "--set=model.num_attributes=0",
              "--set=data.size=32", "--set=data.eval_resize=36", "--set=data.batch_size=8", "--set=run.workers=2",
              "--set=data.loader_workers=0", "--set=run.epochs=2", "--set=data.ingest=ray_data",
              "--set=data.sampling=uniform"]
    code, lines = run_tool(tmp_path, *common, "--set=run.cpus_per_worker=1", "--set=run.name=refused")
    assert code == 2 and "config key 'data.ingest'" in lines[-1] and "run.cpus_per_worker" in lines[-1], lines
    assert not (tmp_path / "runs" / "refused").exists()
    code, lines = run_tool(tmp_path, *common, "--set=run.cpus_per_worker=0.5", "--set=run.name=ray-data")
    assert code == 0, "\n".join(lines[-40:])
    # Ray Data's INFO lines, its note that the bars are off, deprecations: in the logs only
    assert not [line for line in lines if any(noise in line for noise in ("Dataset", "Progress bars", "Deprecat"))]
    history = json.loads((tmp_path / "runs" / "ray-data" / "report.json").read_text())["history"]
    assert [(h["epoch"], h["trained_samples"], h["skipped_samples"]) for h in history] == [(0, 48, 0), (1, 48, 0)]


def audit_epochs(config):
    """A Train worker that takes `data.ingest: ray_data` batches and writes down each one's positions.
    With `interrupt_after`, epoch 0 is left after that many batches, every rank's state is gathered, and
    a fresh input restored from them trains the rest of the epoch (a mid-epoch resume)."""
    import ray.train
    import torch

    from training.config import from_dict
    from training.distributed import gather
    from training.train_input import build_train_loader

    cfg = from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    inp = build_train_loader(cfg, rank, world, torch.device("cpu"), config["ingest_plan"])
    for epoch in range(cfg.run.epochs):
        seen = []
        for i, (x, y) in enumerate(inp.epoch(epoch)):
            seen.append(inp.last_positions.tolist())
            assert len(x) == len(y) and x.dtype == torch.float32
            if epoch == 0 and i + 1 == config.get("interrupt_after"):
                break
        if epoch == 0 and config.get("interrupt_after"):
            states = gather(inp.state_dict(), world)
            inp = build_train_loader(cfg, rank, world, torch.device("cpu"), config["ingest_plan"])
            assert inp.restore(states) == "exact"
            seen += [None]  # (the resume)
            for x, y in inp.epoch(epoch):
                seen.append(inp.last_positions.tolist())
        with open(os.path.join(config["out"], f"{config['name']}-rank{rank}-epoch{epoch}.json"), "w") as f:
            json.dump(seen, f)


def audit(tmp_path, name: str, settings: list[str], extra_stage=None, interrupt_after: int = 0) -> dict:
    """{epoch: every position trained, over the ranks} of an `audit_epochs` run."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.online.ingest_pipeline import EpochPlan, EpochSplit, build_dataset
    from training.config import with_overrides, to_dict
    from training.preflight import worker_resources
    from training.train_input import ingest_spec

    cfg = with_overrides({}, [f"data.train_shards={tmp_path}/train", "data.size=16", "data.batch_size=8",
                              "data.ingest=ray_data", "data.ingest_chunk=8", "run.workers=2", "model.num_classes=3",
                              "run.worker_resource=gpu_node",
                              *settings])
    plan = EpochPlan.remote()
    d = cfg.data
    dataset = build_dataset(ingest_spec(cfg), plan, d.ingest_cpus,
                            {d.ingest_resource: d.ingest_cpus} if d.ingest_resource else None)
    if extra_stage is not None:
        dataset = dataset.map_batches(extra_stage, batch_size=None, batch_format="numpy",
                                      num_cpus=d.ingest_cpus, resources={d.ingest_resource: d.ingest_cpus})
    TorchTrainer(audit_epochs, train_loop_config={"train": to_dict(cfg), "ingest_plan": plan, "out": str(tmp_path),
                                                 "name": name, "interrupt_after": interrupt_after},
                 datasets={"train": dataset}, dataset_config=EpochSplit(equal=d.sampling == "class-aware"),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker=worker_resources(cfg)),
                 run_config=RunConfig(name=name, storage_path=str(tmp_path / "runs"))).fit()
    epochs = {}
    for e in range(cfg.run.epochs):
        batches = [json.loads((tmp_path / f"{name}-rank{r}-epoch{e}.json").read_text()) for r in range(2)]
        epochs[e] = [p for rank in batches for batch in rank if batch for p in batch]
    return epochs


def slow_down(batch):
    time.sleep(0.4)  # long enough for the test's watcher to find the task running
    return batch


def kill_a_running_data_task(killed: list) -> None:
    from ray.util.state import list_tasks

    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        for task in list_tasks(filters=[("state", "=", "RUNNING")], detail=True):
            if "slow_down" in task["name"] and task.get("worker_pid"):
                os.kill(task["worker_pid"], signal.SIGKILL)
                killed.append(task["worker_pid"])
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_ray_data_ingest_on_the_data_node_exact_per_epoch(tmp_path):
    import ray
    import ray.cloudpickle
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    from pipelines.online.catalog import Catalog
    from pipelines.online.class_offsets import ClassOffsets
    from pipelines.online.streams import ClassAwareStream
    from pipelines.online.wm_sequence import WMSequence

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    write_shards(tmp_path / "train", [40, 24, 16], shard_samples=8, size=32)
    offsets = ClassOffsets(Catalog.load(str(tmp_path / "train")))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):  # the training nodes: one CPU each, taken by its Train worker
            cluster.add_node(num_cpus=1, resources={"gpu_node": 1})
        data_node = cluster.add_node(num_cpus=2, resources={"data_node": 1, "ingest_cpu": 2})
        ray.init(address=cluster.address)
        aware = audit(tmp_path, "aware", ["data.sampling=class-aware", "data.ingest_resource=ingest_cpu",
                                          "run.epochs=2"])
        decoders = [t for t in list_tasks(detail=True, limit=10_000) if "decode_rows" in t["name"]]
        assert decoders and {t["node_id"] for t in decoders} == {data_node.node_id}

        # the loader's class-aware epochs (1 loader worker per rank: 5 batches of 8 each) drew the same samples
        catalog = Catalog.load(str(tmp_path / "train"))
        sequence = WMSequence(offsets.counts, 0)
        for epoch in (0, 1):
            loader = Counter()
            for rank in (0, 1):
                stream = iter(ClassAwareStream(catalog, 0, rank, 2, 0, 1, 8))
                draws = [next(stream) for _ in range((epoch + 1) * 5 * 8)][epoch * 5 * 8:]
                loader.update((d.url, d.offset) for d in draws)
            ours = Counter((r.url, r.offset) for r in (offsets.locate(*sequence.draw(p)) for p in aware[epoch]))
            assert ours == loader and sum(ours.values()) == 80

        # uniform, a data task killed mid-epoch (Ray retries it) and a mid-epoch resume: every sample once per epoch
        killed: list[int] = []
        watcher = threading.Thread(target=kill_a_running_data_task, args=(killed,), daemon=True)
        watcher.start()
        uniform = audit(tmp_path, "uniform", ["data.sampling=uniform", "data.ingest_resource=ingest_cpu",
                                              "run.epochs=2"], extra_stage=slow_down, interrupt_after=2)
        watcher.join(timeout=5)
        assert killed
        assert sorted(uniform[0]) == list(range(80)) and sorted(uniform[1]) == list(range(80))
    finally:
        ray.shutdown()
        cluster.shutdown()
