"""Search spaces as YAML: which training-config keys a Tune experiment samples, and how.

    description: what this space searches
    params:                                   # dotted training-config keys (as `--set` takes them)
      optim.lr: {loguniform: [0.001, 0.1]}
      optim.schedule: {choice: [plateau, multistep, cosine]}
      optim.milestones: {choice: [[10, 20], [15, 25]]}
      model.name: {choice: [vgg_a, vgg_b, vgg_c, vgg_d, vgg_e]}
    set:                                      # fixed overrides for every trial
      run.epochs: 30
    depth: model.name                         # the depth parameter, its choices listed shallow -> deep
    warm_start: true                          # start each trial from the best finished shallower one
    asha: {grace_period: 1, reduction_factor: 3}

Distributions: `loguniform: [lo, hi]`, `uniform: [lo, hi]`, `randint: [lo, hi]` (hi excluded),
`choice: [...]`.  Every sampled value reaches the trial as YAML text, exactly what `--set key=value`
takes, so choices may be lists or mappings (milestones, convolutions per stage) and searchers that
only handle scalars (Optuna) still work.  A schedule's parameters are sampled for every trial and
simply unused by the other schedules.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from common.settings_file import SettingsFileError, read_mapping
from training.config import ConfigError, load

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
SPACE_KEYS = {"description", "params", "set", "depth", "warm_start", "asha"}


@dataclass
class Space:
    path: str
    params: dict[str, tuple[str, list]]  # key -> (distribution, arguments; choice options as YAML text)
    fixed: dict[str, Any] = field(default_factory=dict)
    depth: str | None = None
    warm_start: bool = False
    grace_period: int = 1
    reduction_factor: int = 3
    description: str = ""

    @property
    def depth_order(self) -> list[str]:
        """The depth parameter's choices, shallow -> deep (YAML text, as trials receive them)."""
        return list(self.params[self.depth][1]) if self.depth else []

    def tune_space(self) -> dict:
        from ray import tune

        make = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
        return {key: tune.choice(args) if kind == "choice" else make[kind](*args)
                for key, (kind, args) in self.params.items()}

    def choices(self, key: str) -> list:
        """Every value trials may get for `key` when it is fixed or a `choice`, else []."""
        if key in self.fixed:
            return [self.fixed[key]]
        kind, args = self.params.get(key, ("", []))
        return [yaml.safe_load(a) if isinstance(a, str) else a for a in args] if kind == "choice" else []

    def overrides(self, sampled: dict) -> list[str]:
        """`--set` items: the fixed ones, then the trial's sampled ones."""
        return [f"{k}={as_yaml(v)}" for k, v in self.fixed.items()] + \
               [f"{k}={v if isinstance(v, str) else as_yaml(v)}" for k, v in sampled.items() if k in self.params]


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def load_space(path: str, base_config: str | None = None) -> Space:
    """Parse and check a space file; with `base_config`, also check every key against the training
    config (one trial's worth of overrides must load), so a typo fails before any trial starts."""
    try:
        raw = read_mapping(path, "a mapping (params, metric, ...)")
    except SettingsFileError as exc:
        raise ConfigError(str(exc)) from None
    name = os.path.basename(path)
    unknown = sorted(set(raw) - SPACE_KEYS)
    if unknown:
        raise ConfigError(f"{name}: unknown key '{unknown[0]}'; known: {', '.join(sorted(SPACE_KEYS))}")
    params = {}
    for key, spec in (raw.get("params") or {}).items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{name}: params.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(f"{name}: params.{key}.choice must be a non-empty list")
            args = [as_yaml(a) for a in args]
        elif not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)
                  and args[0] < args[1]):
            raise ConfigError(f"{name}: params.{key}.{kind} must be [low, high] with low < high, got {args!r}")
        elif kind == "loguniform" and args[0] <= 0:  # log(0): Tune fails inside the experiment
            raise ConfigError(f"{name}: params.{key}.loguniform needs low > 0, got {args!r}")
        params[key] = (kind, args)
    if not params:
        raise ConfigError(f"{name}: no params to search")
    space = Space(path=os.path.abspath(path), params=params, fixed=_section(raw, "set", name),
                  depth=raw.get("depth"), warm_start=_flag(raw.get("warm_start", False), name),
                  description=str(raw.get("description", "")), **_asha(_section(raw, "asha", name), name))
    if space.depth is not None and (space.depth not in params or params[space.depth][0] != "choice"):
        raise ConfigError(f"{name}: depth must name a `choice` parameter, got {space.depth!r}")
    if space.warm_start and space.depth is None:
        raise ConfigError(f"{name}: warm_start needs a depth parameter")
    if base_config is not None:  # every key, every choice and both ends of a range must load and be in range
        first = {k: args[0] for k, (kind, args) in params.items()}
        for key, (kind, args) in params.items():
            for option in args:
                load(base_config, space.overrides({**first, key: option}))
    return space


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _section(raw: dict, key: str, name: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: {key} must be a mapping of keys to values, got {value!r}")
    return dict(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):  # bool("false") is True
        raise ConfigError(f"{name}: warm_start must be true or false, got {value!r}")
    return value


def _asha(asha: dict, name: str) -> dict:
    """ASHA's settings: whole numbers, a grace period >= 1 and a reduction factor >= 2."""
    unknown = sorted(set(asha) - {"grace_period", "reduction_factor"})
    if unknown:
        raise ConfigError(f"{name}: unknown key 'asha.{unknown[0]}'; known: grace_period, reduction_factor")
    settings = {"grace_period": asha.get("grace_period", 1), "reduction_factor": asha.get("reduction_factor", 3)}
    for key, low in (("grace_period", 1), ("reduction_factor", 2)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}: asha.{key} must be a whole number >= {low}, got {value!r}")
    return settings


def space_to_dict(space: Space) -> dict:
    return dataclasses.asdict(space)


def space_from_dict(data: dict) -> Space:
    data = dict(data)
    data["params"] = {k: (v[0], list(v[1])) for k, v in data["params"].items()}
    return Space(**data)
