"""A training run as `training/run.py` starts it: its storage checked, a resumed run's saved config
(`resume_config`), the fit under Ray Train with our console (`train`), and the run's report.json."""

from __future__ import annotations

import argparse
import json
import os
import sys

from common import cluster_shape
from common.console import ConsoleRelay, report_failure, start_ray
from training import stopped_run
from training.checkpoint import contents
from training.checkpoint.lookup import best_checkpoint
from training.config import (ConfigError, TrainConfig, differing_keys, load, resolve_paths, run_folder, save_run_config,
                             saved_run_config, to_dict, with_overrides)
from training.metrics_sink import scores_text
from training.preflight import check_cluster_fits, check_ingest_room, check_paths_reach_every_node
from training.trainer import make_trainer, tensorboard_dir
from training.worker_failures import RestartLines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "train", "demo.yaml")


def run_exists(storage_path: str, name: str) -> bool:
    from common.storage import Location

    return Location.parse(run_folder(storage_path, name)).is_dir()


def check_storage(storage_path: str) -> None:
    """Runs are written under run.storage_path: a file, /proc or a read-only folder fails now, not in an actor."""
    import shutil

    from common.storage import Location

    created = None  # the first folder the probe makes: removed again, a refusal later must leave nothing
    if "://" not in storage_path:
        created = os.path.abspath(storage_path)
        while not os.path.lexists(os.path.dirname(created)) and os.path.dirname(created) != created:
            created = os.path.dirname(created)
        created = None if os.path.lexists(created) else created
    try:
        Location.parse(storage_path).check_writable()
    except PermissionError as exc:
        raise ConfigError(f"config key 'run.storage_path': {exc}") from None
    finally:
        if created and os.path.isdir(created):
            shutil.rmtree(created, ignore_errors=True)


def resume_config(a: argparse.Namespace) -> TrainConfig:
    """The config run `a.resume` saved when it started, with `--set` overrides; a `--config` that differs
    from it is refused (naming the keys) unless `--force-config`."""
    storage_path = resolve_paths(load(a.config or DEMO_CONFIG, a.set)).run.storage_path
    run_path = run_folder(storage_path, a.resume)
    if not run_exists(storage_path, a.resume):
        raise ConfigError(f"--resume: no run named {a.resume!r} under {storage_path}")
    saved = saved_run_config(run_path)
    if saved is None:
        if a.config and a.force_config:
            return resolve_paths(load(a.config, a.set))
        raise ConfigError(f"--resume: {run_path} holds no saved config (config.yaml): pass the run's --config "
                          f"with --force-config")
    cfg = resolve_paths(with_overrides(saved, a.set))
    if a.config:
        given = resolve_paths(load(a.config, a.set))
        keys = [k for k in differing_keys(cfg, given) if k != "run.name"]
        if keys and not a.force_config:
            raise ConfigError(f"--resume {a.resume}: --config {a.config} differs from the run's saved config in "
                              f"{', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}: leave --config out to "
                              f"continue as the run started, or pass --force-config")
        if keys:
            print(f"resuming under --config {a.config} (--force-config): {', '.join(keys)} differ from the run's "
                  f"saved config", flush=True)
            cfg = given
    print(f"resuming with the config {a.resume} saved ({run_path}/config.yaml)"
          + (f", overridden by {' '.join(a.set)}" if a.set else ""), flush=True)
    return cfg


def train(cfg: TrainConfig, name: str, resuming: bool, verbose: bool) -> int:
    """Run the checked configuration as run `name`; print where its results are."""
    start_ray(verbose)
    shape = cluster_shape.of_cluster()
    check_cluster_fits(cfg, shape)
    check_paths_reach_every_node(cfg, shape)
    check_ingest_room(cfg)
    run_path = run_folder(cfg.run.storage_path, name)
    if not resuming:
        save_run_config(run_path, cfg)
    marker = shared_marker(cfg, shape)
    print(f"{'resuming' if resuming else 'training'} {cfg.model.name} as run {name} on {cfg.run.workers} "
          f"worker(s) ({'GPU' if cfg.run.gpu else 'CPU'}), {cfg.run.epochs} epochs; checkpoints in {run_path}",
          flush=True)
    result = None
    try:
        with ConsoleRelay(RestartLines()) as console:
            result = make_trainer(cfg, name, console=console, verbose=verbose, shared_marker=marker).fit()
    except (KeyboardInterrupt, SystemExit):  # Ray Train's own Ctrl-C handler aborts the run and exits
        pass
    finally:
        if marker:
            marker.remove()
    if result is not None and result.error:
        return report_failure("run.py", result.error, verbose)
    stop = stopped_run.reason(run_path)
    if stop:
        print(f"run.py: stopped: {stop}; the checkpoints before it are in {run_path}", file=sys.stderr)
        return 1
    if result is None or (result.metrics or {}).get("epoch", -1) + 1 < cfg.run.epochs:  # aborted (Ctrl-C)
        print(f"run.py: interrupted; its checkpoints are in {run_path}: continue with python training/run.py "
              f"--resume {name} --set run.storage_path={cfg.run.storage_path}", file=sys.stderr)
        return 130
    best = best_checkpoint(result, cfg.run.storage_path)
    metrics = result.metrics
    report = {"run": name, "path": run_path, "config": to_dict(cfg), "final": metrics,
              "best_checkpoint": best[0] if best else None, "history": contents.history(result.checkpoint)}
    from common.storage import Location

    report_path = Location.write_atomic_uri(f"{run_path}/report.json",
                                      (json.dumps(report, indent=1, default=str) + "\n").encode())
    print(f"{scores_text(metrics)} after {metrics['epoch'] + 1} epochs")
    print(f"report: {report_path}")
    if best:
        print(f"best checkpoint: {best[0]} (top-1 error {best[1]['top1_error']:.4f}, epoch {best[1]['epoch'] + 1})")
    events = tensorboard_dir(cfg, name)
    if events:
        print(f"TensorBoard: tensorboard --logdir {events}")
    return 0


def shared_marker(cfg: TrainConfig, shape):
    """On a cluster that can grow, local paths on a shared filesystem are checked again by each Train
    worker where it starts: nodes the autoscaler adds after the driver's check see this marker too."""
    from common.shared_paths import SharedMarker

    if not (cfg.run.shared_filesystem and shape.max_nodes > 1 and "://" not in cfg.run.storage_path):
        return None
    return SharedMarker.write(cfg.run.storage_path)
