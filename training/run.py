"""Train a scene-recognition CNN with Ray Train (DDP), class-aware sampling and relay BP.

    python training/run.py [--config configs/train/X.yaml] [--set key=value ...] [--resume RUN_NAME]
    places-train ...                      (the same, installed with the package)

With no arguments: the built-in demo (demo corpus and shards are created if absent, `simple_net`
with relay BP and class-aware sampling on a local Ray, CPU).  Ends by printing top-1/top-5 error
and where the report is.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from common.cluster_shape import joins_a_cluster, this_machine
from common.console import report_failure
from common.tool_settings import new_parser
from training.config import ConfigError, load, resolve_paths, to_yaml
from training.demo_data import prepare_data
from training.preflight import check_cluster_fits, check_training_inputs
from training.runs import DEMO_CONFIG, check_storage, resume_config, run_exists, train
from training.settings_help import epilog


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, settings=False)
    p.epilog = epilog()
    p.add_argument("--config", metavar="FILE", help="YAML recipe (configs/train/*.yaml); default: the demo, or with "
                                                    "--resume the run's own saved config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.lr=0.02 --set run.workers=4")
    p.add_argument("--resume", metavar="RUN_NAME", help="continue this run from its latest checkpoint, under the "
                                                        "config it saved (with --set overrides)")
    p.add_argument("--force-config", action="store_true",
                   help="with --resume: continue under --config even where it differs from the run's saved config")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cfg = resume_config(a) if a.resume else resolve_paths(load(a.config or DEMO_CONFIG, a.set))
        if a.print_config:
            print(to_yaml(cfg), end="")
            return 0
        name = a.resume or cfg.run.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not a.resume and cfg.run.name and run_exists(cfg.run.storage_path, cfg.run.name):
            # Ray Train would silently continue the old run under the new settings
            raise ConfigError(f"config key 'run.name': a run named {cfg.run.name!r} is already under "
                              f"{cfg.run.storage_path}: continue it with --resume {cfg.run.name}, or choose "
                              f"another name (--set run.name=...)")
        check_storage(cfg.run.storage_path)
        joining = joins_a_cluster()
        prepare_data(cfg, a.verbose)
        inputs = check_training_inputs(cfg)
        if inputs.pretrained:
            print(inputs.pretrained)
        if inputs.without_samples:
            print(inputs.without_samples, file=sys.stderr)
        if not joining:  # the local Ray it would start is this machine: checked before it starts
            check_cluster_fits(cfg, this_machine())
    except (ConfigError, OSError) as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # making the demo's shards failed
        return report_failure("run.py", exc, a.verbose)
    try:
        return train(cfg, name, a.resume is not None, a.verbose)
    except ConfigError as exc:  # what only the cluster can tell: its shape, paths that do not reach every node
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line on the console; the traceback in the log it names
        return report_failure("run.py", exc, a.verbose)


if __name__ == "__main__":
    sys.exit(main())
