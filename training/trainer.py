"""The run's Ray Train `TorchTrainer`, as training/run.py, tuning/search.py and the benchmarks build it:
its loop config, scaling, storage (local or s3://), failure and checkpoint policies, callbacks, and
where rank 0's TensorBoard files go."""

from __future__ import annotations

import os
import uuid

from common.console import train_log_level
from training import stopped_run
from training.config import TrainConfig, run_folder, to_dict
from training.preflight import worker_resources
from training.worker_failures import ReportFailedRanks

TRAIN_STATE_VARIABLE = "RAY_TRAIN_ENABLE_STATE_TRACKING"  # ray.train.constants


def storage(path: str):
    """(storage_path, storage_filesystem) for RunConfig.  Remote paths go through the same fsspec
    filesystem as the shards (s3fs, endpoint from AWS_ENDPOINT_URL), so MinIO-style servers work."""
    if "://" not in path:
        return path, None
    from common.storage import Location

    loc = Location.parse(path)
    return loc.root, loc.pyarrow_fs()


def tensorboard_dir(cfg: TrainConfig, name: str) -> str | None:
    """Rank 0's TensorBoard event files: in the run folder, when it is local."""
    return None if "://" in cfg.run.storage_path else os.path.join(cfg.run.storage_path, name, "tensorboard")


def make_trainer(cfg: TrainConfig, name: str, callbacks: list | None = None, replay_history: bool = False,
                 console=None, verbose: bool = False, shared_marker=None):
    """The run's TorchTrainer.  `callbacks` are Ray Train callbacks; tuning passes TuneReportCallback and
    `replay_history`, so that a restarted trial re-reports the epochs its checkpoint already holds.
    `console`: a ConsoleRelay queue for rank 0's lines; `verbose`: Ray Train's INFO lines on the console;
    `shared_marker`: a SharedMarker each worker must see (local paths on a shared filesystem)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # the run (its workers, attempts, status) on the dashboard's Train page: Ray Train records it only if asked,
    # in the process that calls fit()
    os.environ.setdefault(TRAIN_STATE_VARIABLE, "1")
    from training.normalization import with_mean_pixel
    from training.train_loop import train_fn_per_worker

    cfg = with_mean_pixel(cfg)  # in the loop config, so every checkpoint scores as it trained
    r = cfg.run
    workers = (r.min_workers, r.workers) if r.min_workers else r.workers
    storage_path, storage_filesystem = storage(r.storage_path)
    loop_config = {"train": to_dict(cfg), "run_name": name, "run_path": run_folder(r.storage_path, name),
                   "replay_history": replay_history,
                   "tensorboard_dir": tensorboard_dir(cfg, name), "console": console, "verbose": verbose,
                   "shared_marker": shared_marker,
                   "fit_id": uuid.uuid4().hex}  # in each checkpoint: a restore from one of this fit's is a retry
    stopped_run.clear(loop_config["run_path"])  # an earlier attempt's stop (a resumed run, a restored trial)
    data = {}
    if cfg.data.ingest == "ray_data":
        from pipelines.online.ingest_pipeline import EpochPlan, EpochSplit, build_dataset
        from training.models import clip_offsets_for
        from training.train_input import clip_transform, ingest_spec

        plan = EpochPlan.remote()  # the handle travels in the loop config: the actor lives as long as the run
        d = cfg.data
        dataset = build_dataset(ingest_spec(cfg, clip_transform(cfg, clip_offsets_for(cfg))), plan, d.ingest_cpus,
                                {d.ingest_resource: d.ingest_cpus} if d.ingest_resource else None, verbose)
        loop_config["ingest_plan"] = plan
        data = {"datasets": {"train": dataset}, "dataset_config": EpochSplit(equal=d.sampling == "class-aware")}
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        **data,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=r.gpu,
                                     resources_per_worker=worker_resources(cfg)),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             callbacks=[*(callbacks or []),  # the console's line naming failed ranks
                                        *([ReportFailedRanks(console)] if console is not None else [])],
                             logging_config=LoggingConfig(log_level=train_log_level(verbose)),
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep,
                                                                checkpoint_score_attribute="top1_error",
                                                                checkpoint_score_order="min")))
