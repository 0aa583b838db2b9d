"""What a Tune experiment of tuning/search.py holds, for search.py and tuning/analyze.py: its setup file
(the resolved base config and space), each trial's config as it ran, the finished trials' markers, and
the metric trials are ranked by."""

from __future__ import annotations

from training.config import TrainConfig, with_overrides
from tuning.space import space_from_dict

METRIC, MODE = "top1_error", "min"
SETUP_FILE = "search.json"
FINISHED = "finished"  # per-trial markers {depth, top1_error, checkpoint}: what warm starts pick from
TRIAL_CONFIGS = "trial_configs"  # each trial's whole training config, as it ran (warm start included)


def trial_config(setup: dict, sampled: dict) -> TrainConfig:
    """A trial's training config: the setup's base with the trial's sampled settings."""
    return with_overrides(setup["base"], space_from_dict(setup["space"]).overrides(sampled))
