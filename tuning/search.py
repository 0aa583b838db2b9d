"""Ray Tune over learning-rate and depth schedules: every trial is a whole Ray Train run.

    python tuning/search.py --config configs/train/BASE.yaml --space tuning/spaces/X.yaml
        [--scheduler asha|fifo] [--search random|optuna] [--trials N] [--name NAME] [--resume]
        [--max-concurrent N]
    places-search ...                     (the same, installed with the package)

Each trial runs `train_driver`, which builds the same `TorchTrainer` as training/run.py (with the
trial's sampled settings as `--set` overrides) and reports every epoch to Tune through
`TuneReportCallback`.  ASHA stops trials early on validation top-1 error.  Trials run
as many at a time as the cluster can hold at its largest (on an autoscaling cluster, its node types at
their max_workers: Tune asks, the autoscaler adds the nodes) or `--max-concurrent N`, so queued trials
never hold resources that running ones wait for.  The experiment lives in
`run.storage_path/NAME` (local or s3://): Tune's state, each trial's Train run (`train/`), and
`search.json` (the resolved base config and space, for `--resume` and tuning/analyze.py).
`--resume --name NAME` continues an interrupted experiment: finished trials stay finished,
interrupted ones resume from their last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import cluster_shape
from common.arguments import positive_int
from common.console import report_failure, start_ray
from common.storage import Location
from common.tool_settings import add_old_spelling, new_parser
from training.config import ConfigError, absolute, load, run_folder, to_yaml
from training.demo_data import prepare_data
from training.preflight import check_ingest_room, check_paths_reach_every_node, check_training_inputs
from training.settings_help import epilog
from tuning.experiment import SETUP_FILE, trial_config
from tuning.experiment_driver import check_sampled_inputs, max_concurrent, new_setup, search
from tuning.space import load_space


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, settings=False)
    p.epilog = epilog().replace("settings (", "base recipe settings (", 1)
    p.add_argument("--config", metavar="FILE", help="base training recipe (configs/train/*.yaml)")
    p.add_argument("--space", help="search space (tuning/spaces/*.yaml)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="asha: stop trials early on validation top-1 error; fifo: every trial runs to the end")
    p.add_argument("--search", choices=["random", "optuna"], default="random",
                   help="random sampling of the space, or Optuna's TPE")
    p.add_argument("--trials", type=positive_int, default=8, help="trials to run")
    p.add_argument("--name", help="experiment name (default: SPACE-TIMESTAMP); required with --resume")
    p.add_argument("--storage-path", help="where experiments live (default: the base config's run.storage_path)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the base recipe, e.g. --set run.epochs=4")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    p.add_argument("--max-concurrent", type=positive_int, metavar="N",
                   help="trials at a time (default: as many as the cluster can hold at its largest)")
    add_old_spelling(p, "--samples", "--trials")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.print_config:  # the base recipe every trial starts from, the space's values aside
            print(f"# search.py: space {a.space}, {a.trials} trials, {a.scheduler}, {a.search}")
            print(to_yaml(load(a.config, a.set)), end="")
            return 0
        cluster_shape.cluster_address()  # one that no longer runs: refused before any work
        if a.resume:
            if not a.name:
                raise ConfigError("--resume needs --name")
            root = absolute(a.storage_path or "runs")
            setup_file = Location.parse(run_folder(root, a.name)).child(SETUP_FILE)
            if not setup_file.exists():
                raise ConfigError(f"--resume: no experiment {a.name!r} under {root} (no {SETUP_FILE})")
            setup = json.loads(setup_file.read_bytes())
        else:
            if not (a.config and a.space):
                raise ConfigError("--config and --space are required (or --resume --name NAME)")
            space = load_space(a.space, a.config)
            name = a.name or f"{os.path.splitext(os.path.basename(a.space))[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
            overrides = [*a.set, *([f"run.storage_path={a.storage_path}"] if a.storage_path else [])]
            setup = new_setup(a.config, space, name, overrides)
            experiment = Location.parse(setup["experiment"])
            if experiment.exists(SETUP_FILE):
                raise ConfigError(f"experiment {name!r} exists: pass --resume to continue it, or another --name")
            base = trial_config(setup, {})
            if base.run.checkpoint_every_steps or base.run.checkpoint_every_s:
                # ASHA's rungs and the trial lines count reports: one per epoch
                raise ConfigError("run.checkpoint_every_steps / run.checkpoint_every_s: mid-epoch checkpoints are "
                                  "for training/run.py; a Tune trial checkpoints once per epoch")
            prepare_data(base, a.verbose)
            check_training_inputs(base)
            check_sampled_inputs(setup, space)
            start_ray(a.verbose)
            shape = cluster_shape.of_cluster()  # before the experiment exists: a refused one leaves nothing
            max_concurrent(base, shape)
            check_paths_reach_every_node(base, shape)
            check_ingest_room(base)
            experiment.make_dirs()
            experiment.write_atomic(SETUP_FILE, (json.dumps(setup, indent=1) + "\n").encode())
    except (ConfigError, OSError, ValueError) as exc:
        print(f"search.py: error: {exc}", file=sys.stderr)
        return 2

    try:
        return search(setup, a)
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("search.py", exc, a.verbose)


if __name__ == "__main__":
    sys.exit(main())
