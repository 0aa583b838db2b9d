"""A Tune experiment over Train runs, as `tuning/search.py` runs it: each trial's driver (`train_driver`,
warm-started from the best shallower trial where the space has a depth), how many run at once
(`max_concurrent`), the Tuner (`make_tuner`), the experiment's setup and its sampled inputs checked."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from common import cluster_shape
from common.cluster_shape import ClusterShape
from common.console import report_failure, start_ray
from common.storage import Location
from training import stopped_run
from training.checkpoint.lookup import best_checkpoint
from training.config import ConfigError, TrainConfig, load, resolve_paths, run_folder, to_dict, to_yaml, with_overrides
from training.preflight import (PREFLIGHT_KEYS, check_cluster_fits, check_paths_reach_every_node, check_training_inputs,
                                worker_resources)
from training.trainer import make_trainer, storage
from tuning.experiment import FINISHED, METRIC, MODE, TRIAL_CONFIGS, trial_config
from tuning.space import Space, space_from_dict, space_to_dict


DRIVER_MEMORY = 256 * 2**20


TUNE_VERBOSE = {False: 0, True: 1}  # Tune's status tables: silent by default, its default with --verbose


def warm_start_checkpoint(setup: dict, depth: str) -> str | None:
    """The best finished trial among the deepest ones shallower than `depth`, if any."""
    order = space_from_dict(setup["space"]).depth_order
    folder = Location.parse(setup["experiment"]).child(FINISHED)
    done = [json.loads(folder.read_bytes(n)) for n, _ in folder.list_dir()] if folder.exists() else []
    shallower = [d for d in done if d["checkpoint"] and order.index(d["depth"]) < order.index(depth)]
    if not shallower:
        return None
    deepest = max(order.index(d["depth"]) for d in shallower)
    return min((d for d in shallower if order.index(d["depth"]) == deepest), key=lambda d: d[METRIC])["checkpoint"]


def train_driver(config: dict, setup: dict, verbose: bool = False) -> None:
    """One Tune trial: a Ray Train run named after the trial, so a restarted trial resumes it."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    space = space_from_dict(setup["space"])
    experiment = Location.parse(setup["experiment"])
    recorded = f"{TRIAL_CONFIGS}/{trial_id}.yaml"
    if experiment.exists(recorded):  # a restarted trial runs exactly what it started with
        cfg = with_overrides(yaml.safe_load(experiment.read_bytes(recorded)))
    else:
        cfg = trial_config(setup, config)
        cfg.run.storage_path, cfg.run.name = f"{setup['experiment']}/train", None
        if space.warm_start and not cfg.model.init_from:
            cfg.model.init_from = warm_start_checkpoint(setup, config[space.depth])
            if cfg.model.init_from:
                print(f"trial {trial_id}: warm start from {cfg.model.init_from}")
        experiment.make_dirs(TRIAL_CONFIGS)
        experiment.write_atomic(recorded, to_yaml(cfg).encode())
    result = make_trainer(cfg, f"trial-{trial_id}", callbacks=[TuneReportCallback()], replay_history=True,
                          verbose=verbose).fit()
    if result.error:
        raise result.error
    stop = stopped_run.reason(f"{cfg.run.storage_path}/trial-{trial_id}")
    if stop:  # the trial's error, as Tune reports it
        raise RuntimeError(f"trial {trial_id} stopped: {stop}")
    best = best_checkpoint(result, cfg.run.storage_path)
    marker = {"trial_id": trial_id, "depth": config.get(space.depth) if space.depth else None,
              METRIC: best[1][METRIC] if best else None, "checkpoint": best[0] if best else None}
    folder = experiment.child(FINISHED)
    folder.make_dirs()
    folder.write_atomic(f"{trial_id}.json", json.dumps(marker).encode())


def max_concurrent(cfg: TrainConfig, shape: ClusterShape) -> int:
    """How many trials the cluster can run at once at its largest (the autoscaler's node types at their
    max_workers, or the nodes there): a trial is `run.workers` Train workers, and on CPUs its decode
    tasks' `data.ingest_cpus`, spread over its workers.  A ConfigError where not even one trial fits."""
    check_cluster_fits(cfg, shape)
    r = cfg.run
    share = cfg.data.ingest_cpus / r.workers if cfg.data.ingest == "ray_data" and not r.gpu else 0
    per_worker = {**worker_resources(cfg), **({"GPU": 1} if r.gpu else {})}
    per_worker["CPU"] += share
    return max(1, shape.capacity(per_worker) // r.workers)


def trial_lines(epochs: int):
    """The Tune callback that prints our console lines, in the driver."""
    from ray import tune

    class TrialLines(tune.Callback):
        """One line per trial epoch, one when a trial ends (Tune's status tables only with --verbose)."""

        def __init__(self):
            self.best: dict[str, float] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            error = result[METRIC]
            self.best[trial.trial_id] = min(error, self.best.get(trial.trial_id, error))
            print(f"trial {trial.trial_id} epoch {result['training_iteration']}/{epochs}: top-1 error {error:.2%}",
                  flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            ran = (trial.last_result or {}).get("training_iteration", 0)
            early = "" if ran >= epochs else ", stopped early by the scheduler"
            best = f"best top-1 error {self.best[trial.trial_id]:.2%}, " if trial.trial_id in self.best else ""
            print(f"trial {trial.trial_id} done after {ran} epoch(s){early}: {best}"
                  + ", ".join(f"{k}={v}" for k, v in trial.config.items()), flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"trial {trial.trial_id} failed; its error is in {trial.local_path}", flush=True)

    return TrialLines()


def make_tuner(setup: dict, scheduler: str, search: str, samples: int, restore: bool, concurrent: int,
               verbose: bool = False):
    """The experiment's Tuner; `concurrent` trials at a time: Tune asks for their placement groups, and an
    autoscaling cluster adds the nodes they need."""
    from ray import tune

    base = trial_config(setup, {})
    space = space_from_dict(setup["space"])
    # The trial's driver only waits on its Train run: it reserves memory, not a CPU its workers need.
    trainable = tune.with_resources(tune.with_parameters(train_driver, setup=setup, verbose=verbose),
                                    {"cpu": 0, "memory": DRIVER_MEMORY})
    storage_path, filesystem = storage(setup["storage_path"])
    if restore:
        return tune.Tuner.restore(f"{storage_path}/{setup['name']}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=filesystem)
    if scheduler == "asha":
        sched = tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=base.run.epochs,
                                              grace_period=space.grace_period,
                                              reduction_factor=space.reduction_factor)
    else:
        sched = tune.schedulers.FIFOScheduler()
    if search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        searcher, limit = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=base.run.seed)), concurrent
    else:  # the random generator takes its own limit (Tune ignores max_concurrent_trials for it)
        searcher, limit = tune.search.BasicVariantGenerator(random_state=base.run.seed, max_concurrent=concurrent), None
    return tune.Tuner(
        trainable, param_space=space.tune_space(),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=samples, scheduler=sched,
                                    search_alg=searcher, max_concurrent_trials=limit),
        run_config=tune.RunConfig(name=setup["name"], storage_path=storage_path, storage_filesystem=filesystem,
                                  failure_config=tune.FailureConfig(max_failures=base.run.max_failures),
                                  callbacks=[trial_lines(base.run.epochs)], verbose=TUNE_VERBOSE[verbose]))


def new_setup(config_path: str, space: Space, name: str, overrides: list[str]) -> dict:
    cfg = resolve_paths(load(config_path, overrides))
    experiment = run_folder(cfg.run.storage_path, name)
    return {"name": name, "storage_path": cfg.run.storage_path, "experiment": experiment,
            "base_config": os.path.abspath(config_path), "base": to_dict(cfg), "space": space_to_dict(space)}


def check_sampled_inputs(setup: dict, space: Space) -> None:
    """Each value a trial may sample for a key that training's pre-flight reads (the model, its classes,
    the shards) passes that pre-flight too; `load_space` already range-checked every value.  A ConfigError
    naming the space's key and value otherwise, before any trial starts."""
    name = os.path.basename(space.path)
    for key, (kind, options) in space.params.items():
        if kind != "choice" or not key.startswith(PREFLIGHT_KEYS):
            continue
        for option in options:
            try:
                check_training_inputs(trial_config(setup, {key: option}))
            except ConfigError as exc:
                raise ConfigError(f"{name}: params.{key} = {option}: {exc}") from None


def search(setup: dict, a: argparse.Namespace) -> int:
    start_ray(a.verbose)
    base = trial_config(setup, {})
    shape = cluster_shape.of_cluster()
    try:
        concurrent = max_concurrent(base, shape)  # refuses a trial that can never fit
        concurrent = a.max_concurrent or concurrent
        if a.resume:
            check_paths_reach_every_node(base, shape)
    except ConfigError as exc:  # what only the cluster can tell: its shape, paths that do not reach every node
        print(f"search.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"search.py: {a.trials} trials, at most {concurrent} at a time ("
          + ("--max-concurrent" if a.max_concurrent else f"what {shape.where} can hold") +
          f", {base.run.workers} worker(s) per trial)", flush=True)
    results = make_tuner(setup, a.scheduler, a.search, a.trials, a.resume, concurrent, a.verbose).fit()
    errors = [r.error for r in results if r.error]
    if len(errors) < len(results):
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
        print(f"best trial: {METRIC} {best.metrics_dataframe[METRIC].min():.4f} with "
              + ", ".join(f"{k}={v}" for k, v in best.config.items()))
    print(f"experiment: {setup['experiment']}  (analyse: python tuning/analyze.py {setup['experiment']})")
    if errors:
        print(f"{len(errors)} of {len(results)} trial(s) failed; the first:", flush=True)
        return report_failure("search.py", errors[0], a.verbose)
    return 0
