"""Training with its run folder on s3:// (a real moto server) and an elastic worker range."""

from __future__ import annotations

import json
import os

import pytest

from conftest import write_shards

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster_with_s3(s3_server):
    """S3 first, so the Ray workers start with the endpoint in their environment too."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield s3_server
    ray.shutdown()


def test_elastic_run_checkpoints_to_s3_and_reports_there(cluster_with_s3, tmp_path):
    import boto3

    from common.storage import Location
    from training import run
    from training.checkpoint import contents

    boto3.client("s3", endpoint_url=cluster_with_s3).create_bucket(Bucket="runs")
    write_shards(tmp_path / "train", [48, 32, 16], shard_samples=16)
    write_shards(tmp_path / "val", [8, 8, 8], shard_samples=8)
    argv = ["--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
            "--set", "model.num_classes=3", "--set", "data.batch_size=8", "--set", "data.loader_workers=0",
            "--set", "run.epochs=2", "--set", "run.storage_path=s3://runs/experiments", "--set", "run.name=elastic",
            # 3 wanted, room for 2 on this 2-CPU cluster: the elastic range starts with what is there
            "--set", "run.workers=3", "--set", "run.min_workers=1", "--set", "run.cpus_per_worker=1",
            "--set", "model.num_attributes=0"]
    assert run.main(argv) == 0

    report = json.loads(Location.parse("s3://runs/experiments/elastic").read_bytes("report.json"))
    assert report["path"] == "s3://runs/experiments/elastic"
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["final"]["workers"] == 2 and report["final"]["val_images"] == 24
    assert report["best_checkpoint"].startswith("s3://runs/experiments/elastic/checkpoint_")
    state = contents.load(report["best_checkpoint"])  # straight from s3
    assert len(state["streams"]) == 2 and state["epoch"] in (0, 1)


def test_optuna_tune_experiment_on_s3_runs_resumes_and_analyzes(cluster_with_s3, tmp_path):
    import boto3
    import yaml

    from common.storage import Location
    from tuning import analyze, search

    boto3.client("s3", endpoint_url=cluster_with_s3).create_bucket(Bucket="tune")
    write_shards(tmp_path / "train", [16, 8], shard_samples=8)
    write_shards(tmp_path / "val", [4, 4], shard_samples=4)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"params": {"optim.lr": {"loguniform": [0.01, 0.1]}}}))
    argv = ["--config", "configs/train/demo.yaml", "--space", str(tmp_path / "space.yaml"), "--scheduler", "fifo",
            "--search", "optuna",  # the searcher's state is restored by --resume too
            "--trials", "2", "--name", "on-s3", "--storage-path", "s3://tune/experiments",
            "--set", f"data.train_shards={tmp_path}/train", "--set", f"data.val_shards={tmp_path}/val",
            "--set", "model.num_classes=2", "--set", "data.batch_size=8", "--set", "data.loader_workers=0",
            "--set", "data.size=32", "--set", "data.eval_resize=36", "--set", "run.epochs=2",
            "--set", "run.workers=1", "--set", "model.num_attributes=0"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert search.main(argv) == 0
        assert search.main(["--resume", "--name", "on-s3", "--storage-path", "s3://tune/experiments"]) == 0
    finally:
        os.chdir(cwd)
    experiment = Location.parse("s3://tune/experiments/on-s3")
    assert len(experiment.child("finished").list_dir()) == 2  # the resume of a finished experiment adds none
    assert analyze.main(["s3://tune/experiments/on-s3", "--out", str(tmp_path / "analysis")]) == 0
    assert (tmp_path / "analysis" / "best.yaml").exists() and (tmp_path / "analysis" / "curves.png").exists()
    assert len((tmp_path / "analysis" / "trials.csv").read_text().splitlines()) == 3
